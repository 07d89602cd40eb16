"""`releaser monitor`: scheduled health checks of the live release, auto-revert, metrics.

One APScheduler job runs a check every [monitor] interval_s (first one at start),
timed by the monotonic clock (schedule.py): a wall-clock step neither stalls nor
bunches checks. A check re-resolves live_path and is O(1) in the file size
except every hash_every-th check (full sha256) and every integrity_every-th
(quick_check); a check whose full pass failed repeats that pass until it passes,
so a fault only the hash can see keeps counting as a failure.

Every check belongs to the release live when it started (read first: a
readlink); a check that cannot run for a reason about the release or its files
(a SQLite error, an I/O error, a time limit, an identity mismatch) is a failed
check of that release, recorded like any other. Any other exception is a monitor
fault (a bug): logged CRITICAL, counted in releaser_monitor_faults_total, never
charged to a release nor reverted, and the watchdog pings stop for good, so
systemd restarts the monitor. After failures_before_revert failed checks in a
row of the same live release, or a failed analysis, autorevert.py decides
whether to revert and does it (its docstring states the rules: once per bad
release, retried with backoff when the revert itself fails).

systemd: READY=1 after the first check, STATUS= with the live release,
STOPPING=1 on SIGTERM; WATCHDOG=1 only while checks are completing
(check_watchdog.py states when).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor

from . import (
    access,
    analysis_watch,
    autorevert,
    check_watchdog,
    health,
    notify,
    sdnotify,
    session,
    signals,
    statefile,
    views,
)
from .config import Config
from .db import QueryTimeout
from .errors import ReleaserError
from .metrics import CheckStats, Metrics, MetricsServer
from .schedule import MonotonicInterval, SteadyScheduler
from .store import Store

log = logging.getLogger("releaser.monitor")

ACTOR = "monitor"
# exceptions that say something about the live release or its files: a failed check
ABOUT_THE_RELEASE = (sqlite3.Error, OSError, QueryTimeout, ReleaserError)
# on SIGTERM, wait this long for an in-flight read-only check before leaving it;
# an auto-revert in progress is always waited for (it is O(1))
STOP_GRACE_S = 5.0


def _iso_to_unix(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class Monitor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.mcfg = config.monitor
        self.stats = CheckStats()
        self.metrics = Metrics(config, self.stats)
        self.server: MetricsServer | None = None
        self.scheduler: SteadyScheduler | None = None
        self._n = 0  # checks started: drives the hash/integrity cadence
        self._force_hash = False
        self._force_integrity = False
        self._stop = threading.Event()
        self._idle = threading.Event()  # set while no check is running
        self._idle.set()
        # WATCHDOG=1 only while checks complete (check_watchdog.py)
        self.watchdog = check_watchdog.CheckWatchdog(config)
        # the auto-revert decision; a revert re-arms the watchdog for the target's check
        self.reverts = autorevert.AutoReverter(config, self.stats, actor=ACTOR, before_revert=(
            lambda: self.watchdog.arm(self.watchdog.budget_s(full_hash=True, integrity=False))))
        # [analysis]: the app's metrics for watch_s after each publish (a second job)
        self.analysis = analysis_watch.AnalysisWatch(config, on_measure=self._count_analysis)

    # -- one check ---------------------------------------------------------

    def check_once(self, *, allow_revert: bool = True) -> health.HealthReport:
        """Run one check, record it, maybe auto-revert. Never raises."""
        self._idle.clear()
        try:
            report = self._check()
            self._record(report)
            if allow_revert and not self._stop.is_set():
                reverted = self.reverts.after(report)
                if reverted:
                    # show the reverted-to release's health now, not one interval later
                    report = self._check()
                    self._record(report)
                    self.reverts.after(report)
            # the next check starts within one interval (an interval trigger, coalesced)
            self.watchdog.arm(self.mcfg.interval_s + self.mcfg.misfire_grace_s)
            self.watchdog.notify_after_check(self._status_line(report))
            return report
        except Exception as exc:  # noqa: BLE001 - a monitor bug must not stop the schedule
            self._fault(exc)
            raise
        finally:
            self._idle.set()

    def _fault(self, exc: Exception) -> None:
        """A bug in the monitor, not a fault of the release: never charged, never reverted."""
        with self.stats.lock:
            self.stats.monitor_faults += 1
        self.watchdog.fault()  # no more WATCHDOG=1: systemd restarts a faulty monitor
        log.critical("monitor fault (a bug, not the live release): %s: %s; not counted "
                     "against any release; watchdog pings stopped", type(exc).__name__, exc,
                     exc_info=log.isEnabledFor(logging.DEBUG))

    def _check(self) -> health.HealthReport:
        n = self._n
        self._n += 1
        full_hash = n % self.mcfg.hash_every == 0 or self._force_hash
        integrity = n % self.mcfg.integrity_every == 0 or self._force_integrity
        self.watchdog.arm(self.watchdog.budget_s(full_hash=full_hash, integrity=integrity))
        log.debug("check %d started (hash=%s, integrity=%s)", n + 1, full_hash, integrity)
        # the release this check is about, known even when the check cannot run
        live_id = Store(self.config.root, self.config.live_path).live_release_id()
        t0 = time.perf_counter()
        report: health.HealthReport | None = None
        try:
            # state.db unusable: check against the journal and the manifests (statefile.py)
            with session.open_store(self.config, degraded_ok=True) as ctx:
                try:
                    report = health.check_live(self.config, ctx.store, ctx.state,
                                               full_hash=full_hash, integrity=integrity)
                except sqlite3.DatabaseError as exc:
                    if not statefile.is_damage(exc):
                        raise
                    # state.db, not the release, is damaged: never charge the release
                    report = self._check_degraded(exc, full_hash=full_hash,
                                                  integrity=integrity)
                except ABOUT_THE_RELEASE as exc:  # a check that cannot run is a failure
                    report = _could_not_run(live_id, exc, t0)
                # at most 1 s on a busy state.db; never recorded degraded (a warning)
                views.record_health_check(ctx, report, actor=ACTOR)
        except ABOUT_THE_RELEASE as exc:  # no state.db to check against: a failure
            if report is None:
                report = _could_not_run(live_id, exc, t0)
        # a fault only a full pass sees must keep failing until that pass is clean
        self._force_hash = report.hashed and not report.ok
        self._force_integrity = report.integrity_checked and not report.ok
        return report

    def _check_degraded(self, exc: sqlite3.DatabaseError, *, full_hash: bool,
                        integrity: bool) -> health.HealthReport:
        why = statefile.StateUnusable(self.config.root / "state.db", "damaged",
                                      f"state.db is damaged ({exc})")
        with session.open_store(self.config, degraded=why) as ctx:
            return health.check_live(self.config, ctx.store, ctx.state,
                                     full_hash=full_hash, integrity=integrity)

    def _record(self, report: health.HealthReport) -> None:
        for r in report.results:
            if r.kind == "probe":
                self.metrics.observe_probe(r.name, r.duration_ms / 1000.0)
        with self.stats.lock:
            s = self.stats
            if report.release_id != s.last_release_id:
                # a different live release starts its own failure count
                s.consecutive_failures = 0
                s.critical = False
            s.checks_total += 1
            s.last_ok = report.ok
            s.last_release_id = report.release_id
            s.last_reasons = list(report.reasons)
            s.last_duration_s = report.duration_ms / 1000.0
            if report.ok:
                s.consecutive_failures = 0
                s.critical = False
                s.last_success_ts = time.time()
            else:
                s.consecutive_failures += 1
        if report.ok:
            log.info("check: release %s healthy (%.1f ms)", report.release_id,
                     report.duration_ms)
        else:
            log.warning("check: release %s UNHEALTHY (%d/%d): %s", report.release_id,
                        self.stats.consecutive_failures, self.mcfg.failures_before_revert,
                        "; ".join(report.reasons))

    # -- analysis ----------------------------------------------------------

    def analysis_once(self) -> bool:
        """One analysis tick; True when it reverted the live release. Never raises."""
        self._idle.clear()
        try:
            # a tick may hold the single worker for every query's deadline
            self.watchdog.extend(self.analysis.budget_s() + self.mcfg.misfire_grace_s)
            failed = self.analysis.tick()
            if failed is None or self._stop.is_set():
                return False
            report = health.HealthReport(ok=False, release_id=failed.release_id, path=None,
                                         reasons=failed.verdict.reasons)
            return self.reverts.after(report, failed_analysis=failed.verdict)
        except Exception:  # noqa: BLE001 - a monitor bug must not stop the schedule
            log.exception("monitor: analysis crashed")
            return False
        finally:
            self._idle.set()

    def _count_analysis(self, m: Any) -> None:
        self.metrics.observe_analysis(m.name, m.value)
        try:
            with session.open_store(self.config) as ctx:
                ctx.state.count_analysis(m.name, m.outcome)
        except Exception as exc:  # noqa: BLE001 - counting is best effort
            log.warning("cannot count the analysis in state.db: %s", exc)

    # -- systemd -----------------------------------------------------------

    def _status_line(self, report: health.HealthReport) -> str:
        word = "healthy" if report.ok else ("CRITICAL" if self.stats.critical else "unhealthy")
        rid = report.release_id if report.release_id is not None else "none"
        return f"live release {rid} {word} (check {self.stats.checks_total})"

    # -- run ---------------------------------------------------------------

    def _job(self) -> None:
        try:
            self.check_once()
        except Exception:  # noqa: BLE001 - logged in check_once
            pass

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop.is_set():
            return
        log.info("received %s: stopping", signal.Signals(signum).name)
        sdnotify.notify("STOPPING=1", "STATUS=stopping")
        self._stop.set()
        # shutdown from a thread: the signal may interrupt the scheduler holding its locks
        threading.Thread(target=self._shutdown_scheduler, daemon=True).start()

    def _shutdown_scheduler(self) -> None:
        # the signal may come just before start(): wait for it to be running
        deadline = time.monotonic() + 10.0
        while self.scheduler is None or not self.scheduler.running:
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        self.scheduler.shutdown(wait=False)

    def run(self, *, listen: str | None = None, announce: Any = None) -> int:
        """Serve metrics, run the schedule until SIGTERM/SIGINT; returns the exit code."""
        # the unit grants CAP_SYS_PTRACE (to see the app's /proc/PID/fd): keep it for this
        # process only, before any thread or hook starts
        if access.drop_inheritable_capabilities():
            log.debug("dropped inheritable and ambient capabilities")
        # fail fast (exit 2) when there is no store, instead of checking nothing forever
        with session.open_store(self.config, degraded_ok=True) as ctx:
            self.stats.last_success_ts = _iso_to_unix(
                ctx.state.last_successful_health_check_at())
        listen = listen or self.mcfg.metrics_listen
        try:
            self.server = MetricsServer(listen, self.config, self.stats, self.metrics)
        except OSError as exc:
            raise ReleaserError(f"{self.config.source or 'config'}: [monitor] metrics_listen "
                                f"{listen}: cannot listen: {exc.strerror or exc}") from None
        self.server.start()
        if announce is not None:
            announce(f"releaser monitor: metrics on {self.server.url}/metrics "
                     f"(every {self.mcfg.interval_s:g} s)")
        log.info("monitoring %s every %g s; metrics on %s", self.config.live_path,
                 self.mcfg.interval_s, self.server.url)

        # APScheduler's own warnings (missed runs...) go where ours go, <N> prefixes included
        ours = logging.getLogger("releaser")
        aps = logging.getLogger("apscheduler")
        aps.handlers[:] = ours.handlers
        aps.setLevel(max(ours.level, logging.WARNING))
        aps.propagate = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signals.first_only(self._on_signal))
        wd = sdnotify.watchdog_interval_s()
        if wd is not None:
            threading.Thread(target=self.watchdog.loop, args=(wd, self._stop),
                             name="releaser-watchdog", daemon=True).start()

        self.scheduler = SteadyScheduler(
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={
                "coalesce": True,  # after a stall, one check, not a burst of catch-ups
                "max_instances": 1,  # never two checks (or reverts) at once
                "misfire_grace_time": int(max(1, self.mcfg.misfire_grace_s)),
            },
            timezone=UTC,
        )
        self.scheduler.add_job(self._job, MonotonicInterval(self.mcfg.interval_s),
                               id="health-check")
        if self.config.analysis.prometheus:
            self.scheduler.add_job(self.analysis_once, MonotonicInterval(
                self.analysis.tick_s()), id="analysis")
        if not self._stop.is_set():
            self.scheduler.start()  # blocks until _on_signal shuts it down
        return self._finish()

    def _finish(self) -> int:
        # a revert holds the lock and swaps: always let it finish; a read-only check
        # can be abandoned after a grace period (SQLite needs no cleanup for readers)
        while self.reverts.reverting.is_set():
            time.sleep(0.05)
        clean = self._idle.wait(STOP_GRACE_S)
        if self.server is not None:
            self.server.stop()
        if not clean:
            log.warning("left a check running after %g s to stop in time", STOP_GRACE_S)
            notify.flush_at_exit()  # os._exit skips atexit: webhooks in flight go out first
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            # the executor's worker thread would be joined at exit: leave now
            os._exit(0)
        log.info("stopped")
        return 0


def _could_not_run(live_id: int | None, exc: Exception, t0: float) -> health.HealthReport:
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    return health.HealthReport(ok=False, release_id=live_id, path=None,
                               reasons=[f"check could not run: {message}"],
                               duration_ms=round((time.perf_counter() - t0) * 1000, 3))


def run_monitor(config: Config, *, listen: str | None = None, announce: Any = None) -> int:
    return Monitor(config).run(listen=listen, announce=announce)
