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
   "aborted": null | "reason", "previous": {"sha256", "manifest"} | null,
   "accepted": [host, ...] (hosts whose inconclusive analysis `fleet resume` accepted)}

Judging a rollout from the acks (judge()) is a pure function of the signed plan, the
acks and the time: agents and `fleet status` run the same code, so a pause or an abort
is a state everyone derives, not a decision a controller writes. A host counts as a
failure of the rollout when its ack is rejected or reverted for the rollout's release at
a seq >= start_seq (a failed analysis is a revert: the host went back by itself); as
healthy when it is applied on that release at such a seq, since its ack's
`healthy_since`; as ready when healthy and its analysis (the ack's `analysis`, if the
host runs one during its bake) has passed. An analysis that came out inconclusive
pauses the rollout (never a revert) until `fleet resume` accepts that host's result
(plan.accepted). Wave k may start when: the rollout is not paused or aborted and either
wave k <= promoted (promote-wave), or, with automatic gates, every host of waves < k is
ready and the last of them became healthy at least bake_s ago. The bake is measured
from the healthy_since times in the acks (the hosts' own UTC clocks, so keep them in
NTP sync), so an agent restarted mid-bake continues it rather than starting it again.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..analysis_record import iso, parse_iso
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
    accepted: list[str] = field(default_factory=list)
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
              and isinstance(plan.bake_s, int | float) and isinstance(plan.promoted, int)
              and isinstance(plan.accepted, list)
              and all(isinstance(h, str) for h in plan.accepted))
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
    open_waves: int  # waves whose hosts may apply now
    analysing: list[str] = field(default_factory=list)  # healthy, analysis running
    inconclusive: list[str] = field(default_factory=list)  # not accepted: they pause it
    bake_until: float | None = None  # when the next wave opens (its earlier waves ready)


def analysis_of(ack: dict[str, Any]) -> str | None:
    """The outcome of the host's bake analysis in its ack (None: the host runs none)."""
    analysis = ack.get("analysis")
    if not isinstance(analysis, dict):
        return None
    outcome = analysis.get("outcome")
    return outcome if isinstance(outcome, str) else "running"


def _since(ack: dict[str, Any], now: float) -> float:
    """When the host became healthy on the release (its own clock; never in our future,
    and an ack from an agent that does not say counts from now)."""
    since = parse_iso(ack.get("healthy_since"))
    return now if since is None else min(since, now)


def judge(plan: Plan, release: str, acks: list[dict[str, Any]],
          now: float | None = None) -> Judgement:
    """The rollout's state from the hosts' acks at wall-clock time `now` (unsigned
    reports: they can only stop or hold a rollout, or end a bake, never make a host take
    anything the pointer does not name)."""
    now = time.time() if now is None else now
    healthy, failed, reasons, analysing, unsure, unsure_why = [], [], [], [], [], []
    since: dict[str, float] = {}
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
            since[host] = _since(ack, now)
            outcome = analysis_of(ack)
            if outcome == "running":
                analysing.append(host)
            elif outcome == "inconclusive" and host not in plan.accepted:
                unsure.append(host)
                why = "; ".join(ack["analysis"].get("reasons") or []) or "inconclusive"
                unsure_why.append(f"{host}: analysis inconclusive: {why}")
    if plan.aborted:
        return Judgement("aborted", healthy, failed, [plan.aborted, *reasons], 0)
    if len(failed) >= plan.max_failures:
        return Judgement("aborted", healthy, failed,
                         [f"{len(failed)} failure(s) reached max_failures "
                          f"{plan.max_failures}", *reasons], 0)
    if plan.paused or unsure:
        why = (["paused"] if plan.paused else []) + unsure_why
        return Judgement("paused", healthy, failed, why, 0, analysing, unsure)
    ready = {h for h in healthy if h not in analysing}
    open_waves, bake_until = 1, None
    for index in range(1, len(plan.waves)):
        before = plan.hosts_before(index)
        if index <= plan.promoted:
            open_waves = index + 1
            continue
        if plan.manual or not all(h in ready for h in before):
            break
        opens = max((since[h] for h in before), default=now - plan.bake_s) + plan.bake_s
        if opens > now:
            bake_until = opens
            break
        open_waves = index + 1
    named = plan.hosts_before(len(plan.waves))
    all_acked = {str(a.get("host_id")) for a in acks}
    complete = all(h in ready for h in named) and all(h in ready for h in all_acked)
    return Judgement("complete" if complete else "in-progress", healthy, failed, [],
                     open_waves, analysing, unsure, bake_until)


def view(plan: Plan, release: str, acks: list[dict[str, Any]],
         now: float | None = None) -> dict[str, Any]:
    """What `fleet status` shows for a rollout."""
    j = judge(plan, release, acks, now)
    return {"state": j.state, "reasons": j.reasons, "waves": plan.waves,
            "open_waves": j.open_waves, "bake_s": plan.bake_s,
            "bake_until": None if j.bake_until is None else iso(j.bake_until),
            "max_failures": plan.max_failures, "failed": j.failed,
            "healthy": len(j.healthy), "analysing": j.analysing,
            "inconclusive": j.inconclusive, "accepted": plan.accepted,
            "manual": plan.manual, "promoted": plan.promoted,
            "paused": plan.paused, "start_seq": plan.start_seq}
