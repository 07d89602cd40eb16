"""Run a job every interval by the monotonic clock, whatever the wall clock does.

APScheduler 3 keeps run times as wall-clock datetimes and compares them with
datetime.now(). A wall clock stepped back an hour (NTP after a bad RTC, a VM
restored from a snapshot, `date -s`) would hold the next check back an hour, until
systemd's watchdog restarts the monitor; stepped forward, run times computed from
the old clock would all be due at once.

Here the trigger keeps when the next run is due on time.monotonic(), and the
scheduler, each time it looks for due jobs, re-derives such a job's wall-clock run
time from that monotonic due time and the wall clock now. A run is therefore due
interval_s (monotonic) after the previous one was started: never later because
of a backward step, never early or in a burst after a forward one. The scheduler
sleeps in threading.Event.wait, whose timeout is already monotonic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger

log = logging.getLogger("releaser.schedule")

# a run time this far from its monotonic due time means the wall clock was stepped
# (scheduling jitter is milliseconds)
STEP_TOLERANCE_S = 1.0


class MonotonicInterval(BaseTrigger):
    """Due at once, then interval_s (monotonic) after each run is started."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.due = clock()  # monotonic time of the next run

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime
                           ) -> datetime:
        # previous_fire_time is set once a run was taken: the next is an interval away
        if previous_fire_time is not None:
            self.due = self.clock() + self.interval_s
        return self.wall_due(now)

    def wall_due(self, now: datetime) -> datetime:
        """The next run as a wall-clock time, given the wall clock now."""
        return now + timedelta(seconds=max(self.due - self.clock(), 0.0))

    def __str__(self) -> str:
        return f"every {self.interval_s:g} s (monotonic)"


class SteadyScheduler(BlockingScheduler):
    """A BlockingScheduler whose MonotonicInterval jobs survive wall-clock steps."""

    def _process_jobs(self) -> float | None:
        now = datetime.now(self.timezone)
        for job in self.get_jobs():
            if not isinstance(job.trigger, MonotonicInterval) or job.next_run_time is None:
                continue
            due = job.trigger.wall_due(now)
            step = (job.next_run_time - due).total_seconds()
            if abs(step) > STEP_TOLERANCE_S:
                log.warning("the wall clock moved %+.0f s against the monotonic clock; "
                            "job %s stays on its interval", -step, job.id)
                self.modify_job(job.id, next_run_time=due)
        return super()._process_jobs()  # type: ignore[no-any-return]
