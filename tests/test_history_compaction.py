"""[history] keep_events: state.db stops growing, and nothing that matters is lost.

Compaction keeps the newest N events, the release rows any kept event or file on
disk needs, the totals the metrics count (monotonic), and the append-only rule for
every event it keeps.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from releaser.config import load_config
from releaser.state import StateDB

from .conftest import Env


def _rows(env: Env, sql: str) -> list[tuple]:
    conn = sqlite3.connect(env.root / "state.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_keep_events_compacts_after_each_publish(store: Env) -> None:
    store.write_config(keep_events="6")
    builds = [store.make_db(f"b{i}.db", seed=i) for i in range(1, 4)]
    for i in range(9):
        store.cli("publish", str(builds[i % 3]))
        if i % 3 == 2:
            store.cli("rollback")
    events = _rows(store, "SELECT id, action FROM events ORDER BY id")
    assert len(events) <= 6 + 2  # the newest keep_events, plus this publish's own
    assert events[-1][1] == "rollback"  # the newest are the ones kept
    # the totals the metrics read still count every publish and rollback
    state = StateDB(store.root / "state.db", readonly=True)
    try:
        assert state.count_events("publish", ("published",)) == 9
        assert state.count_events("rollback", ("ok",)) == 3
    finally:
        state.close()
    # release rows for what is on disk are kept: every release listed can be rolled to
    listed = store.cli_json("releases", "--all")
    on_disk = [r["release_id"] for r in listed if r["on_disk"]]
    assert len(on_disk) >= 2
    target = next(r["release_id"] for r in listed if r["rollback_ok"])
    store.cli("rollback", "--to", str(target))
    # compacted history is still append-only above the compaction mark
    conn = sqlite3.connect(store.root / "state.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events WHERE id = (SELECT MAX(id) FROM events)")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET reason = 'x'")
    conn.close()
    marks = _rows(store, "SELECT events_removed FROM compactions")
    assert marks and sum(m[0] for m in marks) > 0


def test_keep_all_by_default(published: Env) -> None:
    assert load_config(published.config).history.keep_events == 0
    for i in range(3, 6):
        published.cli("publish", str(published.make_db(f"x{i}.db", seed=i)))
    assert _rows(published, "SELECT COUNT(*) FROM compactions") == [(0,)]
    assert _rows(published, "SELECT MIN(id) FROM events") == [(1,)]
    conn = sqlite3.connect(published.root / "state.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events")
    conn.close()


def test_keep_events_must_not_be_negative(env: Env) -> None:
    env.write_config(keep_events="-1")
    res = env.cli("status", expect=2)
    assert "keep_events" in res.stderr


def test_journal_rotates_to_a_checkpoint_and_fsck_rebuilds_from_it(store: Env) -> None:
    """keep_events compacts state.db and journals it; past journal_max_bytes the journal
    is rotated to a checkpoint (new file, renamed over); a lost state.db is rebuilt from
    it with the same history, releases and metric totals."""
    store.write_config(keep_events="4", journal_max_bytes="6000")
    builds = [store.make_db(f"b{i}.db", seed=i) for i in range(1, 4)]
    for i in range(6):
        store.cli("publish", str(builds[i % 3]))
        if i % 3 == 1:
            store.cli("rollback")
    journal = store.root / "journal.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert lines[0]["t"] == "checkpoint", "the journal was rotated"
    assert lines[0]["counters"].get("compacted:publish:published", 0) > 0
    previous = store.root / "journal.previous.jsonl"
    assert previous.exists() and previous.stat().st_size > lines[0]["snapshot_bytes"]
    assert not list(store.root.glob(".releaser*")), "no temp file left"
    store.cli("fsck")  # the journal (compaction lines, checkpoint) and state.db agree

    hist = store.cli_json("history", "--limit", "100")
    rels = store.cli_json("releases", "--all")
    totals = _totals(store)
    assert totals["publish"] == 6 and totals["rollback"] == 2
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (store.root / name).unlink(missing_ok=True)
    store.cli("fsck", "--repair")
    assert [_event_view(e) for e in store.cli_json("history", "--limit", "100")] == [
        _event_view(e) for e in hist]
    assert [(r["release_id"], r["recorded_status"], r["sha256"]) for r in
            store.cli_json("releases", "--all")] == [
        (r["release_id"], r["recorded_status"], r["sha256"]) for r in rels]
    assert _totals(store) == totals, "the metrics' totals survive the rebuild"
    store.cli("fsck")
    store.cli("rollback")


def _event_view(e: dict) -> tuple:
    return (e["at"], e["action"], e["outcome"], e["release_id"], e["from_release_id"])


def _totals(env: Env) -> dict[str, int]:
    state = StateDB(env.root / "state.db", readonly=True)
    try:
        return {"publish": state.count_events("publish", ("published",)),
                "rollback": state.count_events("rollback", ("ok",))}
    finally:
        state.close()


def test_event_totals_fold_and_compaction_never_double_count(tmp_path) -> None:
    """count_events is the number of events ever recorded, however they are split between
    rows, the folded events:* totals and compacted:* counters (in-process: 700 events)."""
    from releaser.state_counters import FOLD_EVERY

    state = StateDB(tmp_path / "state.db")
    actions = [("publish", "published"), ("reject", "rejected"), ("rollback", "ok")]
    made: dict[tuple[str, str], int] = {a: 0 for a in actions}

    def check() -> None:
        for action, outcome in actions:
            assert state.count_events(action, (outcome,)) == made[(action, outcome)]
            assert state.count_events(action) == made[(action, outcome)]

    for i in range(700):
        action, outcome = actions[i % 7 % 3]
        state.add_event(action, actor="t", outcome=outcome)
        made[(action, outcome)] += 1
        if i in (FOLD_EVERY + 3, 600):
            check()
            assert state.fold_event_totals() > 0  # folded: counted by totals from now on
            check()
            assert state.fold_event_totals() == 0
        if i in (300, 650):
            state.compact(50, on_disk=set())
            check()
    assert state.counter("events_folded_through") > 600
    check()
    state.close()
