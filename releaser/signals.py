"""Signals: SIGTERM and SIGHUP interrupt like Ctrl-C; a critical section defers them.

interrupt_on_signals (the CLI, around publish and rollback): SIGINT, SIGTERM and
SIGHUP raise KeyboardInterrupt, so a verb cut short undoes an unverified swap on its
way out (exit 130).

deferred(): a section that must not be cut in half (a swap and its folder fsync; the
undo of a swap, with its record and after_rollback hooks) remembers a signal that
arrives inside it and raises KeyboardInterrupt when it ends, unless an exception is
already on its way out (then the signal is dropped: that exception ends the command
anyway). With raise_after=False the signal is dropped: the section is an undo on the
way out of a command that is ending already.

Both act only in the main thread, where Python runs signal handlers; elsewhere (the
watcher's worker, the monitor's scheduler) they change nothing.

requested(): SQLite swallows the KeyboardInterrupt of a signal handled while a
statement runs (it is raised inside SQLite's progress handler, and the statement
fails with "interrupted"). Code that would record such a failure as a rejected
build asks raise_if_requested() first: an interruption is never recorded as a
reject, it ends the command with exit 130.

first_only(handler): the services' stop handlers (monitor, watch, agent) run once.
Python runs a second signal's handler inside the first one, at its next call; a
handler that takes a plain lock (Event.set, Thread.start) would then block on
the lock its own thread holds, and the service never stops. The wrapper's flag is
tested and set with no call in between, so the nested run returns at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_depth = 0
_pending: list[int] = []


def first_only(handler: Callable[[int, Any], None]) -> Callable[[int, Any], None]:
    """A signal handler that runs for the first signal only (see the module docstring)."""
    fired = [False]

    def once(signum: int, frame: Any) -> None:
        if fired[0]:
            return
        fired[0] = True  # before any call: a nested signal sees it
        handler(signum, frame)

    return once


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


_requested: str | None = None


def requested() -> str | None:
    """The name of the signal that interrupted this process, if one did."""
    return _requested


def raise_if_requested() -> None:
    if _requested is not None:
        raise KeyboardInterrupt(_requested)


def _interrupt(signum: int, _frame: object) -> None:
    global _requested
    _requested = signal.Signals(signum).name
    if _depth > 0:
        _pending.append(signum)
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    if not _main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def deferred(*, raise_after: bool = True) -> Iterator[None]:
    global _depth
    if not _main_thread():
        yield
        return
    _depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            name = signal.Signals(_pending[-1]).name
            _pending.clear()
            if ok and raise_after:
                raise KeyboardInterrupt(name)
