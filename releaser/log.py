"""Logging to stderr, journald-friendly.

When stderr is journald's stream (JOURNAL_STREAM names stderr's device and
inode, as systemd sets it) each line starts with the syslog priority as `<N>`,
which journald turns into the entry's PRIORITY, and carries no timestamp
(journald adds its own). Anywhere else (a terminal, a file, a pipe, a unit
whose stderr is not the journal) each line is
`2026-01-31T12:00:00.123Z releaser LEVEL message`, UTC.
"""

from __future__ import annotations

import logging
import os
import sys
import time

PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def under_systemd() -> bool:
    """stderr is connected to journald (systemd's documented JOURNAL_STREAM check)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class IsoFormatter(logging.Formatter):
    """`2026-01-31T12:00:00.123Z releaser INFO message`: UTC, sortable, greppable."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = PRIORITIES.get(record.levelno, 6)
        text = super().format(record)
        # one journal entry per line: prefix continuation lines too
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def setup_logging(*, debug: bool = False, verbose: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    if under_systemd():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(IsoFormatter("%(asctime)s releaser %(levelname)s %(message)s"))
    root = logging.getLogger("releaser")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
