"""The index-vs-table check (indexcheck.py) on tiny files: what it compares, what it
lists as not compared, and its scans spread over several connections."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from releaser import gates, indexcheck
from releaser.db import ReadOnlyDB

from .test_gate_failures import make_index_stale


def two_tables(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT, n INTEGER);
        CREATE INDEX a_name ON a(name);
        CREATE INDEX a_n ON a(n);
        CREATE TABLE b (id INTEGER PRIMARY KEY, kind TEXT, score REAL, qty INTEGER);
        CREATE INDEX b_kind_score ON b(kind, score);
        CREATE INDEX b_qty ON b(qty);
        WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < 500)
        INSERT INTO a (name, n) SELECT 'n' || x, x * 7 FROM i;
        WITH RECURSIVE i(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM i WHERE x < 500)
        INSERT INTO b (kind, score, qty)
        SELECT CASE WHEN x % 3 THEN 'k' || (x % 5) END, x / 8.0, x % 11 FROM i;
    """)
    conn.commit()
    conn.close()
    return path


def check(path: Path, connections: int = 2) -> gates.GateResult:
    dbs = [ReadOnlyDB(path, 10_000, progress_ops=gates.SCAN_PROGRESS_OPS)
           for _ in range(connections)]
    try:
        return gates.check_indexes(dbs, 10_000)
    finally:
        for db in dbs:
            db.close()


@pytest.mark.parametrize("connections", [1, 2, 3])
def test_consistent_file_passes_on_any_number_of_connections(tmp_path: Path,
                                                             connections: int) -> None:
    r = check(two_tables(tmp_path / "ok.db"), connections)
    assert (r.outcome, r.observed, r.detail) == (gates.PASS, "4 indexes", None)


@pytest.mark.parametrize("index, sql", [
    ("b_kind_score", "UPDATE b SET score = score + 0.5 WHERE id % 50 = 0"),  # REAL key
    ("b_kind_score", "UPDATE b SET kind = NULL WHERE id = 7"),  # second table, NULL
    ("a_n", "UPDATE a SET n = n + 1 WHERE id = 3"),
    ("a_name", "DELETE FROM a WHERE id = 9"),  # an entry the table no longer has
])
def test_a_stale_index_of_either_table_is_named_alone(tmp_path: Path, index: str,
                                                      sql: str) -> None:
    db = two_tables(tmp_path / "stale.db")
    make_index_stale(db, sql, index=index)
    r = check(db)
    assert r.outcome == gates.FAIL
    named = [i for i in ("a_name", "a_n", "b_kind_score", "b_qty") if f"index {i} " in r.detail]
    assert named == [index], r.detail


def test_index_sqlite_would_not_read_alone_is_listed_not_compared(tmp_path: Path) -> None:
    """An index on a VIRTUAL generated column is scanned through the table: comparing
    it would compare the table with itself, so it is listed as not compared."""
    path = tmp_path / "gen.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE t (a INTEGER, b INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL, c TEXT);
        CREATE INDEX t_b ON t(b);
        CREATE INDEX t_c ON t(c);
        CREATE INDEX t_expr ON t(lower(c));
        CREATE INDEX t_partial ON t(a) WHERE a > 1;
        INSERT INTO t (a, c) VALUES (1, 'x'), (2, 'y'), (NULL, NULL);
    """)
    conn.close()
    with ReadOnlyDB(path, 10_000) as db:
        plan = indexcheck.plan(db.conn)
    assert [ip.index for ip in plan.indexes] == ["t_c"]
    assert sorted(plan.not_covered) == ["t_b", "t_expr", "t_partial"]
    r = check(path)
    assert r.outcome == gates.PASS and "t_b" in r.detail and "not compared" in r.detail


def test_a_failing_scan_stops_the_others_and_fails_the_gate(tmp_path: Path) -> None:
    """One connection's error (an index gone from under the plan) is raised once every
    connection has stopped: the gate fails, naming it, and nothing hangs."""
    path = two_tables(tmp_path / "ok.db")
    dbs = [ReadOnlyDB(path, 10_000) for _ in range(2)]
    try:
        plan = indexcheck.plan(dbs[0].conn)
        plan.indexes.append(indexcheck.IndexPlan("a", "no_such_index", [("n", "int")]))
        with pytest.raises(sqlite3.OperationalError, match="no_such_index"):
            indexcheck.run(dbs, plan, 10_000)
    finally:
        for db in dbs:
            db.close()
