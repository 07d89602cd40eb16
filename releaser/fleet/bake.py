"""A host's analysis during its bake in a wave rollout: the promotion condition.

When the host's own config has `[[analysis.prometheus]]` entries and the channel's
pointer carries a wave plan, the agent evaluates them once this host is live on the
rollout's release, templated with {release_id} (the local release id), {host} (host_id)
and {channel}, for the window [healthy_since, healthy_since + max(bake_s, the longest
interval_s)] (so each query is evaluated at least once, one interval after the release
went live). The record (analysis_record.py) goes into every ack as `analysis`:
  running      the host is healthy but not ready: the next wave waits for it
  pass         ready (the bake's clock in judge() runs from healthy_since)
  fail         an entry reached failure_limit: the host goes back at once through the
               local auto-revert (release marked bad, an `auto-revert` event naming the
               query, the value and the threshold); its ack is `reverted`, a failure
               toward max_failures (judge() then aborts the rollout as for a rejection)
  inconclusive an entry reached inconclusive_limit (no data, Prometheus unreachable):
               the host stays on the release; judge() derives `paused` for the rollout
               until `fleet resume` accepts the result (a signed plan change)

Why the agents and no controller: the same reasons as the waves (rollout.py): no key
online, nothing extra to keep alive; and the host is where the queries' {host} and
{release_id} mean something. The pause is derived from the signed plan plus the acks by
judge(), which agents and `fleet status` share, so no one has to write it.

Invariants:
- Evaluations never raise (analysis.py); a failure reverts only the release it was
  measured on (expect_live), and a busy store is retried next poll.
- A finished window's verdict is kept (ROOT/analysis/agent.json) and never re-run; a
  restarted agent continues a running window from healthy_since with its counts.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .. import analysis, analysis_record
from ..analysis_record import RUNNING

if TYPE_CHECKING:
    from .agent import Agent
    from .waves import Plan

log = logging.getLogger("releaser.agent")


class Bake:
    """The analysis of one release of one rollout on this host."""

    def __init__(self, agent: Agent, plan: Plan, target: str, release_id: int,
                 since: float) -> None:
        cfg = agent.config.analysis
        self.key = (plan.start_seq, target)
        self.release_id = release_id
        self.since = since
        window = max([plan.bake_s, *(q.interval_s for q in cfg.prometheus)])
        self.until = since + window
        age = max(0.0, time.time() - since)
        self.run = analysis.AnalysisRun(
            cfg, analysis.context(agent.config, release_id, host=agent.host_id,
                                  channel=agent.channel),
            start=time.monotonic() - age, on_measure=agent.metrics.count_analysis)
        self.record: dict[str, Any] | None = None
        old = analysis_record.load(agent.config.root, "agent")
        if old is not None and _same(old, plan.start_seq, target, release_id):
            if old.get("outcome") != RUNNING:
                self.record = old  # decided before a restart: kept, never re-run
            else:
                analysis_record.restore(self.run, old)

    @property
    def done(self) -> bool:
        return self.record is not None and self.record.get("outcome") != RUNNING

    def next_due_in(self) -> float:
        if self.done:
            return float("inf")
        return max(0.0, min(self.run.next_due() - time.monotonic(),
                            self.until - time.time()))

    def tick(self, root: Any) -> dict[str, Any]:
        """Evaluate what is due; the record (saved when it changed)."""
        if self.done:
            assert self.record is not None
            return self.record
        measured = self.run.step()
        over = time.time() >= self.until
        verdict = self.run.verdict()
        if over and verdict.ok:
            measured += self.run.finish()
            verdict = self.run.verdict()
        record = analysis_record.summarize(self.run, verdict, who="agent",
                                           release_id=self.release_id, since=self.since,
                                           until=self.until, done=over)
        record["start_seq"], record["sha256"] = self.key
        if measured or record != self.record:
            analysis_record.save(root, record)
            if record["outcome"] != RUNNING and (self.record or {}).get("outcome") == RUNNING:
                log.info("bake analysis of release %s: %s", self.release_id,
                         analysis_record.describe(record))
        self.record = record
        return record


def _same(record: dict[str, Any], start_seq: int, target: str, release_id: int) -> bool:
    return (record.get("start_seq"), record.get("sha256"), record.get("release_id")) == (
        start_seq, target, release_id)


def bake_for(agent: Agent, plan: Plan, target: str) -> Bake | None:
    """This host's bake analysis for the rollout's release, live here (None: no analysis
    configured)."""
    if not analysis.enabled(agent.config.analysis):
        return None
    from . import local

    bake: Bake | None = getattr(agent, "bake", None)
    if bake is not None and bake.key == (plan.start_seq, target):
        return bake
    rid = local.live_release_id(agent.config)
    if rid is None:
        return None
    bake = Bake(agent, plan, target, rid, agent.healthy_at(target))
    agent.bake = bake
    return bake


def record_for(agent: Agent, target: str | None, *, live: bool = False
               ) -> dict[str, Any] | None:
    """The analysis record to put in an ack about `target` (None: none runs for it).

    live: target is live here. Under a wave plan, a host that will analyse its bake says
    so from its very first `applied` ack (outcome running, no evaluation yet): without
    it, judge() would count the host ready, and agents that then saw the rollout
    complete would stop reading acks before this analysis could fail."""
    bake: Bake | None = getattr(agent, "bake", None)
    if target is None or not analysis.enabled(agent.config.analysis):
        return None
    if bake is not None and bake.key[1] == target and bake.record is not None:
        return bake.record
    old = analysis_record.load(agent.config.root, "agent")  # after a restart
    if old is not None and old.get("sha256") == target:
        return old
    current = agent.current
    if (live and current is not None and current.plan is not None
            and current.release_sha256 == target):
        return {"who": "agent", "release_id": None, "outcome": RUNNING, "since": None,
                "until": None, "inconclusive_limit": agent.config.analysis.inconclusive_limit,
                "reasons": [], "entries": []}
    return None
