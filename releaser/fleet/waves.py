"""Wave plans: which hosts take a release when, carried in the signed pointer (`plan`).

A plan is made by `fleet push --waves 1,25%,100%` from the hosts the channel knows
(their acks under status/CHANNEL/) at push time:
  - explicit canary hosts (--canary) form wave 0;
  - the others are ordered by sha256(host_id) (stable across pushes, spread across
    names) and cut at the cumulative sizes of the spec: N = N hosts so far,
    P% = ceil(P % of the known hosts) so far;
  - the last wave is always "*": every host not named earlier, including hosts that
    joined after the push.

Payload (inside the signed pointer, so agents trust it like the release itself):
  {"start_seq": seq of the push, "waves": [[host, ...], ..., ["*"]], "bake_s": 300,
   "max_failures": 1, "manual": false, "promoted": 0, "paused": false,
   "aborted": null | "reason", "previous": {"sha256", "manifest"} | null}

Judging a rollout from the acks (judge()) is a pure function: agents and `fleet
status` run the same code. A host counts as a failure of the rollout when its ack is
rejected or reverted for the rollout's release at a seq >= start_seq; as healthy when
it is applied on that release at such a seq. Wave k may start when: the rollout is not
paused or aborted and either wave k <= promoted (promote-wave) or, with automatic
gates, every host of waves < k is healthy (the agent then waits bake_s of continuously
seeing that before it applies).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import Refused, UsageError

EVERYONE = "*"
# the first reason of the ack of a host sent back by an abort: not a failure of its own
ABORTED = "rollout aborted"
FAILED_STATES = ("rejected", "reverted")


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """'1,25%,100%' -> [('n', 1), ('pct', 25), ('pct', 100)]."""
    out: list[tuple[str, float]] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        try:
            if part.endswith("%"):
                value = float(part[:-1])
                if not 0 < value <= 100:
                    raise ValueError
                out.append(("pct", value))
            else:
                value = int(part)
                if value < 1:
                    raise ValueError
                out.append(("n", value))
        except ValueError:
            raise UsageError(f"--waves {spec!r}: {part!r} is neither a host count (>= 1) "
                             "nor a percentage (0-100%); e.g. --waves 1,25%,100%") from None
    return out


def order_key(host_id: str) -> str:
    return hashlib.sha256(host_id.encode()).hexdigest()


def assign(spec: str, known_hosts: list[str], canary: list[str]) -> list[list[str]]:
    """The waves' host lists; the last is always ['*']."""
    steps = parse_spec(spec)
    waves: list[list[str]] = []
    if canary:
        waves.append(sorted(set(canary)))
    rest = sorted((h for h in set(known_hosts) if h not in set(canary)), key=order_key)
    total = len(rest)
    taken = 0
    for kind, value in steps:
        upto = int(value) if kind == "n" else math.ceil(total * value / 100)
        upto = min(max(upto, taken), total)
        if upto >= total:
            break  # this step reaches everyone: it is the final "*" wave
        if upto > taken:
            waves.append(rest[taken:upto])
            taken = upto
    waves.append([EVERYONE])
    return waves


@dataclass(frozen=True)
class Plan:
    start_seq: int
    waves: list[list[str]]
    bake_s: float
    max_failures: int
    manual: bool = False
    promoted: int = 0
    paused: bool = False
    aborted: str | None = None
    previous: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return data

    @classmethod
    def parse(cls, data: Any, what: str = "plan") -> Plan:
        if not isinstance(data, dict):
            raise Refused(f"{what}: plan is not an object")
        try:
            plan = cls(**{k: data[k] for k in cls.__dataclass_fields__
                          if k in data and k != "extra"})
        except TypeError as exc:
            raise Refused(f"{what}: plan fields missing ({exc})") from None
        ok = (isinstance(plan.waves, list) and plan.waves
              and all(isinstance(w, list) and all(isinstance(h, str) for h in w)
                      for w in plan.waves)
              and isinstance(plan.start_seq, int) and isinstance(plan.max_failures, int)
              and isinstance(plan.bake_s, int | float) and isinstance(plan.promoted, int))
        if not ok:
            raise Refused(f"{what}: plan fields of the wrong type")
        return plan

    def wave_of(self, host_id: str) -> int:
        for index, hosts in enumerate(self.waves):
            if host_id in hosts:
                return index
        return len(self.waves) - 1  # the "*" wave

    def hosts_before(self, wave: int) -> list[str]:
        return [h for w in self.waves[:wave] for h in w if h != EVERYONE]


@dataclass
class Judgement:
    state: str  # in-progress | paused | aborted | complete
    healthy: list[str]
    failed: list[str]
    reasons: list[str]
    open_waves: int  # waves whose hosts may apply now (gates and bake aside)


def judge(plan: Plan, release: str, acks: list[dict[str, Any]]) -> Judgement:
    """The rollout's state from the hosts' acks (unsigned reports: they can only stop
    or hold a rollout, never make a host take anything the pointer does not name)."""
    healthy, failed, reasons = [], [], []
    for ack in acks:
        seq = ack.get("seq")
        if (ack.get("target_sha256") != release or not isinstance(seq, int)
                or seq < plan.start_seq):
            continue
        host = str(ack.get("host_id"))
        first = (ack.get("reasons") or [""])[0]
        if isinstance(first, str) and first.startswith(ABORTED):
            continue
        if ack.get("state") in FAILED_STATES:
            failed.append(host)
            why = "; ".join(ack.get("reasons") or []) or ack.get("state")
            reasons.append(f"{host}: {ack.get('state')}: {why}")
        elif ack.get("state") == "applied" and ack.get("applied_sha256") == release:
            healthy.append(host)
    if plan.aborted:
        return Judgement("aborted", healthy, failed, [plan.aborted, *reasons], 0)
    if len(failed) >= plan.max_failures:
        return Judgement("aborted", healthy, failed,
                         [f"{len(failed)} failure(s) reached max_failures "
                          f"{plan.max_failures}", *reasons], 0)
    if plan.paused:
        return Judgement("paused", healthy, failed, ["paused"], 0)
    good = set(healthy)
    open_waves = 1
    for index in range(1, len(plan.waves)):
        earlier_done = all(h in good for h in plan.hosts_before(index))
        if index <= plan.promoted or (earlier_done and not plan.manual):
            open_waves = index + 1
        else:
            break
    named = plan.hosts_before(len(plan.waves))
    all_acked = {str(a.get("host_id")) for a in acks}
    complete = all(h in good for h in named) and all(h in good for h in all_acked)
    return Judgement("complete" if complete else "in-progress", healthy, failed, [],
                     open_waves)


def view(plan: Plan, release: str, acks: list[dict[str, Any]]) -> dict[str, Any]:
    """What `fleet status` shows for a rollout."""
    j = judge(plan, release, acks)
    return {"state": j.state, "reasons": j.reasons, "waves": plan.waves,
            "open_waves": j.open_waves, "bake_s": plan.bake_s,
            "max_failures": plan.max_failures, "failed": j.failed,
            "healthy": len(j.healthy), "manual": plan.manual, "promoted": plan.promoted,
            "paused": plan.paused, "start_seq": plan.start_seq}
