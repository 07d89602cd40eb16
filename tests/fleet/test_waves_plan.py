"""The wave plan as pure functions: assignment from a spec and judging acks."""

from __future__ import annotations

import pytest

from releaser.fleet.errors import UsageError
from releaser.fleet.waves import ABORTED, Plan, assign, judge

REL = "a" * 64


def test_assign_is_stable_cumulative_and_ends_with_everyone() -> None:
    hosts = [f"h{i}" for i in range(20)]
    waves = assign("1,25%,100%", hosts, [])
    assert [len(w) for w in waves] == [1, 4, 1] and waves[-1] == ["*"]
    assert waves == assign("1,25%,100%", list(reversed(hosts)), [])  # order-free
    assert assign("1,25%,100%", hosts, ["h7"])[0] == ["h7"]
    assert "h7" not in sum(assign("1,25%,100%", hosts, ["h7"])[1:], [])
    assert assign("100%", hosts, []) == [["*"]]
    assert assign("1,100%", [], []) == [["*"]]  # no host known yet: everyone at once
    for bad in ("0", "x", "150%", "-1"):
        with pytest.raises(UsageError):
            assign(bad, hosts, [])


def _ack(host: str, state: str, seq: int = 5, applied: str | None = REL,
         reasons: list[str] | None = None) -> dict:
    return {"host_id": host, "state": state, "seq": seq, "target_sha256": REL,
            "applied_sha256": applied, "reasons": reasons or []}


def test_judge_opens_waves_in_order_and_aborts_on_failures() -> None:
    plan = Plan(start_seq=5, waves=[["a"], ["b", "c"], ["*"]], bake_s=10, max_failures=1)
    assert judge(plan, REL, []).open_waves == 1
    assert judge(plan, REL, [_ack("a", "applied")]).open_waves == 2
    assert judge(plan, REL, [_ack("a", "applied"), _ack("b", "applied")]).open_waves == 2
    j = judge(plan, REL, [_ack(h, "applied") for h in "abc"])
    assert j.open_waves == 3 and j.state == "complete"
    # an ack of an earlier rollout (lower seq) counts for nothing
    assert judge(plan, REL, [_ack("a", "applied", seq=4)]).open_waves == 1
    j = judge(plan, REL, [_ack("a", "applied"), _ack("b", "rejected", applied="old",
                                                      reasons=["gate x"])])
    assert j.state == "aborted" and j.failed == ["b"] and "b: rejected: gate x" in j.reasons
    # hosts sent back by the abort are not failures of their own
    sent_back = _ack("a", "reverted", applied="old", reasons=[f"{ABORTED}: ..."])
    assert judge(plan, REL, [sent_back]).failed == []
    loose = Plan(start_seq=5, waves=plan.waves, bake_s=0, max_failures=2)
    assert judge(loose, REL, [_ack("b", "rejected", applied="old")]).state == "in-progress"
    assert judge(Plan(5, plan.waves, 0, 1, paused=True), REL, []).state == "paused"
    manual = Plan(5, plan.waves, 0, 1, manual=True)
    assert judge(manual, REL, [_ack("a", "applied")]).open_waves == 1
    assert judge(Plan(5, plan.waves, 0, 1, manual=True, promoted=1), REL,
                 [_ack("a", "applied")]).open_waves == 2
