"""Rebuild the record (releases and events) from the journal and the manifests.

Used three ways, all on a sqlite3 connection with state.SCHEMA:
- `fsck --repair`: a new state.db when the old one is missing, empty or damaged;
- degraded mode: an in-memory state.db, so rollback, status and history work
  while state.db is unusable (their changes go to the journal, see state.py);
- `import_degraded`: journal lines written while state.db was unusable are
  added to it once it can be written again.

Invariants:
- history comes back in journal order, up to the last whole journalled line;
  an event is identified by its uid and never imported twice;
- a release's fields are the journal's upserts in order, then its manifest's
  status/published time/identity where the manifest is newer (a journal cut
  short loses nothing a manifest still says);
- release ids are never reused: the id sequence is set above every id seen in
  the journal, the manifests and the release files;
- a compaction line drops what `[history] keep_events` removed from state.db, and
  its counts (and a checkpoint's) come back as the `counters` the metrics read, so
  a rebuild after compaction or a journal rotation has the same record and totals.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

RELEASE_COLUMNS = ("id", "sha256", "size", "inode", "mtime_ns", "source", "note", "created_at",
                   "published_at", "status", "status_reason", "report")
EVENT_COLUMNS = ("at", "action", "release_id", "from_release_id", "actor", "reason", "outcome",
                 "detail", "uid")
STATUSES = ("good", "bad", "rejected", "aborted")


@dataclass
class Rebuilt:
    """The history recovered from the journal and the manifests."""

    releases: dict[int, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    from_manifests: list[int] = field(default_factory=list)  # releases only a manifest knew
    placeholders: list[int] = field(default_factory=list)  # releases only events name
    # "compacted:<action>:<outcome>" totals of the events compaction removed (counters)
    counters: dict[str, int] = field(default_factory=dict)


def ensure_uid_column(conn: sqlite3.Connection) -> None:
    """events.uid (the journal's event identity); added to state.db files made before it."""
    cols = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    if "uid" not in cols:
        conn.execute("ALTER TABLE events ADD COLUMN uid TEXT")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_uid ON events(uid)")


def collect(entries: list[dict[str, Any]], manifests: dict[int, dict[str, Any]],
            file_ids: set[int] | None = None) -> Rebuilt:
    """Merge journal entries (oldest first) and manifests into release rows and events."""
    out = Rebuilt()
    seen: set[str] = set()
    for entry in entries:
        if entry.get("t") == "release" and isinstance(entry.get("id"), int):
            row = out.releases.setdefault(entry["id"], {"id": entry["id"]})
            for key, value in entry.items():
                if key in RELEASE_COLUMNS and key != "id":
                    row[key] = value
            if entry.get("updated_at"):
                row["_updated_at"] = entry["updated_at"]
        elif entry.get("t") == "event" and isinstance(entry.get("uid"), str):
            if entry["uid"] in seen or not entry.get("action") or not entry.get("outcome"):
                continue
            seen.add(entry["uid"])
            out.events.append(entry)
        elif entry.get("t") == "compaction":
            _apply_compaction(out, entry)
        elif entry.get("t") == "checkpoint" and isinstance(entry.get("counters"), dict):
            out.counters = {str(k): int(v) for k, v in entry["counters"].items()}
    for rid, doc in manifests.items():
        row = out.releases.get(rid)
        if row is None:
            out.from_manifests.append(rid)
            row = out.releases.setdefault(rid, {"id": rid})
        newer = str(doc.get("updated_at") or "") > str(row.get("_updated_at") or "")
        for key in ("sha256", "size", "source", "note", "created_at"):
            if row.get(key) is None and doc.get(key) is not None:
                row[key] = doc[key]
        for key in ("published_at", "status", "status_reason", "inode", "mtime_ns"):
            if (newer or row.get(key) is None) and doc.get(key) is not None:
                row[key] = doc[key]
        if row.get("report") is None and doc.get("check_values"):
            row["report"] = {"checks": [
                {"name": k, "kind": "check", "observed": v}
                for k, v in doc["check_values"].items()]}
    for event in out.events:
        for key in ("release_id", "from_release_id"):
            rid = event.get(key)
            if isinstance(rid, int) and rid not in out.releases:
                out.placeholders.append(rid)
                out.releases[rid] = {
                    "id": rid, "sha256": "", "size": 0, "created_at": event["at"],
                    "status": "rejected" if event["action"] == "reject" else "aborted",
                    "status_reason": "record lost; rebuilt from the journal's events"}
    for rid in file_ids or ():
        if rid not in out.releases:  # a file with neither manifest nor journal line
            out.placeholders.append(rid)
            out.releases[rid] = {
                "id": rid, "sha256": "", "size": 0, "created_at": "unknown",
                "status": "aborted",
                "status_reason": "file found without a manifest or a journal record"}
    return out


def _apply_compaction(out: Rebuilt, entry: dict[str, Any]) -> None:
    """Drop what a `[history] keep_events` compaction removed from state.db: the events
    it names (by uid), and the release rows below its floor not on disk."""
    removed = entry.get("removed_uids")
    if isinstance(removed, list):
        gone = set(removed)
        out.events = [e for e in out.events if e["uid"] not in gone]
    elif isinstance(entry.get("through_event_id"), int):
        through = entry["through_event_id"]
        out.events = [e for e in out.events
                      if not (isinstance(e.get("id"), int) and e["id"] <= through)]
    floor = entry.get("release_floor")
    if isinstance(floor, int):
        kept = set(entry.get("kept_below_floor") or ())
        for rid in [r for r in out.releases if r < floor and r not in kept]:
            del out.releases[rid]
    for name, n in (entry.get("counts") or {}).items():
        key = f"compacted:{name}"
        out.counters[key] = out.counters.get(key, 0) + int(n)


def _release_values(row: dict[str, Any]) -> tuple[Any, ...]:
    report = row.get("report")
    status = row.get("status") if row.get("status") in STATUSES else "aborted"
    return (
        row["id"], row.get("sha256") or "", int(row.get("size") or 0), row.get("inode"),
        row.get("mtime_ns"), row.get("source"), row.get("note"),
        row.get("created_at") or row.get("published_at") or "unknown", row.get("published_at"),
        status, row.get("status_reason"),
        json.dumps(report) if isinstance(report, dict) else report,
    )


def _event_values(event: dict[str, Any]) -> tuple[Any, ...]:
    detail = event.get("detail")
    return (event["at"], event["action"], event.get("release_id"), event.get("from_release_id"),
            event.get("actor") or "unknown", event.get("reason"), event["outcome"],
            json.dumps(detail) if detail is not None else None, event["uid"])


def write_into(conn: sqlite3.Connection, rebuilt: Rebuilt, id_floor: int = 0) -> None:
    """Fill an empty state.db (state.SCHEMA applied) with the rebuilt record."""
    ensure_uid_column(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            f"INSERT INTO releases ({','.join(RELEASE_COLUMNS)}) VALUES "
            f"({','.join('?' * len(RELEASE_COLUMNS))})",
            [_release_values(r) for _, r in sorted(rebuilt.releases.items())])
        conn.executemany(
            f"INSERT INTO events ({','.join(EVENT_COLUMNS)}) VALUES "
            f"({','.join('?' * len(EVENT_COLUMNS))})",
            [_event_values(e) for e in rebuilt.events])
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name)"
            " DO UPDATE SET value = value + excluded.value", sorted(rebuilt.counters.items()))
        set_id_floor(conn, max([id_floor, *rebuilt.releases]))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def set_id_floor(conn: sqlite3.Connection, floor: int) -> None:
    """The next AUTOINCREMENT release id is above floor."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='releases'").fetchone()
    if row is None:
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('releases', ?)", (floor,))
    elif row[0] < floor:
        conn.execute("UPDATE sqlite_sequence SET seq=? WHERE name='releases'", (floor,))


def import_degraded(conn: sqlite3.Connection, entries: list[dict[str, Any]]) -> tuple[int, int]:
    """Add journal lines marked degraded to a working state.db (caller: in a transaction).

    Returns (events added, releases updated)."""
    ensure_uid_column(conn)
    events = releases = 0
    for entry in entries:
        if not entry.get("degraded"):
            continue
        if entry.get("t") == "event" and isinstance(entry.get("uid"), str):
            if conn.execute("SELECT 1 FROM events WHERE uid=?", (entry["uid"],)).fetchone():
                continue
            conn.execute(
                f"INSERT INTO events ({','.join(EVENT_COLUMNS)}) VALUES "
                f"({','.join('?' * len(EVENT_COLUMNS))})", _event_values(entry))
            events += 1
        elif entry.get("t") == "release" and isinstance(entry.get("id"), int):
            fields = {k: v for k, v in entry.items() if k in RELEASE_COLUMNS and k != "id"}
            if "report" in fields and isinstance(fields["report"], dict):
                fields["report"] = json.dumps(fields["report"])
            if not fields:
                continue
            if conn.execute("SELECT 1 FROM releases WHERE id=?", (entry["id"],)).fetchone():
                sets = ", ".join(f"{k}=?" for k in fields)
                conn.execute(f"UPDATE releases SET {sets} WHERE id=?",
                             (*fields.values(), entry["id"]))
            else:
                conn.execute(
                    f"INSERT INTO releases ({','.join(RELEASE_COLUMNS)}) VALUES "
                    f"({','.join('?' * len(RELEASE_COLUMNS))})",
                    _release_values({"id": entry["id"], **fields}))
            releases += 1
    return events, releases
