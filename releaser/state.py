"""Releases and events in state.db: the record of what happened.

`events` is append-only (triggers refuse UPDATE and DELETE) so the history of
publishes, rejects, rollbacks and auto-reverts can never be rewritten.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import StoreIOError

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    inode INTEGER,
    mtime_ns INTEGER,
    source TEXT,
    note TEXT,
    created_at TEXT NOT NULL,
    published_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('good', 'bad', 'rejected', 'aborted')),
    status_reason TEXT,
    report TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    release_id INTEGER,
    from_release_id INTEGER,
    actor TEXT NOT NULL,
    reason TEXT,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_release ON events(release_id);
CREATE INDEX IF NOT EXISTS events_action ON events(action, outcome);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TABLE IF NOT EXISTS health_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    release_id INTEGER,
    ok INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    actor TEXT NOT NULL,
    reasons TEXT NOT NULL
);
-- monotonic totals that outlive the trimmed health_checks rows (metrics read them)
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# events that change which release is live
LIVE_ACTIONS = ("init", "publish", "rollback", "auto-revert")
LIVE_OUTCOMES = ("published", "ok", "recovered")
# counters rows "analysis:<name>:<outcome>" (names are TOML strings; the outcome has no ":")
ANALYSIS_COUNTER = "analysis:"
# how many health check rows to keep (the monitor writes one every interval)
HEALTH_CHECKS_KEPT = 2000


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Release:
    id: int
    sha256: str
    size: int
    inode: int | None
    mtime_ns: int | None
    source: str | None
    note: str | None
    created_at: str
    published_at: str | None
    status: str
    status_reason: str | None
    report: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Release:
        d = dict(row)
        d["report"] = json.loads(d["report"]) if d["report"] else None
        return cls(**d)

    def check_values(self) -> dict[str, float]:
        """The [[checks]] values recorded when this release passed its gates."""
        if not self.report:
            return {}
        return {
            c["name"]: c["observed"]
            for c in self.report.get("checks", [])
            if c.get("kind") == "check" and isinstance(c.get("observed"), int | float)
        }


@dataclass(frozen=True)
class Event:
    id: int
    at: str
    action: str
    release_id: int | None
    from_release_id: int | None
    actor: str
    reason: str | None
    outcome: str
    detail: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "action": self.action,
            "release_id": self.release_id,
            "from_release_id": self.from_release_id,
            "actor": self.actor,
            "reason": self.reason,
            "outcome": self.outcome,
            # e.g. {"analysis": {...}}: the queries, values and thresholds behind a revert
            "detail": self.detail,
        }


class StateDB:
    """state.db: WAL so the monitor and `status` can read while an operation writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreIOError(f"{path}: cannot open the state database: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

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
        cur = self.conn.execute(
            "INSERT INTO releases (sha256, size, inode, mtime_ns, source, note, created_at,"
            " status, status_reason, report) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (sha256, size, inode, mtime_ns, source, note, utcnow(), status, status_reason,
             json.dumps(report) if report is not None else None),
        )
        return int(cur.lastrowid or 0)

    def set_file_identity(self, release_id: int, inode: int, mtime_ns: int) -> None:
        self.conn.execute(
            "UPDATE releases SET inode=?, mtime_ns=? WHERE id=?", (inode, mtime_ns, release_id)
        )

    def set_status(self, release_id: int, status: str, reason: str | None = None) -> None:
        self.conn.execute(
            "UPDATE releases SET status=?, status_reason=? WHERE id=?", (status, reason, release_id)
        )

    def mark_published(self, release_id: int, at: str | None = None) -> None:
        self.conn.execute(
            "UPDATE releases SET published_at=? WHERE id=?", (at or utcnow(), release_id)
        )

    def release(self, release_id: int) -> Release | None:
        row = self.conn.execute("SELECT * FROM releases WHERE id=?", (release_id,)).fetchone()
        return Release.from_row(row) if row else None

    def releases(self, *, statuses: tuple[str, ...] | None = None) -> list[Release]:
        sql = "SELECT * FROM releases"
        params: tuple[Any, ...] = ()
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
            params = statuses
        rows = self.conn.execute(sql + " ORDER BY id DESC", params).fetchall()
        return [Release.from_row(r) for r in rows]

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
        cur = self.conn.execute(
            "INSERT INTO events (at, action, release_id, from_release_id, actor, reason, outcome,"
            " detail) VALUES (?,?,?,?,?,?,?,?)",
            (at or utcnow(), action, release_id, from_release_id, actor, reason, outcome,
             json.dumps(detail) if detail is not None else None),
        )
        return int(cur.lastrowid or 0)

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
        return Event(**d)

    def live_transitions(self, limit: int | None = None) -> list[Event]:
        """Events that made a release live, newest first.

        Filtered in SQL (indexed by action) so rejects, however many, cost nothing:
        rollback reads this and must not slow down as history grows."""
        sql = (f"SELECT * FROM events WHERE action IN ({','.join('?' * len(LIVE_ACTIONS))})"
               f" AND outcome IN ({','.join('?' * len(LIVE_OUTCOMES))}) ORDER BY id DESC")
        params: tuple[Any, ...] = (*LIVE_ACTIONS, *LIVE_OUTCOMES)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return [self._event(row) for row in self.conn.execute(sql, params).fetchall()]

    def auto_reverted_from(self, release_id: int) -> bool:
        """An auto-revert away from this release was settled (ok, no-target, refused);
        one that failed (nothing swapped, an I/O or permission error) is tried again."""
        return self.conn.execute(
            "SELECT 1 FROM events WHERE action='auto-revert' AND from_release_id=?"
            " AND outcome <> 'failed' LIMIT 1", (release_id,)).fetchone() is not None

    def count_events(self, action: str, outcomes: tuple[str, ...] | None = None) -> int:
        sql = "SELECT COUNT(*) FROM events WHERE action=?"
        params: tuple[Any, ...] = (action,)
        if outcomes:
            sql += f" AND outcome IN ({','.join('?' * len(outcomes))})"
            params += outcomes
        return int(self.conn.execute(sql, params).fetchone()[0])

    # -- health checks ----------------------------------------------------

    def add_health_check(
        self, *, release_id: int | None, ok: bool, duration_ms: float, actor: str,
        reasons: list[str],
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO health_checks (at, release_id, ok, duration_ms, actor, reasons)"
                " VALUES (?,?,?,?,?,?)",
                (utcnow(), release_id, int(ok), duration_ms, actor, json.dumps(reasons)),
            )
            conn.execute(
                "DELETE FROM health_checks WHERE id <= (SELECT MAX(id) FROM health_checks) - ?",
                (HEALTH_CHECKS_KEPT,),
            )
            names = ["health_checks_total"] + ([] if ok else ["health_check_failures_total"])
            for name in names:
                conn.execute(
                    "INSERT INTO counters (name, value) VALUES (?, 1)"
                    " ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,))

    def count_analysis(self, name: str, outcome: str) -> None:
        """One [[analysis.prometheus]] evaluation (publish's window or the monitor)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO counters (name, value) VALUES (?, 1)"
                " ON CONFLICT(name) DO UPDATE SET value = value + 1",
                (f"{ANALYSIS_COUNTER}{name}:{outcome}",))

    def analysis_counts(self) -> list[tuple[str, str, int]]:
        """(analysis name, outcome, total) for every evaluation counted so far."""
        rows = self.conn.execute(
            "SELECT name, value FROM counters WHERE name LIKE ? ORDER BY name",
            (ANALYSIS_COUNTER + "%",)).fetchall()
        out = []
        for row in rows:
            query_name, _, outcome = row["name"][len(ANALYSIS_COUNTER):].rpartition(":")
            out.append((query_name, outcome, int(row["value"])))
        return out

    def counter(self, name: str) -> int:
        """A total from the counters table (0 before its first increment)."""
        row = self.conn.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row["value"]) if row else 0

    def last_health_check(self) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM health_checks ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return {
            "at": row["at"],
            "release_id": row["release_id"],
            "ok": bool(row["ok"]),
            "duration_ms": row["duration_ms"],
            "actor": row["actor"],
            "reasons": json.loads(row["reasons"]),
        }

    def last_successful_health_check_at(self) -> str | None:
        row = self.conn.execute(
            "SELECT at FROM health_checks WHERE ok=1 ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return row["at"] if row else None
