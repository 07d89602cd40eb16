"""The journal, manifests and the rebuild of state.db from them (issue 12), in-process."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from releaser import manifest, rebuild
from releaser.journal import Journal, event_entry, release_entry
from releaser.state import SCHEMA


def _event(uid: str, action: str, rid: int, at: str = "2026-01-01T00:00:00.000Z") -> dict:
    return event_entry({"at": at, "action": action, "release_id": rid, "actor": "t",
                        "outcome": "ok"}, uid)


def test_append_after_a_torn_tail_starts_a_new_line(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append([_event("a", "publish", 1), _event("b", "publish", 2)])
    raw = j.path.read_bytes()
    os.truncate(j.path, len(raw) - 7)  # cut the second line mid-way
    cut = j.read()
    assert [e["uid"] for e in cut.entries] == ["a"] and cut.torn_tail > 0
    assert cut.problems(j.path) and "cut short" in cut.problems(j.path)[0]
    j.append([_event("c", "rollback", 1)], degraded=True)
    after = j.read()
    # the torn fragment is now an unreadable line of its own; "c" is whole and marked
    assert [e["uid"] for e in after.entries] == ["a", "c"]
    assert after.entries[-1]["degraded"] is True and after.bad_lines == [2]
    assert after.torn_tail == 0 and j.degraded_pending()


def test_tail_reads_only_whole_lines(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append([_event(f"u{i}", "publish", i) for i in range(2000)])
    tail = j.tail(4096)
    assert tail and tail[-1]["uid"] == "u1999"
    assert all(isinstance(e, dict) for e in tail)


def test_collect_prefers_the_newer_manifest_and_keeps_ids(tmp_path: Path) -> None:
    entries = [
        release_entry(1, sha256="a" * 64, size=10, status="good", created_at="t0",
                      published_at="t1", updated_at="2026-01-01T00:00:01Z"),
        release_entry(2, sha256="b" * 64, size=20, status="good", created_at="t2",
                      updated_at="2026-01-01T00:00:02Z"),
        _event("e1", "publish", 1), _event("e1", "publish", 1),  # a duplicate uid
        _event("e2", "reject", 7),  # a release known only from its event
    ]
    manifests = {2: {"release_id": 2, "sha256": "b" * 64, "size": 20, "status": "bad",
                     "status_reason": "monitor", "published_at": "t3",
                     "updated_at": "2026-01-01T00:00:09Z", "check_values": {"rows": 5}}}
    out = rebuild.collect(entries, manifests, file_ids={9})
    assert out.releases[2]["status"] == "bad" and out.releases[2]["published_at"] == "t3"
    assert out.releases[1]["status"] == "good"
    assert [e["uid"] for e in out.events] == ["e1", "e2"]
    assert out.releases[7]["status"] == "rejected" and 9 in out.releases
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    rebuild.write_into(conn, out, id_floor=12)
    conn.execute("INSERT INTO releases (sha256, size, created_at, status) "
                 "VALUES ('x', 1, 't', 'good')")
    assert conn.execute("SELECT MAX(id) FROM releases").fetchone()[0] == 13
    report = json.loads(conn.execute("SELECT report FROM releases WHERE id=2").fetchone()[0])
    assert manifest.check_values(report) == {"rows": 5}


def test_import_degraded_adds_each_event_once(tmp_path: Path) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    rebuild.ensure_uid_column(conn)
    lines = [{**_event("d1", "rollback", 1), "degraded": True},
             {**release_entry(1, status="bad", status_reason="x"), "degraded": True},
             _event("n1", "publish", 1)]
    conn.execute("INSERT INTO releases (id, sha256, size, created_at, status) "
                 "VALUES (1, 'a', 1, 't', 'good')")
    assert rebuild.import_degraded(conn, lines) == (1, 1)
    assert rebuild.import_degraded(conn, lines) == (0, 1)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
    assert conn.execute("SELECT status FROM releases WHERE id=1").fetchone()[0] == "bad"


def test_manifest_written_whole_and_read_back(tmp_path: Path) -> None:
    doc = manifest.from_row({"id": 4, "sha256": "c" * 64, "size": 3, "status": "good",
                             "report": json.dumps({"checks": [
                                 {"name": "rows", "kind": "check", "observed": 3}]})}, "now")
    path = manifest.write(tmp_path, doc)
    assert path.name == "release-4.json" and manifest.read(path)["check_values"] == {"rows": 3}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    path.write_text('{"format": "releaser-manifest/1", "release_id": 5}')
    found, problems = manifest.scan([tmp_path])
    assert found == {} and problems and "release-4.json" in problems[0]


def _mark(state_path: Path) -> tuple | None:
    conn = sqlite3.connect(state_path)
    try:
        return conn.execute("SELECT byte_offset, event_id FROM journal_mark").fetchone()
    finally:
        conn.close()


def test_sync_reads_from_its_mark_and_still_finds_what_the_journal_missed(
        tmp_path: Path) -> None:
    from releaser import statefile
    from releaser.state import StateDB
    from releaser.store import Store

    store = Store(tmp_path / "store", tmp_path / "live.db")
    store.root.mkdir()
    journal = Journal(store.root)
    state = StateDB(store.state_path, journal=journal)
    for _ in range(300):  # about 60 KB of journal: past MARK_EVERY
        state.add_event("reject", actor="t", outcome="rejected", reason="x" * 120)
    assert statefile.sync(state, store) == []
    offset, event_id = _mark(store.state_path)
    assert offset == journal.path.stat().st_size and event_id == 300

    def missed_by_the_journal(n: int) -> None:  # a crash between commit and append
        state.journal = None
        for _ in range(n):
            state.add_event("publish", actor="t", outcome="published")
        state.journal = journal

    missed_by_the_journal(2)
    notes = statefile.sync(state, store)
    assert notes == ["journalled 2 event(s) state.db had but the journal missed"]
    assert [e["id"] for e in journal.tail()[-2:]] == [301, 302]
    # the mark moves on only every MARK_EVERY bytes: it still reads from 300
    assert _mark(store.state_path) == (offset, 300)
    assert statefile.sync(state, store) == []

    # a journal replaced under the mark (rotated, or cut by fsck): the hash before the
    # offset no longer matches, so sync goes back to the tail and marks the new file
    raw = journal.path.read_bytes()
    journal.path.write_bytes(raw[:1000] + b"\n" + raw[raw.index(b"\n", 2000) + 1:])
    missed_by_the_journal(1)
    assert statefile.sync(state, store) == [
        "journalled 1 event(s) state.db had but the journal missed"]
    assert journal.tail()[-1]["id"] == 303
    # marked where the new file ended before the append (302: its newest event then)
    assert _mark(store.state_path)[1] == 302
    assert statefile.sync(state, store) == []
    state.close()


def test_collect_applies_compaction_and_checkpoint_lines() -> None:
    """A compaction line drops exactly the events it names (journal order need not be id
    order: degraded lines are imported later) and release rows below its floor not on
    disk; its counts, on top of a checkpoint's, become the compacted counters."""
    rel = {"sha256": "a" * 64, "size": 1, "status": "good", "created_at": "t"}
    entries = [
        {"t": "checkpoint", "counters": {"compacted:publish:published": 5}},
        release_entry(1, **rel), release_entry(2, **rel), release_entry(3, **rel),
        _event("e1", "publish", 1), _event("e2", "publish", 2), _event("e3", "publish", 3),
        {"t": "compaction", "removed_uids": ["e2", "e1"], "release_floor": 3,
         "kept_below_floor": [1], "counts": {"publish:published": 2}},
        _event("e4", "rollback", 1),
    ]
    out = rebuild.collect(entries, {})
    assert [e["uid"] for e in out.events] == ["e3", "e4"]
    assert sorted(out.releases) == [1, 3]
    assert out.counters == {"compacted:publish:published": 7}
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    rebuild.write_into(conn, out)
    assert conn.execute("SELECT value FROM counters").fetchall() == [(7,)]
