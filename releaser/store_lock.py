"""The store's lock: an exclusive flock on root/lock, and who holds it.

Every mutating operation (publish, rollback, revert, init, fsck --repair)
holds it for its whole length (Store.lock). The holder writes its pid,
command and start time into the lock file for `status`; whether the lock is
held is always read from the flock itself, never from that record (a holder
killed by SIGKILL leaves its record behind). Before it waits, the caller's
access to everything the operation will write is checked, so a user who may
not publish is told so at once, not after the lock. The lock file is 0664
whatever the umask (access.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import access
from .errors import LockBusy
from .files import io_error


@contextmanager
def hold(lock_path: Path, root: Path, writable: list[Path], command: str,
         wait_s: float = 0.0) -> Iterator[None]:
    """Exclusive flock on root/lock; records the holder for `status`."""
    access.ensure_writable(writable, root)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, access.SHARED_FILE_MODE)
    except OSError as exc:
        raise io_error(lock_path, exc) from None
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            access.set_mode(fd, access.SHARED_FILE_MODE)  # whatever the umask
        deadline = time.monotonic() + max(wait_s, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    who_holds = holder(lock_path)
                    who = (
                        f"pid {who_holds['pid']} ({who_holds['command']}, since "
                        f"{who_holds['since']})" if who_holds else "another process"
                    )
                    raise LockBusy(
                        f"{root}: the store is still locked by {who} after waiting "
                        f"{wait_s:g} s; retry later or pass a longer --wait" if wait_s > 0
                        else f"{root}: the store is locked by {who}; retry later or pass "
                        "--wait SECONDS"
                    ) from None
                time.sleep(0.05)
        info = json.dumps({
            "pid": os.getpid(), "command": command,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def holder(lock_path: Path) -> dict[str, object] | None:
    """The recorded holder, if the lock is held now.

    The flock itself is probed, not the recorded pid: a holder killed by SIGKILL
    leaves its record behind, and its pid may belong to another process by now.
    """
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: read who holds it
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # nobody holds it, whatever the file says
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        info = json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    return info
