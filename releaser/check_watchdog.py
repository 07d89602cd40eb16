"""The monitor's systemd watchdog: WATCHDOG=1 only while checks are completing.

READY=1 after the first check, STATUS= with the live release, and WATCHDOG=1
(every WatchdogSec/2, from a thread) only while checks are completing: until a
deadline, set
- when a check starts: to its time budget, query_timeout_ms for the schema
  query and each probe (+2), integrity_timeout_ms when it runs quick_check,
  the file size at HASH_MIN_BYTES_PER_S when it hashes, plus misfire_grace_s
  (state.db waits, scheduling); an auto-revert re-arms it for the target's check;
- when a check completes: to interval_s + misfire_grace_s, by when the next
  check must have started.
A check stuck past its own time limits, or a scheduler that stopped starting
checks, stops the pings; systemd restarts the monitor WatchdogSec later.
A monitor fault (a bug) stops the pings for good (fault), so systemd restarts
it. Nothing here checks or reverts: the monitor arms the deadline and reports.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from . import sdnotify
from .config import Config

log = logging.getLogger("releaser.monitor")

# the slowest sha256 a check's watchdog budget allows for (a slow disk)
HASH_MIN_BYTES_PER_S = 50 * 1024 * 1024


class CheckWatchdog:
    """The deadline until which WATCHDOG=1 is sent, and the pings themselves."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.mcfg = config.monitor
        self._ready_sent = False
        self._faulted = False  # a monitor bug happened: the watchdog stays unfed
        # WATCHDOG=1 is sent while time.monotonic() is before this (see the docstring)
        self._deadline = time.monotonic() + self.mcfg.interval_s + self.mcfg.misfire_grace_s

    def fault(self) -> None:
        self._faulted = True
        self._deadline = 0.0

    def extend(self, seconds: float) -> None:
        """At least this long from now (an analysis tick may hold the single worker)."""
        if self._faulted:  # a fault is final: an analysis tick must not revive the pings
            return
        self._deadline = max(self._deadline, time.monotonic() + seconds)

    def notify_after_check(self, status_line: str) -> None:
        msgs = [f"STATUS={status_line}"]
        if self.completing():
            msgs.append("WATCHDOG=1")
        if not self._ready_sent:
            msgs.insert(0, "READY=1")
            self._ready_sent = True
        sdnotify.notify(*msgs)

    def budget_s(self, *, full_hash: bool, integrity: bool) -> float:
        """How long a check may run: its own time limits, the hash, misfire_grace_s."""
        g = self.config.gates
        budget = g.query_timeout_ms / 1000.0 * (len(self.config.probes) + 2)
        if integrity:
            budget += g.integrity_timeout_ms / 1000.0
        if full_hash:
            try:
                budget += os.stat(self.config.live_path).st_size / HASH_MIN_BYTES_PER_S
            except OSError:
                pass
        return budget + self.mcfg.misfire_grace_s

    def arm(self, seconds: float) -> None:
        if not self._faulted:
            self._deadline = time.monotonic() + seconds

    def completing(self) -> bool:
        return time.monotonic() < self._deadline

    def loop(self, every_s: float, stop: threading.Event) -> None:
        while not stop.wait(every_s):
            if self.completing():
                sdnotify.notify("WATCHDOG=1")
            else:
                log.error("checks stopped completing (one is past its time budget, or none "
                          "started in time): withholding the systemd watchdog ping")
