"""The monitor's analysis watch: `[[analysis.prometheus]]` for `[analysis] watch_s`
after a publish made a release live.

Invariants:
- Only a release made live by `publish` (outcome published or recovered) is
  watched, from that event's time (recorded once its verify window passed) for
  watch_s. A release made live by a rollback or an auto-revert is not: that was
  on-call's or the monitor's own decision, and reverts must not cascade down
  the history on the app's metrics alone.
- Each watched release gets its own run (failure and inconclusive counts); a
  monitor restarted inside the window starts a new run for the rest of it. The
  window's start comes from the publish event's wall-clock time when the release
  is first seen, its end from the monotonic clock after that.
- tick() never raises for Prometheus trouble and never reverts: it returns the
  failing verdict, and the monitor reverts as for failed health checks.
  Inconclusive runs are logged once per run and counted, nothing more.
- Each tick that evaluated something (and the end of the window) is recorded in
  ROOT/analysis/monitor.json (analysis_record.py) for `releaser status`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from . import analysis, analysis_record
from .config import Config
from .session import open_store

log = logging.getLogger("releaser.analysis")

# events after which the live release is the publish's own
WATCHED_OUTCOMES = ("published", "recovered")


@dataclass
class Failed:
    """A watched release failed its analysis: revert it (expect_live=release_id)."""

    release_id: int
    verdict: analysis.Verdict


class AnalysisWatch:
    def __init__(self, config: Config, *,
                 on_measure: Callable[[analysis.Measurement], None] | None = None) -> None:
        self.config = config
        self.cfg = config.analysis
        self.on_measure = on_measure
        self._key: tuple[int, str] | None = None  # (release id, publish event time)
        self._run: analysis.AnalysisRun | None = None
        self._reported_inconclusive = False
        self._since = 0.0  # the watched publish's wall-clock time
        self._recorded: str | None = None  # the outcome last recorded

    def _record(self, rid: int, verdict: analysis.Verdict, *, done: bool,
                measured: bool) -> None:
        assert self._run is not None
        record = analysis_record.summarize(
            self._run, verdict, who="monitor", release_id=rid, since=self._since,
            until=self._since + self.cfg.watch_s, done=done)
        if measured or record["outcome"] != self._recorded:
            analysis_record.save(self.config.root, record)
            self._recorded = record["outcome"]

    def tick_s(self) -> float:
        """How often the monitor should call tick(): the shortest interval_s."""
        return min((q.interval_s for q in self.cfg.prometheus), default=60.0)

    def budget_s(self) -> float:
        """The longest one tick can take (every query to its deadline)."""
        return sum(q.timeout_s for q in self.cfg.prometheus)

    def watched(self) -> tuple[int, str, float] | None:
        """(release id, publish time, seconds since) of the live release if it is one a
        publish made live; None otherwise. The age is by the wall clock: tick() uses it
        only when it first sees the release, then the monotonic clock."""
        with open_store(self.config) as ctx:
            live_id = ctx.store.live_release_id()
            if live_id is None:
                return None
            last = ctx.state.live_transitions(limit=1)
        if not last or last[0].release_id != live_id or last[0].action != "publish" or \
                last[0].outcome not in WATCHED_OUTCOMES:
            return None
        try:
            since = datetime.fromisoformat(last[0].at).timestamp()
        except ValueError:
            return None
        return live_id, last[0].at, max(0.0, time.time() - since)

    def tick(self) -> Failed | None:
        """Evaluate the due queries for the watched live release; Failed when it failed."""
        if not analysis.enabled(self.cfg):
            return None
        found = self.watched()
        if found is None:
            self._key = self._run = None
            return None
        rid, at, age = found
        if self._key != (rid, at) or self._run is None:
            if age > self.cfg.watch_s:
                return None  # published before this monitor started, window over
            self._key = (rid, at)
            self._reported_inconclusive = False
            self._since, self._recorded = time.time() - age, None
            self._run = analysis.AnalysisRun(
                self.cfg, analysis.context(self.config, rid),
                start=time.monotonic() - age, on_measure=self.on_measure)
            log.info("analysis: watching release %s for %g s after its publish", rid,
                     self.cfg.watch_s)
        elif time.monotonic() - self._run.start > self.cfg.watch_s:
            # watched long enough (monotonic: a wall-clock step changes nothing); a
            # failure inside the window whose revert was postponed still counts
            verdict = self._run.verdict()
            self._record(rid, verdict, done=True, measured=False)
            return Failed(rid, verdict) if verdict.outcome == analysis.FAIL else None
        measured = self._run.step()
        verdict = self._run.verdict()
        self._record(rid, verdict, done=False, measured=bool(measured))
        if verdict.outcome == analysis.FAIL:
            # stays failed: a revert postponed (lock busy) is tried again next tick
            return Failed(rid, verdict)
        if verdict.outcome == analysis.INCONCLUSIVE and not self._reported_inconclusive:
            self._reported_inconclusive = True
            log.warning("analysis of release %s is inconclusive (not reverting): %s", rid,
                        "; ".join(verdict.reasons))
        return None
