"""Open a candidate or live database safely: read-only, untrusted schema, time-limited queries.

A broken or hostile file must not be able to hang us or change anything:
- `mode=ro` URI: SQLite never writes the file (no journal recovery, no WAL checkpoint);
- `PRAGMA trusted_schema=OFF`: views and triggers cannot call functions with side effects;
- `PRAGMA query_only=ON`: belt and braces against writes;
- a progress handler aborts any statement that runs past its deadline;
- an authorizer refuses ATTACH/DETACH: config SQL can read the candidate, never
  open (and so create) another file;
- SQLite's heap is capped ([gates] sqlite_heap_limit_mb, default 64 MB): a file that
  needs more memory to read (a huge generated blob...) fails its query with
  OutOfMemory instead of taking the machine's memory; results are streamed, never
  fetched whole, where their size is the file's choice (probes). The cap is
  process-wide in SQLite (the last open sets it): every open passes the config's.
"""

from __future__ import annotations

import sqlite3
import struct
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100


DEFAULT_HEAP_LIMIT_MB = 64
PROGRESS_OPS = 1000

_DENIED = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH}


class QueryTimeout(Exception):
    """A statement ran past its time limit."""


class OutOfMemory(sqlite3.DatabaseError):
    """A statement needed more than the SQLite heap limit."""


class MultipleRows(sqlite3.DatabaseError):
    """A query meant to return one value returned several rows."""


def _authorize(action: int, *_args: object) -> int:
    return sqlite3.SQLITE_DENY if action in _DENIED else sqlite3.SQLITE_OK


def _cap_heap(conn: sqlite3.Connection, limit_mb: int) -> None:
    """Set the process-wide SQLite heap limit (once is enough; harmless again)."""
    conn.execute(f"PRAGMA hard_heap_limit = {int(limit_mb) << 20}")


@dataclass(frozen=True)
class Header:
    """The fields of a SQLite file's 100-byte header that the checks read."""

    page_size: int
    write_version: int
    read_version: int
    change_counter: int
    page_count: int
    version_valid_for: int

    @property
    def wal_mode(self) -> bool:
        return self.write_version == 2 or self.read_version == 2

    def expected_size(self) -> int | None:
        """File size the header promises, when the in-header page count is valid."""
        if self.page_count and self.change_counter == self.version_valid_for:
            return self.page_count * self.page_size
        return None


def parse_header(raw: bytes) -> Header | None:
    """Parse the first 100 bytes of a SQLite file; None when it is not one."""
    if len(raw) < HEADER_SIZE or not raw.startswith(SQLITE_MAGIC):
        return None
    (page_size,) = struct.unpack(">H", raw[16:18])
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return None
    return Header(
        page_size=page_size,
        write_version=raw[18],
        read_version=raw[19],
        change_counter=struct.unpack(">I", raw[24:28])[0],
        page_count=struct.unpack(">I", raw[28:32])[0],
        version_valid_for=struct.unpack(">I", raw[92:96])[0],
    )


def read_header(path: Path) -> Header | None:
    with open(path, "rb") as fh:
        return parse_header(fh.read(HEADER_SIZE))


class ReadOnlyDB:
    """A read-only connection whose every statement runs under a deadline."""

    def __init__(self, path: Path, timeout_ms: int, *, immutable: bool = False,
                 progress_ops: int | None = None,
                 heap_limit_mb: int = DEFAULT_HEAP_LIMIT_MB) -> None:
        self.path = path
        self.timeout_ms = timeout_ms
        self.heap_limit_mb = heap_limit_mb
        quoted = urllib.parse.quote(str(path.absolute()))
        uri = f"file:{quoted}?mode=ro"
        if immutable:
            # the file is ours and never written: skip locking and -shm files
            uri += "&immutable=1"
        self._deadline = float("inf")
        self._cancelled = False  # cancel(): every statement is interrupted from then on
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        # the deadline is looked at every progress_ops SQLite steps
        self.conn.set_progress_handler(self._progress, progress_ops or PROGRESS_OPS)
        self.conn.execute("PRAGMA trusted_schema=OFF")
        self.conn.execute("PRAGMA query_only=ON")
        _cap_heap(self.conn, heap_limit_mb)
        self.conn.set_authorizer(_authorize)

    def _progress(self) -> int:
        return 1 if self._cancelled or time.monotonic() > self._deadline else 0

    def cancel(self) -> None:
        """Stop this connection's work from another thread, for good (then close it).

        conn.interrupt() alone misses a statement its thread has not started yet (it
        is a no-op when nothing runs): the flag stops that one at its first progress
        callback, so a scan queued behind a failure never runs to its time limit."""
        self._cancelled = True
        self.conn.interrupt()

    @contextmanager
    def deadline(self, timeout_ms: int | None = None) -> Iterator[None]:
        self._deadline = time.monotonic() + (timeout_ms or self.timeout_ms) / 1000.0
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc) and time.monotonic() > self._deadline:
                raise QueryTimeout(
                    f"query exceeded the {timeout_ms or self.timeout_ms} ms time limit"
                ) from None
            if "not authorized" in str(exc):
                raise sqlite3.OperationalError(
                    f"{exc} (ATTACH and DETACH are refused: checks read the candidate only)"
                ) from None
            raise
        except MemoryError:
            raise OutOfMemory(
                f"out of memory: the query needs more than the {self.heap_limit_mb} MB "
                "SQLite heap limit ([gates] sqlite_heap_limit_mb)") from None
        finally:
            self._deadline = float("inf")

    def all(self, sql: str, params: Sequence[Any] = (), *, timeout_ms: int | None = None
            ) -> list[tuple[Any, ...]]:
        with self.deadline(timeout_ms):
            return self.conn.execute(sql, tuple(params)).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] = (), *, timeout_ms: int | None = None
               ) -> Any:
        with self.deadline(timeout_ms):
            row = self.conn.execute(sql, tuple(params)).fetchone()
        return None if row is None else row[0]

    def single(self, sql: str, params: Sequence[Any] = (), *, timeout_ms: int | None = None
               ) -> Any:
        """The one value of a one-row query (None for no row); several rows are an error."""
        with self.deadline(timeout_ms):
            rows = self.conn.execute(sql, tuple(params)).fetchmany(2)
        if len(rows) > 1:
            raise MultipleRows("returned several rows; a check must return one number "
                               "(aggregate, or add LIMIT 1)")
        return rows[0][0] if rows else None

    def count_rows(self, sql: str, params: Sequence[Any] = (), *,
                   timeout_ms: int | None = None) -> int:
        """Run a query to its end, counting its rows without keeping them."""
        n = 0
        with self.deadline(timeout_ms):
            cur = self.conn.execute(sql, tuple(params))
            while batch := cur.fetchmany(512):
                n += len(batch)
        return n

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ReadOnlyDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
