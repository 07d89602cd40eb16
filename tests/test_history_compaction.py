"""[history] keep_events: state.db stops growing, and nothing that matters is lost.

Compaction keeps the newest N events, the release rows any kept event or file on
disk needs, the totals the metrics count (monotonic), and the append-only rule for
every event it keeps.
"""

from __future__ import annotations

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
