"""Open state.db for a command, or say exactly why it cannot be used; degraded mode.

state.db is an index over the journal and the manifests (journal.py,
manifest.py). It is *unusable* when it is missing or empty while the store has
releases, is not a SQLite database or is damaged, or (for a command that writes)
another process holds its write lock past a short wait. Then:
- `rollback`, the monitor's auto-revert, `status`, `history`, `releases` and
  `check` run *degraded*: on an in-memory state.db rebuilt from the journal and
  the manifests; whatever they change is appended to the journal (marked
  degraded) and to the manifests, and they warn that state.db needs
  `releaser fsck --repair`;
- every other command stops with one line naming the problem and the fix.

Invariants:
- a missing or empty state.db is never silently recreated over an existing
  record (that reused release ids); only a store with no record gets a new one;
- waits on a busy state.db are bounded (BUSY_TIMEOUT_S, ROLLBACK_BUSY_S) and
  the error names the holder when /proc shows it;
- state.db and the journal are brought back in step under the store lock
  (`sync`): journal lines written degraded are imported once, events state.db
  committed but the journal missed (a crash between the two) are appended;
  sync reads only the journal lines after state.db's journal_mark, so its cost
  does not grow with the journal.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from . import holders, manifest, rebuild
from .db import SQLITE_MAGIC
from .errors import LockBusy, StoreIOError
from .journal import Journal, event_entry, new_uid, release_entry
from .state import StateDB
from .store import Store

log = logging.getLogger("releaser.state")

# a writer waits this long for another process's write transaction on state.db
BUSY_TIMEOUT_S = 2.0
# rollback and auto-revert: go on without state.db after this long
ROLLBACK_BUSY_S = 0.3
REPAIR_HINT = "run `releaser fsck --repair`"
# sync moves state.db's journal_mark on once it has read this much journal past it
MARK_EVERY = 32 * 1024


class StateUnusable(StoreIOError):
    """state.db cannot be used: kind is missing, empty, damaged or busy."""

    def __init__(self, path: Path, kind: str, detail: str, hint: str = REPAIR_HINT) -> None:
        super().__init__(f"{path}: {detail}; {hint}")
        self.kind = kind
        self.detail = detail


class StateBusy(StateUnusable, LockBusy):
    """Another process holds state.db's write lock (exit 3, like the store lock)."""

    exit_code = LockBusy.exit_code


def has_record(store: Store) -> bool:
    """The store holds releases (a journal, a manifest or a release file) besides state.db."""
    if Journal(store.root).exists():
        return True
    for folder in store_folders(store):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        if any(n.startswith("release-") for n in names):
            return True
    return False


def store_folders(store: Store) -> list[Path]:
    return [store.slot_dir(s) for s in ("blue", "green")] + [store.archive_dir]


def diagnose(store: Store) -> StateUnusable | None:
    """Why state.db cannot be opened at all (cheap: stat and 16 bytes), or None."""
    path = store.state_path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if has_record(store):
            return StateUnusable(path, "missing", "state.db is missing although the store has "
                                 "releases")
        return None
    except OSError as exc:
        return StateUnusable(path, "damaged", f"cannot stat state.db: {exc.strerror}")
    if size == 0:
        if has_record(store):
            return StateUnusable(path, "empty", "state.db is empty (0 bytes) although the "
                                 "store has releases")
        return None
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        return StateUnusable(path, "damaged", f"cannot read state.db: {exc.strerror}")
    if magic != SQLITE_MAGIC:
        return StateUnusable(path, "damaged", "state.db is not a SQLite database (damaged)")
    return None


def busy_error(path: Path, waited_s: float) -> StateBusy:
    return StateBusy(path, "busy",
                     f"state.db is busy: {holders.describe(path)} holds a write transaction "
                     f"(waited {waited_s:g} s)",
                     hint="retry when it has finished, or stop that process")


def classify(path: Path, exc: sqlite3.Error, waited_s: float) -> StateUnusable:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return busy_error(path, waited_s)
    return StateUnusable(path, "damaged", f"state.db is damaged ({text})")


def open_state(store: Store, *, write: bool = False, busy_s: float = BUSY_TIMEOUT_S,
               readonly: bool = False, **hooks: Any) -> StateDB:
    """The real state.db, checked usable; raises StateUnusable.

    write: also make sure this process can take the write lock within busy_s.
    A cheap probe reads the newest row of each table (a page-level fault
    elsewhere surfaces later as sqlite3.DatabaseError, see is_damage)."""
    problem = diagnose(store)
    if problem is not None:
        raise problem
    path = store.state_path
    try:
        state = StateDB(path, timeout_s=busy_s, readonly=readonly, **hooks)
    except sqlite3.Error as exc:
        raise classify(path, exc, busy_s) from None
    except StoreIOError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, sqlite3.Error):
            raise classify(path, cause, busy_s) from None
        raise StateUnusable(path, "damaged", exc.message) from None
    try:
        state.conn.execute("SELECT * FROM releases ORDER BY id DESC LIMIT 1").fetchall()
        state.conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT 1").fetchall()
        if write:
            state.conn.execute("BEGIN IMMEDIATE")
            state.conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        state.close()
        raise classify(path, exc, busy_s) from None
    return state


def is_damage(exc: BaseException) -> bool:
    """A SQLite error that means state.db is damaged (not busy, not a bug of ours)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    text = str(exc)
    return ("malformed" in text or "not a database" in text or "disk I/O" in text
            or "corrupt" in text)


def open_degraded(store: Store, why: StateUnusable, **hooks: Any) -> StateDB:
    """An in-memory state.db rebuilt from the journal and the manifests.

    Changes made through it go to the journal (degraded) and the manifests."""
    journal = Journal(store.root)
    read = journal.read()
    manifests, _ = manifest.scan(store_folders(store))
    state = StateDB(Path(":memory:"), degraded=why.message, **hooks)
    rebuilt = rebuild.collect(read.entries, manifests, file_ids(store))
    rebuild.write_into(state.conn, rebuilt, highest_file_id(store))
    log.warning("%s; working from the journal and the manifests (changes go to the "
                "journal; `releaser fsck --repair` brings state.db up to date)", why.message)
    return state


def file_ids(store: Store) -> set[int]:
    ids: set[int] = set()
    for slot in ("blue", "green"):
        ids.update(store.slot_files(slot))
    ids.update(store.archived_ids())
    return ids


def highest_file_id(store: Store) -> int:
    """The highest release id any file or manifest in the store carries (0: none)."""
    best = 0
    for folder in store_folders(store):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith("release-"):
                stem = name.split(".", 1)[0]
                tail = stem[len("release-"):]
                if tail.isdigit():
                    best = max(best, int(tail))
    return best


# -- bringing state.db and the journal in step (under the store lock) ----------------


def sync(state: StateDB, store: Store) -> list[str]:
    """Import degraded journal lines; append what the journal missed; first-run bootstrap.

    Returns notes for the log. Caller holds the store lock; state is the real state.db."""
    journal = Journal(store.root)
    notes: list[str] = []
    conn = state.conn
    rebuild.ensure_uid_column(conn)
    if not journal.exists():
        notes += _bootstrap(state, store, journal)
        return notes
    if journal.degraded_pending():
        entries = journal.read().entries
        conn.execute("BEGIN IMMEDIATE")
        try:
            events, releases = rebuild.import_degraded(conn, entries)
            rebuild.set_id_floor(conn, highest_file_id(store))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        journal.clear_degraded()
        if events or releases:
            notes.append(f"imported {events} event(s) and {releases} release change(s) "
                         "journalled while state.db was unusable")
    missed = _events_after_journal(conn, journal)
    if missed:
        rids = {r for e in missed for r in (e["release_id"], e["from_release_id"]) if r}
        journal.append([*(_release_snapshot(conn, rid) for rid in sorted(rids)),
                        *(event_entry(e, _uid(e)) for e in missed)])
        notes.append(f"journalled {len(missed)} event(s) state.db had but the journal missed")
    state.fold_event_totals()  # every FOLD_EVERY events: metrics count in constant time
    return notes


def _uid(row: dict[str, Any]) -> str:
    return row.get("uid") or f"db-{row['id']}"


def _events_after_journal(conn: sqlite3.Connection, journal: Journal) -> list[dict[str, Any]]:
    """state.db's events after the newest one the journal holds.

    Reads only the journal lines after state.db's journal_mark (at most MARK_EVERY
    bytes plus what the last command appended), whatever the journal's size; with no
    usable mark (a new or rebuilt state.db, a rotated or cut journal) its tail."""
    mark = conn.execute("SELECT byte_offset, before_sha256, event_id FROM journal_mark"
                        " WHERE id = 1").fetchone()
    after = journal.newest_event_after(mark[0], mark[1]) if mark is not None else None
    if after is None:
        last, end, end_sha = journal.newest_event_in_tail()
        marked_id = None
    else:
        last, end, end_sha = after
        marked_id = mark[2]
    event_id = _event_id(conn, str(last["uid"])) if last is not None else marked_id
    if event_id is None:
        # no event to go by, or the journal is ahead (degraded lines): imported above,
        # or fsck's job
        return []
    if after is None or end - mark[0] >= MARK_EVERY:
        conn.execute("INSERT OR REPLACE INTO journal_mark (id, byte_offset, before_sha256,"
                     " event_id) VALUES (1, ?, ?, ?)", (end, end_sha, event_id))
    return [dict(r) for r in conn.execute(
        "SELECT * FROM events WHERE id > ? ORDER BY id", (event_id,)).fetchall()]


def _event_id(conn: sqlite3.Connection, uid: str) -> int | None:
    """state.db's id of the event the journal calls uid (None: not in state.db)."""
    row = conn.execute("SELECT id FROM events WHERE uid=?", (uid,)).fetchone()
    if row is None and uid.startswith("db-") and uid[3:].isdigit():
        row = conn.execute("SELECT id FROM events WHERE id=? AND uid IS NULL",
                           (int(uid[3:]),)).fetchone()
    return row[0] if row is not None else None


def _release_snapshot(conn: sqlite3.Connection, rid: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM releases WHERE id=?", (rid,)).fetchone()
    if row is None:
        return release_entry(rid)
    d = dict(row)
    d.pop("id")
    if d.get("report"):
        d["report"] = json.loads(d["report"])
    return release_entry(rid, **d)


def _bootstrap(state: StateDB, store: Store, journal: Journal) -> list[str]:
    """A store made before the journal: journal its whole record, write its manifests."""
    conn = state.conn
    releases = [r[0] for r in conn.execute("SELECT id FROM releases ORDER BY id")]
    events = [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id").fetchall()]
    if not releases and not events:
        return []
    journal.append([*(_release_snapshot(conn, rid) for rid in releases),
                    *(event_entry(e, _uid(e)) for e in events)])
    for rid in releases:
        state.refresh_manifest(rid)
    return [f"journal started: {len(releases)} release(s) and {len(events)} event(s) from "
            "state.db"]


def journal_only_event(store: Store, action: str, *, actor: str, outcome: str,
                       release_id: int | None = None, from_release_id: int | None = None,
                       reason: str | None = None, detail: dict[str, Any] | None = None,
                       mark_bad: int | None = None) -> None:
    """Record an event that state.db refused after the fact (a swap already happened):
    in the journal, marked degraded, so the next command that can write state.db
    imports it; mark_bad also marks that release bad there and in its manifests.
    Raises OSError if the journal cannot take it either."""
    from .state import utcnow

    now = utcnow()
    entries = []
    if mark_bad is not None:
        entries.append(release_entry(mark_bad, status="bad", status_reason=reason,
                                     updated_at=now))
        doc = store.manifest_doc_on_disk(mark_bad)
        if doc is not None:
            store.write_manifest({**doc, "status": "bad", "status_reason": reason,
                                  "updated_at": now})
    row = {"at": now, "action": action, "release_id": release_id,
           "from_release_id": from_release_id, "actor": actor, "reason": reason,
           "outcome": outcome, "detail": detail}
    entries.append(event_entry(row, new_uid()))
    Journal(store.root).append(entries, degraded=True)
    log.warning("%s: could not record %s %s in state.db; journalled it instead: %s",
                store.state_path, action, outcome, REPAIR_HINT)
