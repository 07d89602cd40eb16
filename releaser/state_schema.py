"""state.db's tables and indexes (SCHEMA), the constants queries share, and the
read-only opening used by the read-only verbs.

SCHEMA is idempotent (IF NOT EXISTS) and is applied at every writable open, so a
state.db made by an older version gains new tables and indexes then.

Readers (status, history, releases, diff, check, validate) open state.db with
`mode=ro` (open_readonly) and never write. WAL mode needs a -shm file: a user who
may not create one (not in the publishers' group) reads state.db as an immutable
file when no writer has it open (then there is no -wal: SQLite checkpoints and
removes it at the last close), and shares the writer's -wal/-shm (mode 0664, as
state.db) when one has.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path

from . import access
from .errors import StoreIOError, UsageError

# events that change which release is live
LIVE_ACTIONS = ("init", "publish", "rollback", "auto-revert")
LIVE_OUTCOMES = ("published", "ok", "recovered")
# counters rows "analysis:<name>:<outcome>" (names are TOML strings; the outcome has no ":")
ANALYSIS_COUNTER = "analysis:"
# how many health check rows to keep (the monitor writes one every interval)
HEALTH_CHECKS_KEPT = 2000
# the live-transition filter as literals: the partial index events_live serves only a
# query whose WHERE repeats these terms word for word (a bound parameter never matches)
LIVE_WHERE = (f"action IN ({', '.join(repr(a) for a in LIVE_ACTIONS)})"
              f" AND outcome IN ({', '.join(repr(o) for o in LIVE_OUTCOMES)})")

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
-- compaction marks: events up to through_event_id may be deleted, no others
CREATE TABLE IF NOT EXISTS compactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    through_event_id INTEGER NOT NULL,
    events_removed INTEGER NOT NULL,
    releases_removed INTEGER NOT NULL
);
DROP TRIGGER IF EXISTS events_no_delete;
CREATE TRIGGER IF NOT EXISTS events_no_delete_above_compaction BEFORE DELETE ON events
WHEN OLD.id > (SELECT COALESCE(MAX(through_event_id), 0) FROM compactions)
BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
-- the planner preferred releases_status over this partial index (a scan of every good
-- release): replaced by releases_status_published, which it does choose
DROP INDEX IF EXISTS releases_unpublished;
CREATE INDEX IF NOT EXISTS releases_status_published ON releases(status, published_at);
CREATE INDEX IF NOT EXISTS releases_status ON releases(status, id);
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
-- how far statefile.sync has compared journal.jsonl with state.db, so it reads only
-- the lines after: the byte offset, a hash of the bytes just before it (the same
-- file, not a rotated or cut one) and the newest state.db event the journal held there
CREATE TABLE IF NOT EXISTS journal_mark (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    byte_offset INTEGER NOT NULL,
    before_sha256 TEXT NOT NULL,
    event_id INTEGER
);
"""
# newest-first walks of the live transitions read this index in id order and stop early
SCHEMA += f"CREATE INDEX IF NOT EXISTS events_live ON events(id) WHERE {LIVE_WHERE};\n"



def open_readonly(path: Path, timeout_s: float = 2.0) -> sqlite3.Connection:
    """state.db for reading only (mode=ro). A user who cannot create the WAL's -shm
    file reads it as immutable when no -wal exists (nothing uncheckpointed)."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
    if not os.access(path, os.R_OK):
        raise UsageError(
            f"{path}: permission denied: user {access.user_name()} cannot read the state "
            f"database; make the store readable (state.db 0664, folders 2775; "
            f"{access.GUIDE})")
    attempts = [uri]
    if (not os.path.exists(f"{path}-wal") and not os.path.exists(f"{path}-shm")
            and not os.access(path.parent, os.W_OK)):
        attempts.append(uri + "&immutable=1")
    last: sqlite3.Error | None = None
    for attempt in attempts:
        conn = sqlite3.connect(attempt, uri=True, timeout=timeout_s, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            with access.group_writable_umask():  # a reader may create -wal/-shm too
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as exc:
            conn.close()
            last = exc
    raise StoreIOError(f"{path}: cannot read the state database: {last}; a publisher "
                       "(group member) running `releaser status` once repairs a leftover "
                       "-wal or -journal") from None
