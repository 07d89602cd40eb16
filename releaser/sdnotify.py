"""sd_notify(3) in a few lines: datagrams to $NOTIFY_SOCKET, a no-op when unset.

Supports both socket forms systemd uses: a filesystem path and `@name` for the
Linux abstract namespace. Sending never blocks, and errors are swallowed (logged
at debug): a lost notification must never stall or take the monitor down.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("releaser.sdnotify")


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):
        # abstract namespace: a leading NUL byte instead of "@"
        return "\0" + addr[1:]
    return addr


def enabled() -> bool:
    return _address() is not None


def notify(*assignments: str) -> bool:
    """Send e.g. notify("READY=1", "STATUS=live release 3"); True when it was sent."""
    addr = _address()
    if addr is None or not assignments:
        return False
    payload = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            # never block: a full queue (net.unix.max_dgram_qlen) must not stall a
            # check or the watchdog thread; the message is dropped instead
            sock.send(payload, socket.MSG_DONTWAIT)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec (from $WATCHDOG_USEC) when the watchdog is meant for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2
