"""Releases and events in state.db: the record of what happened.

`events` is append-only (triggers refuse UPDATE and DELETE) so the history of
publishes, rejects, rollbacks and auto-reverts can never be rewritten.

state.db is an index, not the only copy (issue 12): every change to a release
row or the events is also appended to the store's journal (journal.py) once it
is committed, and a changed release's manifest is rewritten beside its files
(manifest.py, through the store's `on_release` hook). A StateDB made with
`degraded` is an in-memory rebuild used while state.db is unusable: its changes
go to the journal marked degraded. Release ids are never reused: a new id is
above every id state.db, the store's files and manifests (`id_floor`) know.
The one exception to append-only is compaction (`[history] keep_events`): it first
records, in `compactions`, up to which event id it removes, and the trigger lets
only events at or below the newest such mark go; what they counted is kept in
`counters`.

Cost does not grow with history: the verbs ask for the rows they need (by id, by
index, with LIMIT); nothing loads every release or event except `releases --all`
and `history` without a limit.

Split by job: the tables and the read-only opening in state_schema.py, the row
values in records.py, counters, the health log and compaction in state_counters.py.
Readers (status, history, releases, diff, check, validate) open state.db with
`mode=ro` (readonly=True) and never write (state_schema.open_readonly).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import access, manifest
from .errors import StoreIOError, UsageError
from .journal import Journal, event_entry, new_uid, release_entry
from .rebuild import ensure_uid_column
from .records import Event, Release, utcnow
from .state_counters import CountersMixin
from .state_schema import (
    ANALYSIS_COUNTER,
    HEALTH_CHECKS_KEPT,
    LIVE_ACTIONS,
    LIVE_OUTCOMES,
    LIVE_WHERE,
    SCHEMA,
    open_readonly,
)

# names other modules import from here
__all__ = ["ANALYSIS_COUNTER", "HEALTH_CHECKS_KEPT", "LIVE_ACTIONS", "LIVE_OUTCOMES", "SCHEMA",
           "Event", "Release", "StateDB", "utcnow"]

log = logging.getLogger("releaser.state")


class StateDB(CountersMixin):
    """state.db: WAL so the monitor and `status` can read while an operation writes.

    timeout_s bounds every wait for another process's write transaction (statefile.py
    turns a timeout into one line naming the holder). readonly: mode=ro, for the
    read-only verbs (see the module docstring)."""

    def __init__(self, path: Path, *, timeout_s: float = 2.0, journal: Journal | None = None,
                 on_release: Callable[[dict[str, Any]], None] | None = None,
                 id_floor: Callable[[], int] | None = None,
                 degraded: str | None = None, readonly: bool = False) -> None:
        self.path = path
        self.journal = journal
        self.on_release = on_release
        self.id_floor = id_floor
        self.degraded = degraded  # why state.db is unusable: this is an in-memory rebuild
        self.readonly = readonly
        self._pending: list[dict[str, Any]] = []
        self._dirty: set[int] = set()
        self._live_index: bool | None = None  # has events_live (see _live_sql)
        if readonly and degraded is None:
            self.conn = open_readonly(path, timeout_s)
            self._has_uid = "uid" in {
                r[1] for r in self.conn.execute("PRAGMA table_info(events)")}
            return
        created = degraded is None and not path.exists()
        try:
            self.conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            if degraded is None and (created or os.stat(path).st_uid == os.geteuid()):
                # 0664 whatever the umask; SQLite gives -wal/-shm/-journal this mode
                access.set_mode(path, access.SHARED_FILE_MODE)
            with access.group_writable_umask():  # SQLite creates -wal/-shm here
                if degraded is None:
                    self.conn.execute("PRAGMA journal_mode=WAL")
                    self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            if "readonly" in str(exc):
                raise UsageError(
                    f"{path}: permission denied: user {access.user_name()} cannot write the "
                    f"state database; publishers must be in group "
                    f"{access.group_of(path.parent)} ({access.GUIDE})") from None
            raise StoreIOError(f"{path}: cannot open the state database: {exc}") from exc
        try:
            ensure_uid_column(self.conn)
        except sqlite3.OperationalError:
            pass  # busy or read-only: events keep their implicit uid (db-<id>) for now
        self._has_uid = "uid" in {r[1] for r in self.conn.execute("PRAGMA table_info(events)")}

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._pending.clear()
            self._dirty.clear()
            raise
        else:
            self.conn.execute("COMMIT")
            self._flush()

    # -- the journal and the manifests ---------------------------------------

    def _changed(self, entry: dict[str, Any], release_id: int | None = None) -> None:
        self._pending.append(entry)
        if release_id is not None:
            self._dirty.add(release_id)
        if not self.conn.in_transaction:  # autocommit statement: it is committed now
            self._flush()

    def _flush(self) -> None:
        pending, dirty = self._pending, self._dirty
        self._pending, self._dirty = [], set()
        if self.journal is not None and pending:
            try:
                self.journal.append(pending, degraded=self.degraded is not None)
            except OSError as exc:
                if self.degraded is not None:
                    raise StoreIOError(f"{self.journal.path}: cannot append to the journal "
                                       f"({exc.strerror}) and state.db is unusable") from None
                # state.db has it; the next locked command appends what the journal missed
                log.warning("%s: cannot append to the journal: %s", self.journal.path, exc)
        for rid in sorted(dirty):
            self.refresh_manifest(rid)

    def manifest_doc(self, release_id: int) -> dict[str, Any] | None:
        """The manifest document for a release, from its row (None: no such release)."""
        row = self.conn.execute("SELECT * FROM releases WHERE id=?", (release_id,)).fetchone()
        return manifest.from_row(dict(row), utcnow()) if row else None

    def refresh_manifest(self, release_id: int) -> None:
        """Rewrite the release's manifests beside its files (best effort: fsck reports)."""
        if self.on_release is None:
            return
        doc = self.manifest_doc(release_id)
        if doc is None:
            return
        try:
            self.on_release(doc)
        except OSError as exc:
            log.warning("release %s: cannot write its manifest: %s", release_id, exc)

    # -- releases ---------------------------------------------------------

    def add_release(
        self,
        *,
        sha256: str,
        size: int,
        source: str | None,
        note: str | None,
        status: str,
        report: dict[str, Any] | None,
        inode: int | None = None,
        mtime_ns: int | None = None,
        status_reason: str | None = None,
    ) -> int:
        rid = self._next_release_id()
        created = utcnow()
        self.conn.execute(
            "INSERT INTO releases (id, sha256, size, inode, mtime_ns, source, note, created_at,"
            " status, status_reason, report) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (rid, sha256, size, inode, mtime_ns, source, note, created, status, status_reason,
             json.dumps(report) if report is not None else None),
        )
        self._changed(release_entry(
            rid, sha256=sha256, size=size, inode=inode, mtime_ns=mtime_ns, source=source,
            note=note, created_at=created, published_at=None, status=status,
            status_reason=status_reason, report=report, updated_at=created), rid)
        return rid

    def _next_release_id(self) -> int:
        """Above state.db's sequence and every id the store's files and manifests carry."""
        seq = self.conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name='releases'").fetchone()
        top = self.conn.execute("SELECT MAX(id) FROM releases").fetchone()[0]
        floor = self.id_floor() if self.id_floor is not None else 0
        return max(seq[0] if seq else 0, top or 0, floor) + 1

    def set_file_identity(self, release_id: int, inode: int, mtime_ns: int) -> None:
        self.conn.execute(
            "UPDATE releases SET inode=?, mtime_ns=? WHERE id=?", (inode, mtime_ns, release_id)
        )
        # journalled, but no manifest rewrite of its own (two fsyncs per folder): the
        # manifest takes the identity at the next status change; a stale one costs a
        # degraded rollback one sha256, never a wrong answer
        self._changed(release_entry(release_id, inode=inode, mtime_ns=mtime_ns,
                                    updated_at=utcnow()))

    def set_status(self, release_id: int, status: str, reason: str | None = None) -> None:
        self.conn.execute(
            "UPDATE releases SET status=?, status_reason=? WHERE id=?", (status, reason, release_id)
        )
        self._changed(release_entry(release_id, status=status, status_reason=reason,
                                    updated_at=utcnow()), release_id)

    def mark_published(self, release_id: int, at: str | None = None) -> None:
        at = at or utcnow()
        self.conn.execute("UPDATE releases SET published_at=? WHERE id=?", (at, release_id))
        self._changed(release_entry(release_id, published_at=at, updated_at=utcnow()),
                      release_id)

    def release(self, release_id: int) -> Release | None:
        row = self.conn.execute("SELECT * FROM releases WHERE id=?", (release_id,)).fetchone()
        return Release.from_row(row) if row else None

    def releases(self, *, statuses: tuple[str, ...] | None = None,
                 limit: int | None = None) -> list[Release]:
        """Newest first; limit: only that many (the newest)."""
        sql = "SELECT * FROM releases"
        params: tuple[Any, ...] = ()
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            params = statuses
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return [Release.from_row(r) for r in self.conn.execute(sql, params).fetchall()]

    def unpublished_good(self) -> list[Release]:
        """Releases recorded good but never marked published (an interrupted publish)."""
        rows = self.conn.execute(
            "SELECT * FROM releases WHERE status = 'good' AND published_at IS NULL"
            " ORDER BY id").fetchall()
        return [Release.from_row(r) for r in rows]

    def newest_published_good(self, n: int) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT id FROM releases WHERE status = 'good' AND published_at IS NOT NULL"
            " ORDER BY id DESC LIMIT ?", (n,))]

    # -- events -----------------------------------------------------------

    def add_event(
        self,
        action: str,
        *,
        actor: str,
        outcome: str,
        release_id: int | None = None,
        from_release_id: int | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
        at: str | None = None,
    ) -> int:
        row = {"at": at or utcnow(), "action": action, "release_id": release_id,
               "from_release_id": from_release_id, "actor": actor, "reason": reason,
               "outcome": outcome, "detail": detail}
        uid = new_uid()
        values = (row["at"], action, release_id, from_release_id, actor, reason, outcome,
                  json.dumps(detail) if detail is not None else None)
        if self._has_uid:
            cur = self.conn.execute(
                "INSERT INTO events (at, action, release_id, from_release_id, actor, reason,"
                " outcome, detail, uid) VALUES (?,?,?,?,?,?,?,?,?)", (*values, uid))
        else:
            cur = self.conn.execute(
                "INSERT INTO events (at, action, release_id, from_release_id, actor, reason,"
                " outcome, detail) VALUES (?,?,?,?,?,?,?,?)", values)
        row["id"] = int(cur.lastrowid or 0)
        if not self._has_uid:
            uid = f"db-{row['id']}"
        self._changed(event_entry(row, uid))
        return row["id"]

    def events(self, limit: int | None = None) -> list[Event]:
        sql = "SELECT * FROM events ORDER BY id DESC"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        return [self._event(row) for row in self.conn.execute(sql, params).fetchall()]

    @staticmethod
    def _event(row: sqlite3.Row) -> Event:
        d = dict(row)
        d["detail"] = json.loads(d["detail"]) if d["detail"] else None
        d.setdefault("uid", None)
        return Event(**d)

    def _live_sql(self) -> str:
        """Live transitions newest first, read in id order from the partial index
        events_live (no sort of every publish), when this state.db has it."""
        if self._live_index is None:
            self._live_index = self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='index' AND name='events_live'"
            ).fetchone() is not None
        hint = " INDEXED BY events_live" if self._live_index else ""
        return f"SELECT * FROM events{hint} WHERE {LIVE_WHERE} ORDER BY id DESC"

    def iter_live_transitions(self) -> Iterator[Event]:
        """live_transitions, newest first, read lazily: a caller that stops early
        (previous_release, nearly always at the first or second) reads no more."""
        cur = self.conn.execute(self._live_sql())
        try:
            while rows := cur.fetchmany(16):
                for row in rows:
                    yield self._event(row)
        finally:
            cur.close()

    def live_transitions(self, limit: int | None = None) -> list[Event]:
        """Events that made a release live, newest first.

        Filtered in SQL (the partial index events_live) so rejects, however many, cost
        nothing: rollback reads this and must not slow down as history grows."""
        sql = self._live_sql()
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        return [self._event(row) for row in self.conn.execute(sql, params).fetchall()]

    def named_by_live_transitions(self, ids: set[int]) -> set[int]:
        """Those of ids some live transition made live (by the events_release index)."""
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        return {r[0] for r in self.conn.execute(
            f"SELECT DISTINCT release_id FROM events WHERE release_id IN ({marks})"
            f" AND {LIVE_WHERE}", tuple(sorted(ids)))}

    def release_status(self, release_id: int) -> str | None:
        """A release's status alone (no report read or decoded)."""
        row = self.conn.execute("SELECT status FROM releases WHERE id=?",
                                (release_id,)).fetchone()
        return row[0] if row else None

    def auto_reverted_from(self, release_id: int) -> bool:
        """An auto-revert away from this release was settled (ok, no-target, refused);
        one that failed (nothing swapped, an I/O or permission error) is tried again."""
        return self.conn.execute(
            "SELECT 1 FROM events WHERE action='auto-revert' AND from_release_id=?"
            " AND outcome <> 'failed' LIMIT 1", (release_id,)).fetchone() is not None
