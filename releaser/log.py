"""Logging to stderr, journald-friendly.

Under systemd (JOURNAL_STREAM or INVOCATION_ID set) each line starts with the
syslog priority as `<N>`, which journald turns into the entry's PRIORITY, and
carries no timestamp (journald adds its own). At a terminal lines are
`releaser: LEVEL: message`.
"""

from __future__ import annotations

import logging
import os
import sys

PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


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
        handler.setFormatter(logging.Formatter("releaser: %(levelname)s: %(message)s"))
    root = logging.getLogger("releaser")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
