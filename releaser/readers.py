"""Stale readers: processes still holding a release file other than the live one.

After a swap, an app that opened live_path earlier keeps reading the old file
until it reopens it (SQLite holds the file descriptor). We find such readers by
scanning /proc/*/fd: each fd whose link points at a release file in the store
(slot or archive, even one deleted since) that is not the live target's inode.

Only processes this user may inspect are visible (the same user, or all of
them with CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, which root has). Without it the app (another user) is
invisible, so scan() says the count is incomplete: callers report it as unknown,
never as zero (README "Users and permissions").
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import access
from .store import Store, release_id_of

PROC = Path("/proc")
DELETED = " (deleted)"


@dataclass(frozen=True)
class StaleReader:
    """A process holding a release file that is no longer live."""

    pid: int
    command: str
    path: str  # the release file it holds, as the kernel names it
    release_id: int | None
    deleted: bool  # the file was pruned or cleared from its slot since
    fds: int  # how many descriptors on it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _command(pid: str) -> str:
    try:
        raw = (PROC / pid / "cmdline").read_bytes()
    except OSError:
        raw = b""
    if raw:
        return " ".join(p.decode("utf-8", "replace") for p in raw.rstrip(b"\0").split(b"\0"))
    try:
        return f"[{(PROC / pid / 'comm').read_text().strip()}]"
    except OSError:
        return "?"


def _inode(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class Scan:
    """The stale readers found, and whether every process could be inspected."""

    readers: list[StaleReader]
    complete: bool  # False: other users' processes could not be inspected


def scan(store: Store, live_target: Path | None = None) -> Scan:
    """stale_readers, and whether every process could be looked at."""
    complete = access.can_see_other_users_processes()
    return Scan(stale_readers(store, live_target), complete)


def stale_readers(store: Store, live_target: Path | None = None) -> list[StaleReader]:
    """Processes holding a release file that is not the live one, by pid.

    live_target defaults to where live_path points now. The caller's own
    process is left out (it may have a release open to check it).
    """
    if live_target is None:
        live_target = store.live_target()
    live_ino = _inode(live_target)
    prefixes = tuple(
        f"{os.path.realpath(d)}{os.sep}"
        for d in (*(store.slot_dir(s) for s in ("blue", "green")), store.archive_dir))
    me = str(os.getpid())
    found: dict[tuple[int, str], list[int]] = {}
    meta: dict[tuple[int, str], tuple[int | None, bool]] = {}
    try:
        pids = [p for p in os.listdir(PROC) if p.isdigit() and p != me]
    except OSError:
        return []  # no /proc (not Linux): nothing to report
    proc = str(PROC)
    for pid in pids:
        # plain strings and a directory fd: this loop runs once per descriptor on the
        # machine, on every status and publish (Path objects doubled its CPU cost)
        try:
            dfd = os.open(f"{proc}/{pid}/fd", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # gone, or not ours to inspect
            continue
        try:
            _scan_fds(dfd, pid, prefixes, live_ino, found, meta)
        finally:
            os.close(dfd)
    out = []
    for (pid_i, name), fd_list in sorted(found.items()):
        rid, deleted = meta[(pid_i, name)]
        out.append(StaleReader(pid=pid_i, command=_command(str(pid_i))[:500], path=name,
                               release_id=rid, deleted=deleted, fds=len(fd_list)))
    return out


def _scan_fds(dfd: int, pid: str, prefixes: tuple[str, ...], live_ino: tuple[int, int] | None,
              found: dict[tuple[int, str], list[int]],
              meta: dict[tuple[int, str], tuple[int | None, bool]]) -> None:
    """Add the release files one process (its open /proc/PID/fd folder) holds."""
    try:
        fds = os.listdir(dfd)
    except OSError:
        return
    for fd in fds:
        try:
            target = os.readlink(fd, dir_fd=dfd)
        except OSError:
            continue
        if not target.startswith(prefixes):
            continue
        deleted = target.endswith(DELETED)
        name = target[: -len(DELETED)] if deleted else target
        rid = release_id_of(name)
        if rid is None:
            continue  # a staging file, the lock...
        if live_ino is not None:
            # the live inode under another name (its archive hard link) is not stale
            try:
                st = os.stat(fd, dir_fd=dfd)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == live_ino:
                continue
        key = (int(pid), name)
        found.setdefault(key, []).append(int(fd))
        meta[key] = (rid, deleted)
