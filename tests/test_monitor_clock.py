"""The monitor's schedule survives wall-clock steps (issue 9).

A real `releaser monitor` on a real store, its scheduler reading a wall clock the
test steps (tests/wallclock.py): an hour back must not hold the next check back an
hour; an hour forward must not fire a burst of checks.
"""

from __future__ import annotations

import time

from .conftest import Env
from .monitorproc import MonitorProc, health_checks, set_config, wait_for
from .wallclock import setup_code

INTERVAL_S = 0.25  # counting checks: a short interval keeps the test short


def test_a_wall_clock_step_neither_stalls_nor_bunches_checks(published: Env) -> None:
    set_config(published, monitor={"interval_s": INTERVAL_S})
    offset = published.tmp / "wall-offset"
    offset.write_text("0")

    def checks() -> int:
        return len(health_checks(published))

    with MonitorProc(published, "monitor", setup=setup_code(offset)) as mon:
        wait_for("two checks", lambda: checks() >= 2, proc=mon)
        offset.write_text("-3600")  # the wall clock steps back an hour
        n = checks()
        # with wall-clock scheduling the next check would be an hour away
        wait_for("three checks after the backward step", lambda: checks() >= n + 3,
                 timeout=30, proc=mon)
        assert "wall clock moved -3600 s" in mon.stderr()

        offset.write_text("3600")  # and now two hours forward
        n, t0 = checks(), time.monotonic()
        wait_for("three checks after the forward step", lambda: checks() >= n + 3,
                 timeout=30, proc=mon)
        # no burst: never more checks than intervals passed (plus the one in flight)
        ran, elapsed = checks() - n, time.monotonic() - t0
        assert ran <= elapsed / INTERVAL_S + 2, f"{ran} checks in {elapsed:.1f} s"
        assert mon.stop() == 0
    assert all(c["ok"] for c in health_checks(published))
