"""The store on disk: two slots, the live symlink, the archive, the lock.

Layout under `root`:
    slots/blue/release-<id>.db     one release file per slot
    slots/green/release-<id>.db
    archive/release-<id>.db        hard links to the last good releases
    state.db                       releases and events (see state.py)
    lock                           flock target; holds the holder's pid/command

Rules every function here keeps:
- a release file is never written after it is renamed into place (readers that
  opened it keep its inode); new content is a new file: temp name, fsync, rename;
- the live symlink changes only by os.replace of a fully-made symlink, followed
  by an fsync of its folder, so `live_path` always names a whole release.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import queue
import re
import secrets
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .db import HEADER_SIZE, parse_header
from .errors import LockBusy, StoreIOError, UsageError

SLOTS = ("blue", "green")
RELEASE_FILE_RE = re.compile(r"^release-(\d+)\.db$")
STAGING_PREFIX = ".staging-"
SWAP_TMP_INFIX = ".releaser-swap-"
COPY_CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for flat memory
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)

ProgressFn = Callable[[int], None]


def release_file_name(release_id: int) -> str:
    return f"release-{release_id}.db"


def release_id_of(path: Path | str) -> int | None:
    m = RELEASE_FILE_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, progress: ProgressFn | None = None) -> str:
    h = hashlib.sha256()
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            if progress:
                progress(n)
    return h.hexdigest()


@dataclass(frozen=True)
class Staged:
    """A complete, read-only copy under a temp name in a slot folder.

    Its fsync may still be running in the background (overlapping the gates, which
    read the copy from the page cache); `Store.place` waits for it before the rename,
    so only a durable file ever gets a release name.
    """

    path: Path
    slot: str
    sha256: str
    size: int
    method: str  # "copy", "reflink" or "sqlite-backup"
    fsync: _BackgroundFsync | None = field(default=None, compare=False, repr=False)

    def durable(self) -> None:
        """Wait for the background fsync; raise StoreIOError if it failed."""
        if self.fsync is not None:
            self.fsync.wait(self.path)


class _BackgroundFsync:
    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd)
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="releaser-fsync", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            self.error = exc
        finally:
            os.close(self.fd)

    def wait(self, path: Path) -> None:
        self.thread.join()
        if self.error is not None:
            raise _io_error(path, self.error)


@dataclass(frozen=True)
class FileIdentity:
    size: int
    inode: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = os.stat(path)
        return cls(size=st.st_size, inode=st.st_ino, mtime_ns=st.st_mtime_ns)


class Store:
    def __init__(self, root: Path, live_path: Path) -> None:
        self.root = root
        self.live_path = live_path
        self.slots_dir = root / "slots"
        self.archive_dir = root / "archive"
        self.state_path = root / "state.db"
        self.lock_path = root / "lock"

    # -- layout -----------------------------------------------------------

    def create(self) -> None:
        for d in (self.root, *(self.slot_dir(s) for s in SLOTS), self.archive_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.live_path.parent.mkdir(parents=True, exist_ok=True)

    def exists(self) -> bool:
        return self.state_path.is_file() and all(self.slot_dir(s).is_dir() for s in SLOTS)

    def slot_dir(self, slot: str) -> Path:
        return self.slots_dir / slot

    def slot_files(self, slot: str) -> dict[int, Path]:
        """Release files in a slot folder, by release id (normally one)."""
        out: dict[int, Path] = {}
        try:
            entries = list(os.scandir(self.slot_dir(slot)))
        except OSError:
            return out
        for entry in entries:
            rid = release_id_of(entry.name)
            if rid is not None:
                out[rid] = Path(entry.path)
        return out

    def archive_file(self, release_id: int) -> Path:
        return self.archive_dir / release_file_name(release_id)

    def archived_ids(self) -> set[int]:
        try:
            names = os.listdir(self.archive_dir)
        except OSError:  # missing or broken archive: status must still answer
            return set()
        return {rid for n in names if (rid := release_id_of(n)) is not None}

    def is_inside(self, path: Path) -> bool:
        """True when path (resolved) is inside the store root."""
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    # -- the live symlink -------------------------------------------------

    def live_target(self) -> Path | None:
        """Where live_path points (absolute), or None when it is not a symlink."""
        try:
            target = os.readlink(self.live_path)
        except (FileNotFoundError, OSError):
            return None
        p = Path(target)
        return p if p.is_absolute() else (self.live_path.parent / p)

    def slot_of(self, path: Path | None) -> str | None:
        if path is None:
            return None
        for slot in SLOTS:
            if path.parent == self.slot_dir(slot):
                return slot
        return None

    def live_slot(self) -> str | None:
        return self.slot_of(self.live_target())

    def live_release_id(self) -> int | None:
        target = self.live_target()
        return release_id_of(target) if self.slot_of(target) else None

    def idle_slot(self) -> str:
        live = self.live_slot()
        return SLOTS[1] if live == SLOTS[0] else SLOTS[0]

    def swap(self, target: Path) -> None:
        """Point live_path at target atomically: make a symlink aside, rename it over."""
        tmp = self.live_path.parent / (
            f".{self.live_path.name}{SWAP_TMP_INFIX}{os.getpid()}-{secrets.token_hex(4)}"
        )
        try:
            os.symlink(target, tmp)
            os.replace(tmp, self.live_path)
            fsync_dir(self.live_path.parent)
        except OSError as exc:
            with suppress(OSError):
                os.unlink(tmp)
            raise StoreIOError(f"{self.live_path}: cannot swap the live symlink: {exc}") from None

    # -- staging ----------------------------------------------------------

    def _staging_path(self, slot: str) -> Path:
        return self.slot_dir(slot) / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.db"

    def stage(self, source: Path, slot: str, progress: ProgressFn | None = None) -> Staged:
        """Copy source into slot under a temp name, hashing in the same pass.

        A source with a pending -wal is copied through SQLite's backup API so the
        committed transactions in the WAL are included; the result is always a
        journal_mode=DELETE file with mode 0444.
        """
        wal = Path(f"{source}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            return self._stage_via_backup(source, slot, progress)
        with _source_read_lock(source):
            return self._stage_copy(source, slot, progress)

    def _stage_copy(self, source: Path, slot: str, progress: ProgressFn | None) -> Staged:
        tmp = self._staging_path(slot)
        try:
            src_fd = os.open(source, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"{source}: cannot read the candidate: {exc.strerror}") from None
        dst_fd = -1
        try:
            before = os.fstat(src_fd)
            dst_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            sha, copied, method = _copy_and_hash(src_fd, dst_fd, progress)
            after = os.fstat(src_fd)
            if (copied != before.st_size or after.st_size != before.st_size
                    or after.st_mtime_ns != before.st_mtime_ns):
                raise SourceChanged(
                    f"{source}: the file changed while it was being copied "
                    f"(size {before.st_size} -> {after.st_size}); publish it once the build "
                    "has finished writing it"
                )
            os.fchmod(dst_fd, 0o444)
            syncing = _BackgroundFsync(dst_fd)
        except BaseException as exc:
            if dst_fd >= 0:
                os.close(dst_fd)
                dst_fd = -1
            with suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise _io_error(tmp, exc) from None
            raise
        finally:
            os.close(src_fd)
            if dst_fd >= 0:
                os.close(dst_fd)
        return Staged(path=tmp, slot=slot, sha256=sha, size=copied, method=method,
                      fsync=syncing)

    def _stage_via_backup(self, source: Path, slot: str, progress: ProgressFn | None) -> Staged:
        tmp = self._staging_path(slot)
        try:
            src = sqlite3.connect(
                f"file:{urllib.parse.quote(str(source.absolute()))}?mode=ro", uri=True
            )
            try:
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst)
                    dst.execute("PRAGMA journal_mode=DELETE")
                finally:
                    dst.close()
            finally:
                src.close()
            os.chmod(tmp, 0o444)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            sha = sha256_file(tmp, progress)
            size = tmp.stat().st_size
        except sqlite3.Error as exc:
            remove_quietly(tmp, *(Path(f"{tmp}{x}") for x in ("-journal", "-wal", "-shm")))
            if getattr(exc, "sqlite_errorname", "") in STAGING_WRITE_ERRORS:
                # the copy could not be written (disk full, file size limit): I/O, exit 5
                raise StoreIOError(
                    f"{tmp}: no space left while writing the staged copy ({exc}); free "
                    "space under the store root and publish again") from None
            raise SourceUnreadable(
                f"{source}: has a pending write-ahead log that could not be read through "
                f"SQLite ({exc}); run `sqlite3 {source} 'PRAGMA wal_checkpoint(TRUNCATE)'` "
                "and publish again"
            ) from None
        except OSError as exc:
            remove_quietly(tmp, Path(f"{tmp}-journal"))
            raise _io_error(tmp, exc) from None
        return Staged(path=tmp, slot=slot, sha256=sha, size=size, method="sqlite-backup")

    def discard(self, staged: Staged) -> None:
        with suppress(StoreIOError):
            staged.durable()  # no thread left running on a file we delete
        remove_quietly(staged.path)

    def place(self, staged: Staged, release_id: int) -> Path:
        """Rename a staged file into its slot as release-<id>.db and archive it (hard link)."""
        final = self.slot_dir(staged.slot) / release_file_name(release_id)
        staged.durable()  # the data is on disk before the file gets its release name
        try:
            os.rename(staged.path, final)
            fsync_dir(final.parent)
        except OSError as exc:
            raise _io_error(final, exc) from None
        self.archive(final, release_id)
        return final

    def archive(self, path: Path, release_id: int) -> None:
        """Hard-link a release file into the archive: O(1), no second copy on disk."""
        dest = self.archive_file(release_id)
        if not dest.exists():
            tmp = self.archive_dir / f"{STAGING_PREFIX}{release_id}-{secrets.token_hex(4)}"
            _link_atomically(path, tmp, dest)

    def restore_from_archive(self, release_id: int, slot: str) -> Path:
        """Put an archived release into a slot by hard link: O(1) whatever its size."""
        final = self.slot_dir(slot) / release_file_name(release_id)
        if not final.exists():
            _link_atomically(self.archive_file(release_id), self._staging_path(slot), final)
        return final

    def clear_slot(self, slot: str, keep: int) -> None:
        """Remove release files other than `keep` from a slot (they stay in the archive)."""
        removed = False
        for rid, path in self.slot_files(slot).items():
            if rid != keep:
                remove_quietly(path)
                removed = True
        if removed:
            fsync_dir(self.slot_dir(slot))

    def remove_release_files(self, release_id: int) -> None:
        """Remove a release that never went live from its slot and the archive."""
        paths = [p for s in SLOTS if (p := self.slot_files(s).get(release_id)) is not None]
        remove_quietly(*paths, self.archive_file(release_id))
        for folder in {p.parent for p in paths} | {self.archive_dir}:
            with suppress(OSError):
                fsync_dir(folder)  # so the removal survives a power loss

    def prune_archive(self, keep: set[int]) -> list[int]:
        removed = []
        for rid in sorted(self.archived_ids() - keep):
            remove_quietly(self.archive_file(rid))
            removed.append(rid)
        if removed:
            fsync_dir(self.archive_dir)
        return removed

    def cleanup_leftovers(self) -> list[Path]:
        """Remove what an interrupted operation left: staging files, temp symlinks."""
        found: list[Path] = []
        for d in (*(self.slot_dir(s) for s in SLOTS), self.archive_dir):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(STAGING_PREFIX):
                    found.append(Path(entry.path))
        prefix = f".{self.live_path.name}{SWAP_TMP_INFIX}"
        try:
            for entry in os.scandir(self.live_path.parent):
                if entry.name.startswith(prefix):
                    found.append(Path(entry.path))
        except OSError:
            pass
        for path in found:
            remove_quietly(path)
        return found

    # -- lock -------------------------------------------------------------

    @contextmanager
    def lock(self, command: str, wait_s: float = 0.0) -> Iterator[None]:
        """Exclusive flock on root/lock; records the holder for `status`."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _io_error(self.lock_path, exc) from None
        try:
            deadline = time.monotonic() + max(wait_s, 0.0)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = self.lock_holder()
                        who = (
                            f"pid {holder['pid']} ({holder['command']}, since {holder['since']})"
                            if holder else "another process"
                        )
                        raise LockBusy(
                            f"{self.root}: the store is locked by {who}; retry later or pass "
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

    def lock_holder(self) -> dict[str, object] | None:
        """The recorded holder, if that process is still alive."""
        try:
            raw = self.lock_path.read_text()
            info = json.loads(raw) if raw.strip() else None
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
            return None
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return None  # a holder killed by SIGKILL: the kernel released its flock
        except PermissionError:
            pass
        return info


# SQLite errors that mean the staged copy could not be written, not that the source is bad
STAGING_WRITE_ERRORS = frozenset({
    "SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_IOERR_FSYNC", "SQLITE_IOERR_TRUNCATE",
    "SQLITE_IOERR_DIR_FSYNC", "SQLITE_IOERR_NOMEM", "SQLITE_NOMEM",
})


class SourceChanged(StoreIOError):
    """The candidate was modified while being copied (a gate failure, exit 1)."""

    exit_code = 1


class SourceUnreadable(StoreIOError):
    """SQLite could not read the candidate's WAL (a gate failure, exit 1)."""

    exit_code = 1


@contextmanager
def _source_read_lock(source: Path) -> Iterator[None]:
    """Hold a SQLite read (SHARED) lock on the source while it is raw-copied.

    A writer cannot commit into, or spill its cache into, a file while another
    process holds SHARED: it waits on its busy timeout. So the copy is one committed
    state, not a mix torn by a commit (size/mtime checks alone can miss one: mtime
    is coarse). A file SQLite cannot read is copied unlocked; the gates reject it.
    Our own fd on the source is closed before this lock is released (POSIX locks drop
    on any close), which is harmless: the copy is complete by then.
    """
    conn = None
    try:
        conn = sqlite3.connect(
            f"file:{urllib.parse.quote(str(source.absolute()))}?mode=ro", uri=True,
            isolation_level=None, timeout=5.0)
        conn.execute("BEGIN")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        if conn is not None:
            conn.close()
            conn = None
        if "locked" in str(exc):
            raise SourceChanged(
                f"{source}: a writer holds it locked ({exc}); publish it once the build "
                "has finished writing it") from None
    except sqlite3.Error:
        if conn is not None:
            conn.close()
            conn = None
    try:
        yield
    finally:
        if conn is not None:
            with suppress(sqlite3.Error):
                conn.close()


def _copy_and_hash(src_fd: int, dst_fd: int, progress: ProgressFn | None) -> tuple[str, int, str]:
    """One streaming pass: read, hash, write. A reflink when the filesystem allows it.

    A source in WAL mode (with no pending WAL) gets header bytes 18-19 set to 1
    (legacy journal) in the copy, as `PRAGMA journal_mode=DELETE` would do, so
    the release never needs -wal/-shm files.
    """
    h = hashlib.sha256()
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError:
        pass  # no reflink on this filesystem: stream it
    else:
        # shared extents: read the clone once to hash it, patch the header if needed
        total = 0
        first = True
        while n := os.preadv(src_fd, [view], total):
            if first:
                if _patch_wal_header(view[:n]):
                    os.pwrite(dst_fd, bytes(view[18:20]), 18)
                first = False
            h.update(view[:n])
            total += n
            if progress:
                progress(n)
        return h.hexdigest(), total, "reflink"
    total = 0
    first = True
    hasher = _HashThread(h)
    try:
        with os.fdopen(os.dup(src_fd), "rb", buffering=0) as src:
            while True:
                block = hasher.take()
                n = src.readinto(block)
                if not n:
                    break
                chunk = memoryview(block)[:n]
                if first:
                    _patch_wal_header(chunk)
                    first = False
                hasher.feed(block, n)  # hashed on the helper thread while we write it
                written = 0
                while written < n:
                    written += os.write(dst_fd, chunk[written:])
                total += n
                if progress:
                    progress(n)
    finally:
        hasher.finish()
    return h.hexdigest(), total, "copy"


class _HashThread:
    """sha256 on a helper thread, overlapping the write of the same block.

    Still one pass over the data: each block is read once, then written (this thread)
    and hashed (the helper) at the same time; hashlib and os.write both release the
    GIL, so on two cores the copy costs max(write, hash) instead of their sum. A fixed
    pool of blocks keeps memory flat; a block is reused only once it has been hashed
    (and written: the writer takes the next block only after writing this one).
    """

    POOL = 4

    def __init__(self, h: hashlib._Hash) -> None:
        self.h = h
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(self.POOL):
            self.free.put(bytearray(COPY_CHUNK))
        self.todo: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="releaser-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.todo.get()) is not None:
            block, n = item
            self.h.update(memoryview(block)[:n])
            self.free.put(block)

    def take(self) -> bytearray:
        return self.free.get()

    def feed(self, block: bytearray, n: int) -> None:
        self.todo.put((block, n))

    def finish(self) -> None:
        self.todo.put(None)
        self.thread.join()


def _patch_wal_header(first_chunk: memoryview) -> bool:
    if len(first_chunk) < HEADER_SIZE:
        return False
    header = parse_header(bytes(first_chunk[:HEADER_SIZE]))
    if header is None or not header.wal_mode:
        return False
    first_chunk[18] = 1
    first_chunk[19] = 1
    return True


def _link_atomically(src: Path, tmp: Path, dest: Path) -> None:
    """A new name for an existing file: link under a temp name, rename, fsync the folder."""
    try:
        os.link(src, tmp)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        remove_quietly(tmp)
        raise _io_error(dest, exc) from None


def _io_error(path: Path, exc: OSError) -> StoreIOError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StoreIOError(f"{path}: no space left while writing ({exc.strerror}); free space "
                            "under the store root and publish again")
    return StoreIOError(f"{path}: {exc.strerror or exc}")


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        with suppress(OSError):
            os.unlink(p)


def is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
