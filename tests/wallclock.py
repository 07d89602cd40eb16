"""A wall clock the test can step, seen by the monitor's scheduler only.

CLOCK_REALTIME cannot be namespaced (time namespaces cover the monotonic and boot
clocks), and stepping the machine's clock would disturb everything else on it. So
the scheduler's modules (APScheduler's scheduler and executor, releaser.schedule)
get a `datetime` whose now() is the real wall clock plus the number of seconds
in OFFSET_FILE, read on every call: writing the file steps their clock at once.
Everything else, the monotonic clock included, is untouched.

Installed from the test side through tests/faults.py --setup (see install()).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any


def install(offset_file: str) -> None:
    import apscheduler.executors.base
    import apscheduler.schedulers.base

    import releaser.schedule

    path = Path(offset_file)

    class SteppedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> _dt.datetime:  # type: ignore[override]
            try:
                offset = float(path.read_text() or 0)
            except (OSError, ValueError):
                offset = 0.0
            return _dt.datetime.now(tz) + _dt.timedelta(seconds=offset)

    for module in (apscheduler.schedulers.base, apscheduler.executors.base, releaser.schedule):
        module.datetime = SteppedDatetime  # type: ignore[attr-defined]


def setup_code(offset_file: Path) -> str:
    """The --setup code for tests/faults.py (it runs with tests/ on sys.path)."""
    return f"import wallclock; wallclock.install({str(offset_file)!r})"
