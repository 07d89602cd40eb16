"""Gates that do not lie (issue 11, items 1, 12, 13).

A stale index, a table no reader can open, a check returning many rows, config SQL
that would create files, a candidate needing more memory than the heap limit, a
probe returning millions of rows: each is caught with one clear line.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from . import faults
from .conftest import RELEASER_BIN, Env
from .robust import peak_rss_kib


def make_index_stale(path: Path, sql: str, index: str = "idx_tags_post_count") -> None:
    """Change rows while `index` is hidden from SQLite, then put it back: the index still
    holds the old values (what a build tool bug or a bad page write leaves)."""
    conn = sqlite3.connect(path)
    (index_sql, root, table) = conn.execute(
        "SELECT sql, rootpage, tbl_name FROM sqlite_master WHERE name = ?", (index,)).fetchone()
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("DELETE FROM sqlite_master WHERE name = ?", (index,))
    conn.commit()
    conn.close()
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) "
                 "VALUES ('index', ?, ?, ?, ?)", (index, table, root, index_sql))
    conn.commit()
    conn.close()


def test_stale_index_is_rejected_by_the_default_gates(published: Env) -> None:
    """Item 1: quick_check passes this file; the probe sees rows NOT INDEXED does not."""
    db = published.make_db("stale.db", seed=3)
    make_index_stale(db, "UPDATE tags_final SET post_count = 5 WHERE post_count > 1000000;")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    via_index = conn.execute("SELECT count(*) FROM tags_final WHERE post_count > 1000000"
                             ).fetchone()[0]
    scanned = conn.execute("SELECT count(*) FROM tags_final NOT INDEXED "
                           "WHERE post_count > 1000000").fetchone()[0]
    conn.close()
    assert via_index > 0 and scanned == 0
    before = published.snapshot()
    res = published.cli("publish", str(db), expect=1)
    assert "idx_tags_post_count" in res.stderr and "disagrees" in res.stderr, res.stderr
    assert published.snapshot() == before
    ev = published.history()[0]
    assert (ev["action"], ev["outcome"]) == ("reject", "rejected")
    assert "idx_tags_post_count" in ev["reason"]


def test_stale_text_index_is_rejected(published: Env) -> None:
    db = published.make_db("stale-text.db", seed=3)
    make_index_stale(db, "UPDATE tags_final SET sub_category = 'zz' || sub_category "
                         "WHERE rowid % 97 = 0;", index="idx_tags_main_category")
    res = published.cli("validate", str(db), expect=1)
    assert "idx_tags_main_category" in res.stderr


def test_unknown_virtual_table_module_fails_a_gate(published: Env) -> None:
    """Item 13: no reader can open a table USING a module that is not available."""
    db = published.make_db("vtab.db", seed=3)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES "
                 "('table', 'fuzzy', 'fuzzy', 0, 'CREATE VIRTUAL TABLE fuzzy USING spellfix1')")
    conn.commit()
    conn.close()
    res = published.cli("validate", str(db), expect=1)
    assert "spellfix1" in res.stderr and "fuzzy" in res.stderr


def test_check_returning_many_rows_is_an_error(published: Env) -> None:
    """Item 13: judged on the first row silently before; now an error naming the check."""
    published.write_config("""
[[checks]]
name = "per_category"
sql = "SELECT COUNT(*) FROM tags_final GROUP BY main_category"
fail = { min = 0 }
""")
    res = published.cli("validate", str(published.make_db("x.db", seed=3)), expect=1)
    assert "per_category" in res.stderr and "rows" in res.stderr


def test_config_sql_cannot_attach_or_create_files(published: Env, tmp_path: Path) -> None:
    """Item 13: ATTACH 'file:x?mode=rwc' in a check must not create x."""
    target = tmp_path / "created.db"
    published.write_config(f"""
[[checks]]
name = "attach"
sql = "ATTACH 'file:{target}?mode=rwc' AS x"
fail = {{ min = 0 }}
""")
    published.cli("validate", str(published.make_db("x.db", seed=3)), expect=1)
    assert not target.exists()
    published.write_config(f"""
[[probes]]
name = "attach"
sql = "ATTACH 'file:{target}?mode=rwc' AS x"
budget_ms = 100
""")
    res = published.cli("validate", str(published.make_db("x.db", seed=3)), expect=1)
    assert not target.exists()
    assert "attach" in res.stderr.lower()


def test_newline_in_a_sqlite_message_stays_one_line(published: Env) -> None:
    """Item 13: a table name with a newline in an error stays on one line."""
    published.write_config("""
[[checks]]
name = "broken"
sql = "SELECT COUNT(*) FROM \\"no\\nsuch\\""
fail = { min = 0 }
""")
    res = published.run("validate", str(published.make_db("x.db", seed=3)), expect=1)
    error_lines = [x for x in res.stderr.splitlines() if x.startswith("Error")]
    assert len(error_lines) == 1 and "no\\nsuch" in error_lines[0], res.stderr


def test_candidate_needing_more_memory_than_the_heap_limit_is_rejected(
        published: Env) -> None:
    """Item 12: a generated column of zeroblob(300 MB) is rejected by a gate with a
    clear reason and a reject event, not `internal error: MemoryError`."""
    db = published.make_db("huge.db", seed=3)
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE tags_final ADD COLUMN blobby BLOB "
                 "GENERATED ALWAYS AS (zeroblob(300000000)) VIRTUAL")
    conn.commit()
    conn.close()
    published.write_config("""
[[checks]]
name = "blobs"
sql = "SELECT max(length(blobby)) FROM tags_final"
fail = { min = 0 }
""")
    res = published.run("publish", str(db), expect=1)
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert "memory" in res.stderr.lower()
    ev = published.history()[0]
    assert (ev["action"], ev["outcome"]) == ("reject", "rejected")


def test_a_lower_configured_heap_limit_rejects_what_the_default_accepts(store: Env) -> None:
    """[gates] sqlite_heap_limit_mb: a check reading a 30 MB generated blob passes under
    the default 64 MB and is rejected, naming the limit and its key, under 16 MB."""
    db = store.make_db("blob30.db", rows=3000, seed=3)
    conn = sqlite3.connect(db)
    # only on the last row, which no probe reads: the probes stay fast; the check's
    # concatenation makes SQLite hold it whole (a bare zeroblob is never allocated)
    conn.execute("ALTER TABLE tags_final ADD COLUMN blobby BLOB GENERATED ALWAYS AS "
                 "(zeroblob(iif(id = 3000, 30000000, 1))) VIRTUAL")
    conn.commit()
    conn.close()
    check = """
[[checks]]
name = "blobs"
sql = "SELECT max(length(blobby || x'00')) FROM tags_final"
fail = { min = 0 }
"""
    store.write_config(check)
    store.run("validate", str(db), expect=0)
    store.write_config(check, sqlite_heap_limit_mb="16")
    res = store.run("validate", str(db), expect=1)
    assert "check blobs" in res.stderr and "out of memory" in res.stderr, res.stderr
    assert "16 MB" in res.stderr
    assert "sqlite_heap_limit_mb" in res.stderr and "Traceback" not in res.stderr


def test_probe_returning_millions_of_rows_keeps_publish_memory_flat(published: Env) -> None:
    """Item 12: probe rows are counted while streaming, never all fetched."""
    published.write_config("""
[[probes]]
name = "everything"
sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) SELECT i, printf('%0100d', i) FROM n"
budget_ms = 100000
min_rows = 1
""", probe_runs="1")
    db = published.make_db("x.db", seed=3)
    # the probe streams rows until the 5 s query limit stops it: memory must stay flat
    rss_kib, _ = peak_rss_kib([str(RELEASER_BIN), "--config", str(published.config),
                               "validate", str(db)])
    assert rss_kib < 100 * 1024, f"peak RSS {rss_kib / 1024:.0f} MB"


@pytest.mark.parametrize("checks_start", ["at once", "late"])
def test_gates_stop_the_background_scans_when_they_fail_early(published: Env,
                                                               checks_start: str) -> None:
    """Item 11: an exception in the structural gates interrupts the [[checks]] thread
    instead of waiting for its full-table query (here one that would run 120 s).
    "late": the checks thread starts its query only after the failure (a loaded
    machine), when an interrupt alone would find nothing running to stop."""
    published.write_config("""
[[checks]]
name = "endless"
sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
fail = { min = 0 }
""")
    text = published.config.read_text().replace("query_timeout_ms = 5000",
                                                "query_timeout_ms = 120000")
    published.config.write_text(text)
    boom = 'patch("check_foreign_keys", before=lambda *a, **k: 1 / 0)'
    if checks_start == "late":
        boom += '\nimport time\npatch("_run_checks", before=lambda *a, **k: time.sleep(1))'
    proc = subprocess.run(
        faults.argv("--config", str(published.config), "validate",
                    str(published.make_db("x.db", seed=3)), setup=boom),
        capture_output=True, text=True, timeout=60)  # a hang, not a speed, is the failure
    assert proc.returncode == 5, proc.stderr
    assert "ZeroDivisionError" in proc.stderr
