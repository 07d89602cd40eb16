"""Counters, the health log and compaction: the totals that outlive trimmed rows.

A mixin of StateDB (state.py), on its connection. Counters are monotonic: events
removed by compaction (`[history] keep_events`) and trimmed health check rows are
counted in `counters` first, so metrics never go backwards. Compaction records in
`compactions` up to which event id it removes before removing anything; the
trigger on events lets only events at or below the newest such mark go.

count_events costs the same at any history size: events up to `events_folded_through`
are totalled in `events:<action>:<outcome>` counters (fold_event_totals, by a writer
every FOLD_EVERY events and before every compaction), so only the newer ones are
counted row by row, by id range. `compacted:<action>:<outcome>` holds what a
compaction removed before it was folded (stores from before folding, and state.db
rebuilt from the journal's compaction and checkpoint lines); the two never overlap.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from typing import Any

from .records import utcnow
from .state_schema import ANALYSIS_COUNTER, HEALTH_CHECKS_KEPT

# the counters row holding the newest event id the events:* totals include
FOLDED_THROUGH = "events_folded_through"
# a writer folds the newer events into the totals once there are this many
FOLD_EVERY = 256


class CountersMixin:
    conn: sqlite3.Connection

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _changed(self, entry: dict[str, Any], release_id: int | None = None) -> None:
        raise NotImplementedError

    def count_events(self, action: str, outcomes: tuple[str, ...] | None = None) -> int:
        """Every event of action (with one of outcomes) ever recorded, compacted or not."""
        through = self.counter(FOLDED_THROUGH)
        sql = "SELECT COUNT(*) FROM events WHERE id > ? AND +action = ?"
        params: tuple[Any, ...] = (through, action)
        if outcomes:
            sql += f" AND +outcome IN ({','.join('?' * len(outcomes))})"
            params += outcomes
        n = int(self.conn.execute(sql, params).fetchone()[0])  # by rowid: the unfolded
        for prefix in ("events", "compacted"):
            if outcomes:
                names = [f"{prefix}:{action}:{o}" for o in outcomes]
                row = self.conn.execute(
                    f"SELECT COALESCE(SUM(value), 0) FROM counters WHERE name IN "
                    f"({','.join('?' * len(names))})", names).fetchone()
            else:
                row = self.conn.execute(
                    "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name LIKE ?",
                    (f"{prefix}:{action}:%",)).fetchone()
            n += int(row[0])
        return n

    def fold_event_totals(self, min_new: int = FOLD_EVERY) -> int:
        """Add the events after events_folded_through to the events:* totals, when there
        are at least min_new of them (a writer, in or out of a transaction). Cost: the
        new events, by id range. Returns how many were folded."""
        through = self.counter(FOLDED_THROUGH)
        newest = self.conn.execute("SELECT MAX(id) FROM events").fetchone()[0] or 0
        if newest <= through or newest - through < min_new:
            return 0
        if not self.conn.in_transaction:
            with self.transaction():
                return self.fold_event_totals(min_new)
        folded = 0
        for action, outcome, n in self.conn.execute(
                "SELECT action, outcome, COUNT(*) FROM events WHERE id > ? AND id <= ?"
                " GROUP BY action, outcome", (through, newest)).fetchall():
            folded += n
            self.conn.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name)"
                " DO UPDATE SET value = value + excluded.value",
                (f"events:{action}:{outcome}", n))
        self.conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name)"
            " DO UPDATE SET value = excluded.value", (FOLDED_THROUGH, newest))
        return folded

    def compact(self, keep_events: int, on_disk: set[int]) -> tuple[int, int]:
        """Remove all but the newest keep_events events, and release rows no kept event
        names that are older than every kept event's release and not on disk.
        Their counts go into `counters` first. Returns (events, releases) removed.
        Journalled as one compaction line (rebuild.collect drops the same rows), so
        the journal and a state.db rebuilt from it keep the same record and totals.
        Cost: the rows removed (by id), so it stays flat when run after each publish."""
        if keep_events <= 0:
            return 0, 0
        with self.transaction() as conn:
            newest = conn.execute("SELECT MAX(id) FROM events").fetchone()[0] or 0
            through = newest - keep_events
            oldest = conn.execute("SELECT MIN(id) FROM events").fetchone()[0]
            if oldest is None or through < oldest:
                return 0, 0
            # every event is in the events:* totals before any goes, so the metrics
            # keep counting it; the journal line carries the removed counts (a
            # rebuild has no totals of its own: they become compacted:* there)
            self.fold_event_totals(min_new=1)
            counts: dict[str, int] = {}
            for action, outcome, n in conn.execute(
                    "SELECT action, outcome, COUNT(*) FROM events WHERE id <= ?"
                    " GROUP BY action, outcome", (through,)).fetchall():
                counts[f"{action}:{outcome}"] = n
            conn.execute("INSERT INTO compactions (at, through_event_id, events_removed,"
                         " releases_removed) VALUES (?, ?, 0, 0)", (utcnow(), through))
            # the journal's names of the events removed: a rebuild drops exactly these
            has_uid = any(r[1] == "uid" for r in conn.execute("PRAGMA table_info(events)"))
            uid_sql = "COALESCE(uid, 'db-' || id)" if has_uid else "'db-' || id"
            removed = [r[0] for r in conn.execute(
                f"SELECT {uid_sql} FROM events WHERE id <= ? ORDER BY id", (through,))]
            events = conn.execute("DELETE FROM events WHERE id <= ?", (through,)).rowcount
            floor = conn.execute(
                "SELECT MIN(m) FROM (SELECT MIN(release_id) AS m FROM events UNION ALL "
                "SELECT MIN(from_release_id) FROM events)").fetchone()[0]
            releases = 0
            keep: list[int] = []
            if floor is not None:
                keep = sorted(r for r in on_disk if r < floor)
                releases = conn.execute(
                    f"DELETE FROM releases WHERE id < ? AND id NOT IN "
                    f"({','.join('?' * len(keep)) or 'NULL'})", (floor, *keep)).rowcount
            conn.execute("UPDATE compactions SET events_removed = ?, releases_removed = ?"
                         " WHERE id = last_insert_rowid()", (events, releases))
            self._changed({
                "t": "compaction", "at": utcnow(), "through_event_id": through,
                "removed_uids": removed,
                "release_floor": floor, "kept_below_floor": keep, "counts": counts,
                "events_removed": events, "releases_removed": releases})
        return events, releases

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

