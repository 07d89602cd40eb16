"""The copy engine: a candidate into a slot folder under a temp name, hashed in one pass.

Invariants: the copy is one committed state of the source (a SQLite read lock is
held while it is raw-copied, and a source whose size or mtime moved is refused);
the copy is in rollback-journal mode (a WAL-mode header is patched; a pending -wal
is folded in through SQLite's backup API) with mode 0444; the source is read once
(a reflink where the filesystem allows, else streamed while a helper thread
hashes); only a Staged whose fsync finished (durable()) may get a release name.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .db import HEADER_SIZE, parse_header
from .errors import StoreIOError, UsageError
from .files import io_error, remove_quietly

COPY_CHUNK = 1 << 20  # 1 MiB: large enough for throughput, small enough for flat memory


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


ProgressFn = Callable[[int], None]


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
            raise io_error(path, self.error)


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


def stage(source: Path, tmp: Path, slot: str, progress: ProgressFn | None = None) -> Staged:
    """Copy source to tmp (a temp name in slot's folder), hashing in the same pass.

    A source with a pending -wal is copied through SQLite's backup API so the
    committed transactions in the WAL are included; the result is always a
    journal_mode=DELETE file with mode 0444.
    """
    wal = Path(f"{source}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return _stage_via_backup(source, tmp, slot, progress)
    with _source_read_lock(source):
        return _stage_copy(source, tmp, slot, progress)


def _stage_copy(source: Path, tmp: Path, slot: str, progress: ProgressFn | None) -> Staged:
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
            raise io_error(tmp, exc) from None
        raise
    finally:
        os.close(src_fd)
        if dst_fd >= 0:
            os.close(dst_fd)
    return Staged(path=tmp, slot=slot, sha256=sha, size=copied, method=method,
                  fsync=syncing)


def _stage_via_backup(source: Path, tmp: Path, slot: str, progress: ProgressFn | None
                      ) -> Staged:
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
        raise io_error(tmp, exc) from None
    return Staged(path=tmp, slot=slot, sha256=sha, size=size, method="sqlite-backup")
