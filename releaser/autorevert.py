"""The monitor's auto-revert: when a failing live release is swapped back, and how often.

After failures_before_revert failed checks in a row of the same live release
(or at once when its analysis failed: failure_limit already counted),
rollback.revert_live(expect_live=that release) marks it bad and swaps to the
previous good release; if a publish or rollback replaced it meanwhile, nothing
is reverted. It is tried at most once per bad release (remembered here and read
back from the event log after a restart): no flapping. When nothing is live, or
there is nothing good to go back to, the live release stays, the monitor
reports critical and keeps checking. A revert that fails (an I/O or permission
error: nothing was swapped) is not a settled attempt: it is recorded
(`auto-revert`/`failed` with the reason, counted by
releaser_auto_revert_failures_total), logged at error, and tried again on a
later check of the same release, after 1, 2, 4... checks (at most
RETRY_MAX_S), and at once after a restart.

The decision is all here; the swap is rollback.revert_live's, under the
store lock, with its target checked first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import health, rollback, session
from .config import Config
from .errors import LockBusy, ReleaserError

if TYPE_CHECKING:
    from .metrics import CheckStats

log = logging.getLogger("releaser.monitor")

# a failed auto-revert is retried after 1, 2, 4... checks, at most this far apart
RETRY_MAX_S = 3600.0


class AutoReverter:
    """Per monitor process: which releases were tried, each failed revert's backoff."""

    def __init__(self, config: Config, stats: CheckStats, *, actor: str,
                 before_revert: Callable[[], None]) -> None:
        self.config = config
        self.mcfg = config.monitor
        self.stats = stats
        self.actor = actor
        self._before_revert = before_revert
        self._tried: set[int] = set()  # releases an auto-revert was attempted from
        # release -> (failed revert attempts, checks to let pass before the next one)
        self._retry: dict[int, tuple[int, int]] = {}
        self.reverting = threading.Event()  # set while a revert runs (never abandoned)

    def after(self, report: health.HealthReport, *, failed_analysis: Any = None) -> bool:
        """Decide on an auto-revert; True when the live release was changed.

        failed_analysis (an analysis.Verdict): the release failed its analysis, which
        reverts at once (its failure_limit already counted the failed evaluations)."""
        if report.ok or (failed_analysis is None and self.stats.consecutive_failures
                         < self.mcfg.failures_before_revert):
            return False
        rid = report.release_id
        if rid is None:
            # nothing to revert from; and revert_live would act on whatever is live
            # by then, which these checks never saw
            self._set_critical(report, "no release is live to revert from")
            return False
        if rid in self._tried or self._reverted_before(rid):
            self._tried.add(rid)
            self._set_critical(report, "an auto-revert was already attempted from it")
            return False
        if self._retry_later(rid):
            return False
        # the revert checks its target (probes, maybe a hash) under the lock
        self._before_revert()
        self.reverting.set()
        try:
            result = rollback.revert_live(
                self.config, actor=self.actor, reasons=report.reasons, expect_live=rid,
                detail={"analysis": failed_analysis.as_dict()} if failed_analysis else None)
        except LockBusy as exc:
            log.warning("auto-revert postponed to the next check: %s", exc.message)
            return False
        except rollback.LiveChanged as exc:
            log.info("auto-revert skipped: %s", exc.message)
            return False
        except (ReleaserError, OSError) as exc:
            self._revert_failed(report, rid, getattr(exc, "message", None) or str(exc))
            return False
        finally:
            self.reverting.clear()
        self._tried.add(rid)
        self._retry.pop(rid, None)
        if result is None:
            self._set_critical(report, "no earlier good release passes its check")
            return False
        # the one log line of an auto-revert (rollback.py leaves it to the monitor)
        log.warning("auto-revert: live release %s -> %s (%s)", result.from_release_id,
                    result.release_id, "; ".join(report.reasons))
        return True

    def _retry_later(self, rid: int) -> bool:
        """After a failed revert from rid: True while its backoff has checks to run."""
        attempts, wait = self._retry.get(rid, (0, 0))
        if wait <= 0:
            return False
        self._retry[rid] = (attempts, wait - 1)
        with self.stats.lock:
            self.stats.critical = True
        log.warning("live release %s is unhealthy; the auto-revert failed %d time(s), next "
                    "try in %d check(s)", rid, attempts, wait)
        return True

    def _revert_failed(self, report: health.HealthReport, rid: int, message: str) -> None:
        """Record, count and log a revert that failed; schedule its retry (backoff)."""
        attempts = self._retry.get(rid, (0, 0))[0] + 1
        cap = max(1, int(RETRY_MAX_S // max(self.mcfg.interval_s, 1e-3)))
        wait = min(2 ** (attempts - 1), cap) - 1  # checks that pass before the next try
        self._retry[rid] = (attempts, wait)
        with self.stats.lock:
            self.stats.critical = True
        recorded = rollback.record_failed_revert(self.config, actor=self.actor, from_release_id=rid,
                                                 reasons=report.reasons, error=message)
        log.error("auto-revert from release %s failed (attempt %d%s; retrying %s): %s; the "
                  "unhealthy release stays live: %s", rid, attempts,
                  "" if recorded else ", not recorded: state.db unwritable",
                  "on the next check" if wait == 0 else f"after {wait + 1} checks", message,
                  "; ".join(report.reasons))

    def _reverted_before(self, rid: int) -> bool:
        """An auto-revert event from this release exists (e.g. before a restart)."""
        try:
            with session.open_store(self.config, degraded_ok=True) as ctx:
                return ctx.state.auto_reverted_from(rid)
        except Exception:  # noqa: BLE001 - unknown: let revert_live decide
            return False

    def _set_critical(self, report: health.HealthReport, why: str) -> None:
        with self.stats.lock:
            self.stats.critical = True
        log.critical("live release %s is unhealthy and stays live (%s): %s",
                     report.release_id, why, "; ".join(report.reasons))
