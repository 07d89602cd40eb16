"""The agent's side of a wave rollout: gate itself on the acks of earlier waves.

Design choice: self-gating agents, no controller. The plan (waves, bake, max_failures,
pause, manual promotions) is in the signed pointer; the only thing agents read besides
it is the other hosts' acks, and acks can only hold a host back or send it back to the
previous release the signed plan names, never make it take anything unsigned. So there
is no extra always-on process to run, secure and keep alive (a controller would need
the signing key online or a second trust path), a dead build host cannot stall or
break a rollout, and `fleet pause/resume/promote-wave/rollback` are just new signed
pointers. The cost: each host in a rollout lists the channel's acks every poll until the
rollout is complete for it, and GETs only the acks whose ETag changed (ackcache.py):
one LIST per 1,000 hosts plus the few acks that moved, not one GET per host.

step() runs each poll while the channel's pointer carries a plan:
  aborted (max_failures reached, or aborted in the plan): a host live on the rollout's
      release goes back to plan.previous (local O(1) path if held, else download);
      others stay where they are; a webhook event fleet-rollout-aborted is sent once.
  live on the release: its bake analysis (bake.py) evaluates what is due; a failure
      sends this host back (local auto-revert, ack `reverted`).
  paused (by `fleet pause`, or derived: a host's analysis was inconclusive): nothing
      new is applied; the derived pause sends a fleet-rollout-paused webhook once.
  this host's wave not open yet: its earlier waves are not all ready, or the last of
      them became healthy less than bake_s ago by their acks' healthy_since (judge()),
      so an agent restarted mid-bake waits only for the rest of it: ack `waiting`
      with why (and until when it bakes).
  otherwise: Agent.apply() (the same path as without waves).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from ..analysis_record import iso
from ..errors import LockBusy
from . import bake as bakes
from . import local
from .ack import Ack
from .ackcache import AckCache
from .bake import bake_for
from .errors import BucketError, ReleaserError
from .waves import ABORTED, Judgement, Plan, judge

if TYPE_CHECKING:
    from .agent import Agent
    from .pointer import Pointer

log = logging.getLogger("releaser.agent")


class Gate:
    """Per-agent memory across polls (nothing a restart must keep: the bake's start is
    in the acks, an abort is re-derived from them)."""

    def __init__(self) -> None:
        self.notified: set[int] = set()
        self.aborted: dict[int, list[str]] = {}  # start_seq -> reasons
        self.complete: set[int] = set()
        self.paused: set[int] = set()  # paused by an inconclusive analysis: notified
        self.acks = AckCache()  # GETs only the acks whose ETag changed since last poll


def step(agent: Agent, pointer: Pointer, digest: str) -> Ack | None:
    plan = Plan.parse(pointer.plan, f"channel {agent.channel} seq {pointer.seq}")
    gate: Gate = getattr(agent, "_gate", None) or Gate()
    agent._gate = gate  # type: ignore[attr-defined]
    target = pointer.release_sha256
    live = local.live_sha256(agent.config)
    last = agent.state.last
    if agent.bake is not None and (agent.bake.key != (plan.start_seq, target)
                                   or live != target):
        agent.bake = None  # over here (its record stays on disk for the acks)
    if (last.get("state") == "applied" and last.get("target_sha256") == target
            and live != target):
        held = local.held(agent.config, target)
        if held is not None and held.auto_reverted and last.get("seq") is not None:
            return agent._ack("reverted", pointer,
                              [f"the monitor auto-reverted release {held.release_id}"],
                              target=target, digest=digest)
    if plan.start_seq in gate.complete and live == target:
        return agent._report_idle([])  # done here: stop reading every host's ack
    try:
        acks = gate.acks.read(agent.bucket, agent.channel)
    except BucketError as exc:
        log.warning("rollout: cannot read acks: %s; holding", exc.message)
        return None
    j = judge(plan, target, acks)
    if j.state == "aborted":
        gate.aborted.setdefault(plan.start_seq, j.reasons)
    if plan.start_seq in gate.aborted:  # sticky: acks may change, an abort does not
        return _aborted(agent, pointer, digest, plan, live,
                        gate.aborted[plan.start_seq], gate)
    if live == target:
        bake = bake_for(agent, plan, target)
        if bake is not None:
            record = bake.tick(agent.config.root)
            if record["outcome"] == "fail":
                return _analysis_failed(agent, pointer, digest, record)
        if j.state == "complete" and (bake is None or bake.done):
            gate.complete.add(plan.start_seq)  # (j saw this host's ack before the tick)
        return _quiet(agent, "applied", pointer, digest, [])
    if last.get("target_sha256") == target and last.get("state") in ("rejected", "reverted"):
        return agent._report_idle([])  # refused here once: not retried every poll
    if j.state == "paused":
        if j.inconclusive and plan.start_seq not in gate.paused:
            gate.paused.add(plan.start_seq)  # once per rollout (per agent that waits)
            _notify(agent, target, j.reasons, action="fleet-rollout-paused",
                    outcome="paused")
        return _quiet(agent, "waiting", pointer, digest,
                      ["rollout paused" + (f": {'; '.join(j.reasons)}"
                                           if j.inconclusive else "")])
    wave = plan.wave_of(agent.host_id)
    if wave >= j.open_waves:
        return _quiet(agent, "waiting", pointer, digest, [_why_waiting(plan, j, wave)])
    return agent.apply(pointer, digest)


def _why_waiting(plan: Plan, j: Judgement, wave: int) -> str:
    """Stable across polls (the ack is rewritten only when it changes)."""
    where = f"wave {wave + 1} of {len(plan.waves)}"
    if wave == j.open_waves and j.bake_until is not None:
        return f"{where}: earlier waves healthy, baking until {iso(j.bake_until)}"
    analysing = [h for h in j.analysing if h in plan.hosts_before(wave)]
    if analysing and not plan.manual:
        return f"{where}: waiting for the analysis on {', '.join(analysing)}"
    return f"{where}: waiting for earlier waves" + (" and promote-wave" if plan.manual
                                                   else "")


def _analysis_failed(agent: Agent, pointer: Pointer, digest: str,
                     record: dict[str, Any]) -> Ack | None:
    """This host's bake analysis failed: go back as the monitor would (auto-revert)."""
    target = pointer.release_sha256
    reasons = list(record.get("reasons") or ["analysis failed"])
    try:
        result = local.auto_revert(agent.config, record["release_id"], actor=agent.actor,
                                   reasons=reasons, detail={"analysis": record})
    except LockBusy as exc:
        log.warning("bake analysis failed; the revert waits for the store: %s", exc.message)
        return None  # the record stays failed: tried again next poll
    except ReleaserError as exc:  # LiveChanged: someone else moved live meanwhile
        log.warning("bake analysis failed; not reverting: %s", exc.message)
        return agent._ack("reverted", pointer, [*reasons, exc.message], target=target,
                          digest=digest)
    if result is None:
        log.error("bake analysis of %s failed and no earlier good release passes its "
                  "check: kept live", target[:12])
        return agent._ack("reverted", pointer,
                          [*reasons, "kept live: no earlier good release passes its check"],
                          target=target, digest=digest)
    log.warning("bake analysis failed: release %s -> %s (%s)", result.get("from_release_id"),
                result.get("release_id"), "; ".join(reasons))
    return agent._ack("reverted", pointer, reasons, target=target, digest=digest)


def _quiet(agent: Agent, state: str, pointer: Pointer, digest: str,
           reasons: list[str]) -> Ack | None:
    """Write the ack only when it says something new (or as the heartbeat)."""
    last = agent.state.last
    if (last.get("state") == state and last.get("reasons") == reasons
            and last.get("pointer") == digest
            and last.get("analysis") == bakes.record_for(
                agent, pointer.release_sha256,
                live=local.live_sha256(agent.config) == pointer.release_sha256)):
        return agent._report_idle([])
    return agent._ack(state, pointer, reasons, target=pointer.release_sha256,
                      digest=digest)


def _aborted(agent: Agent, pointer: Pointer, digest: str, plan: Plan, live: str | None,
             reasons: list[str], gate: Gate) -> Ack | None:
    target = pointer.release_sha256
    why = f"{ABORTED} (release {target[:12]}): {'; '.join(reasons)}"
    if plan.start_seq not in gate.notified:
        gate.notified.add(plan.start_seq)
        _notify(agent, target, reasons)
    if live != target or plan.previous is None:
        last = agent.state.last
        own_failure = (last.get("target_sha256") == target
                       and last.get("state") in ("rejected", "reverted"))
        if own_failure or (last.get("pointer") == digest
                           and last.get("reasons", [""])[:1] == [why]):
            return agent._report_idle([])  # keep the ack that says what happened here
        return agent._ack("waiting", pointer, [why], target=target, digest=digest)
    back = dataclasses.replace(
        pointer, release_sha256=plan.previous["sha256"], manifest=plan.previous["manifest"],
        action="abort", note=why, plan=None)
    log.warning("%s: going back to %s", why, back.release_sha256[:12])
    try:
        state, more, downloaded = agent._apply_release(back, digest)
    except ReleaserError as exc:
        log.error("%s: could not go back: %s", why, exc.message)
        return agent._ack("applied", pointer, [why, f"going back failed: {exc.message}"],
                          target=target, digest=digest)
    outcome = "reverted" if state == "applied" else state
    return agent._ack(outcome, pointer, [why, *more], target=target, digest=digest,
                      downloaded=downloaded)


def _notify(agent: Agent, target: str, reasons: list[str], *,
            action: str = "fleet-rollout-aborted", outcome: str = "aborted") -> None:
    try:
        from .. import notify

        cfg = getattr(agent.config, "notify", None)
        if cfg is not None:
            notify.send(cfg, notify.payload(
                action, outcome,
                release={"sha256": target, "channel": agent.channel,
                         "host_id": agent.host_id}, reasons=reasons,
                live_path=str(agent.config.live_path)))
    except Exception as exc:  # noqa: BLE001 - a notification never changes an outcome
        log.warning("rollout %s notification failed: %s", outcome, exc)


__all__: list[Any] = ["step"]
