"""Who is holding state.db: for the one-line error of a busy state.db.

SQLite takes POSIX (fcntl) locks. A writer in WAL mode holds a WRITE lock on
byte 120 of the -shm file; in rollback-journal mode WRITE locks on the lock
bytes of the database itself. /proc/locks lists them with the owner's pid, so
the pids holding a WRITE lock on either inode are the writers. When
/proc/locks names none (another mount namespace, OFD locks: pid -1), the
processes with the file open (from /proc/*/fd, as readers.py does) are named
instead. Only processes this user may inspect are seen.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _command(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(p.decode("utf-8", "replace") for p in raw.rstrip(b"\0").split(b"\0"))[:200]


def _ids(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def write_lock_pids(db: Path) -> list[int]:
    """Pids holding a POSIX WRITE lock on db or its -shm (from /proc/locks)."""
    wanted = {i for p in (db, Path(f"{db}-shm")) if (i := _ids(p)) is not None}
    try:
        lines = (PROC / "locks").read_text().splitlines()
    except OSError:
        return []
    me = os.getpid()
    pids: list[int] = []
    for line in lines:
        parts = line.split()
        # "1: POSIX  ADVISORY  WRITE 10020 fe:00:2149632 120 120" (a "->" marks a waiter)
        if "->" in parts or len(parts) < 6 or parts[1] != "POSIX" or parts[3] != "WRITE":
            continue
        try:
            pid = int(parts[4])
            major, minor, ino = parts[5].split(":")
            key = (int(major, 16), int(minor, 16), int(ino))
        except ValueError:
            continue
        if key in wanted and pid > 0 and pid != me and pid not in pids:
            pids.append(pid)
    return pids


def open_pids(db: Path) -> list[int]:
    """Pids (other than ours) with db, -wal or -shm open (from /proc/*/fd)."""
    names = {os.path.realpath(p) for p in (db, f"{db}-wal", f"{db}-shm")}
    me = str(os.getpid())
    out = []
    try:
        pids = [p for p in os.listdir(PROC) if p.isdigit() and p != me]
    except OSError:
        return []
    for pid in pids:
        fd_dir = PROC / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd_dir / fd) in names:
                    out.append(int(pid))
                    break
            except OSError:
                continue
    return sorted(out)


def describe(db: Path) -> str:
    """`pid 123 (sqlite3 state.db)`, several joined, or a hint when none is visible."""
    pids = write_lock_pids(db)
    if pids:
        return ", ".join(f"pid {p} ({_command(p)})" for p in pids[:3])
    pids = open_pids(db)
    if pids:
        return "one of " + ", ".join(f"pid {p} ({_command(p)})" for p in pids[:3])
    return f"a process this user cannot see (try `fuser -v {db}` as root)"
