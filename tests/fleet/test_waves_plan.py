"""The wave plan as pure functions: assignment from a spec and judging acks."""

from __future__ import annotations

import pytest

from releaser.analysis_record import iso
from releaser.fleet import waves
from releaser.fleet.errors import UsageError
from releaser.fleet.waves import ABORTED, Judgement, Plan, assign

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


NOW = 1_800_000_000.0


def _ack(host: str, state: str, seq: int = 5, applied: str | None = REL,
         reasons: list[str] | None = None, since: float = NOW - 100,
         analysis: str | None = None) -> dict:
    return {"host_id": host, "state": state, "seq": seq, "target_sha256": REL,
            "applied_sha256": applied, "reasons": reasons or [],
            "healthy_since": iso(since) if state == "applied" else None,
            "analysis": None if analysis is None else {
                "outcome": analysis, "reasons": [f"{analysis} why"]}}


def judge(plan: Plan, release: str, acks: list[dict], now: float = NOW) -> Judgement:
    return waves.judge(plan, release, acks, now)


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


def test_the_bake_runs_from_the_last_healthy_since_of_the_earlier_waves() -> None:
    plan = Plan(start_seq=5, waves=[["a"], ["b", "c"], ["*"]], bake_s=10, max_failures=1)
    j = judge(plan, REL, [_ack("a", "applied", since=NOW - 4)])
    assert (j.open_waves, j.bake_until) == (1, NOW + 6)  # the rest of the bake, not all
    assert judge(plan, REL, [_ack("a", "applied", since=NOW - 10)]).open_waves == 2
    acks = [_ack("a", "applied", since=NOW - 50), _ack("b", "applied", since=NOW - 30),
            _ack("c", "applied", since=NOW - 3)]
    j = judge(plan, REL, acks)
    assert (j.open_waves, j.bake_until) == (2, NOW + 7)  # c, the last one healthy
    # a clock ahead of ours counts from now; an old agent's ack (no healthy_since) too
    ahead = judge(plan, REL, [_ack("a", "applied", since=NOW + 60)])
    assert ahead.bake_until == NOW + 10
    no_since = _ack("a", "applied") | {"healthy_since": None}
    assert judge(plan, REL, [no_since]).bake_until == NOW + 10
    # promote-wave opens a wave without its bake
    promoted = Plan(5, plan.waves, 10, 1, promoted=1)
    assert judge(promoted, REL, [_ack("a", "applied", since=NOW - 1)]).open_waves == 2


def test_analysis_holds_waves_failure_aborts_inconclusive_pauses_until_accepted() -> None:
    plan = Plan(start_seq=5, waves=[["a"], ["b"], ["*"]], bake_s=10, max_failures=1)
    j = judge(plan, REL, [_ack("a", "applied", analysis="running")])
    assert (j.state, j.open_waves, j.analysing) == ("in-progress", 1, ["a"])
    assert judge(plan, REL, [_ack("a", "applied", analysis="pass")]).open_waves == 2
    # a failed analysis is the host's own revert: a failure toward max_failures
    failed = _ack("a", "reverted", applied="old", reasons=["analysis error_rate failed"],
                  analysis="fail")
    j = judge(plan, REL, [failed])
    assert j.state == "aborted" and j.failed == ["a"]
    # inconclusive: paused (never aborted), naming the host and why
    unsure = _ack("a", "applied", analysis="inconclusive")
    j = judge(plan, REL, [unsure, _ack("b", "waiting")])
    assert (j.state, j.open_waves, j.inconclusive) == ("paused", 0, ["a"])
    assert j.reasons == ["a: analysis inconclusive: inconclusive why"] and j.failed == []
    # fleet resume accepts it (plan.accepted): the waves go on
    accepted = Plan(5, plan.waves, 10, 1, accepted=["a"])
    assert judge(accepted, REL, [unsure]).open_waves == 2
    assert judge(accepted, REL, [unsure]).state == "in-progress"
    # complete only once every analysis is over
    everyone = [_ack("a", "applied", analysis="pass"), _ack("b", "applied"),
                _ack("z", "applied", analysis="running")]
    assert judge(plan, REL, everyone).state == "in-progress"
    everyone[2] = _ack("z", "applied", analysis="pass")
    assert judge(plan, REL, everyone).state == "complete"
