"""Error types. Each carries the process exit code the CLI maps it to.

Exit codes (documented in README.md, pinned by tests/test_cli.py):
  0 ok
  1 a gate or health check failed (nothing changed)
  2 usage or config error
  3 another operation holds the lock
  4 nothing to roll back to
  5 I/O or internal error, live untouched
  130 interrupted (a signal, or state.db unwritable after the swap); live put back
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_NOTHING = 4
EXIT_IO = 5
EXIT_INTERRUPTED = 130


class ReleaserError(Exception):
    """Base error: one line for the user, plus the exit code."""

    exit_code = EXIT_IO

    def __init__(self, message: str, *, report: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Optional structured result (e.g. a PublishResult) for --json output.
        self.report = report


class GateFailed(ReleaserError):
    exit_code = EXIT_GATE
    # the candidate may pass later unchanged (it was being written while copied):
    # the watcher retries these instead of filing the build as rejected
    transient = False


class UsageError(ReleaserError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    pass


class LockBusy(ReleaserError):
    exit_code = EXIT_LOCKED


class NothingToRollback(ReleaserError):
    exit_code = EXIT_NOTHING
    # release ids `rollback --to` would accept instead, newest first
    accepted: list[int] = []


class StoreIOError(ReleaserError):
    exit_code = EXIT_IO


class Interrupted(ReleaserError):
    """Cut short after the swap (a signal, state.db unwritable): the swap was undone."""

    exit_code = EXIT_INTERRUPTED
