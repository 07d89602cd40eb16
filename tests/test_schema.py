"""Issue 6: the schema compatibility gate (expand then contract) and probe plans."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from releaser import plans, schema, schema_compat
from releaser.config_gates import Probe
from releaser.db import ReadOnlyDB

from .conftest import Env

# a second table in the live release, so the tests can take things away from it
ALIASES = "CREATE TABLE aliases (tag TEXT, alias TEXT, weight REAL);"


def _schema(path: Path) -> schema.Schema:
    with ReadOnlyDB(path, 5000) as db:
        return schema.read_schema(db)


def _db(tmp: Path, name: str, sql: str) -> Path:
    path = tmp / name
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    conn.close()
    return path


def _gate(res: dict, kind: str = "schema_compat") -> list[dict]:
    return [c for c in res["checks"] if c["kind"] == kind]


# -- reading and comparing ---------------------------------------------------------


def test_read_schema_sees_columns_indexes_views_triggers(env: Env) -> None:
    path = env.make_db(rows=50, sql=(
        "CREATE VIEW big AS SELECT name, post_count FROM tags_final WHERE post_count > 1000;"
        "CREATE INDEX idx_partial ON tags_final(sub_category) WHERE sub_category IS NOT NULL;"
        "CREATE TABLE log (at TEXT);"
        "CREATE TRIGGER t_log AFTER INSERT ON tags_final BEGIN INSERT INTO log VALUES "
        "(datetime()); END;"))
    s = _schema(path)
    assert "sqlite_sequence" not in s.tables
    t = s.tables["tags_final"]
    post = t.column("post_count")
    assert post is not None and post.type == "INTEGER" and post.notnull and post.default == "0"
    assert t.column("id").pk == 1  # type: ignore[union-attr]
    assert s.indexes["idx_tags_main_category"].columns == ("main_category", "sub_category")
    auto = next(i for i in s.indexes.values() if i.origin == "u")
    assert auto.unique and auto.columns == ("name",)
    part = s.indexes["idx_partial"]
    assert part.partial and part.where == "sub_category IS NOT NULL"
    assert s.views["big"].columns == ("name", "post_count")
    assert s.triggers["t_log"].table == "tags_final"


@pytest.mark.parametrize(("old", "new", "category"), [
    ("INTEGER", "REAL", "expand"),        # widening: every integer is still there
    ("INT", "BIGINT", "expand"),          # same affinity
    ("INTEGER", "NUMERIC", "expand"),     # SQLite stores both the same way
    ("TEXT", "BLOB", "expand"),           # no affinity: values kept as written
    ("VARCHAR(10)", "TEXT", "expand"),
    ("REAL", "INTEGER", "contract"),      # narrowing: 0.87 would become... not 0.87
    ("TEXT", "INTEGER", "contract"),
    ("INTEGER", "TEXT", "contract"),      # numbers come back as strings, sort as text
    ("BLOB", "TEXT", "contract"),
])
def test_type_changes_are_classified_by_affinity(old: str, new: str, category: str) -> None:
    assert schema_compat.type_change(old, new)[0] == category


def test_compare_classifies_each_kind_of_change(tmp_path: Path) -> None:
    old = _db(tmp_path, "old.db", (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b REAL, c TEXT, gone TEXT);"
        "CREATE TABLE dropped (x);"
        "CREATE INDEX i_used ON t(a); CREATE INDEX i_other ON t(c);"
        "CREATE VIEW v AS SELECT a, c FROM t;"))
    new = _db(tmp_path, "new.db", (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL, b INTEGER, "
        "c TEXT NOT NULL DEFAULT '', added TEXT, strict_new TEXT NOT NULL);"
        "CREATE TABLE fresh (y);"
        "CREATE VIEW v AS SELECT a FROM t;"
        "CREATE INDEX i_new ON t(c);"))
    changes = schema_compat.compare(_schema(old), _schema(new), {"i_used": ["by_a"]})
    got = {(c.name, c.change): c.category for c in changes}
    assert got == {
        ("dropped", "removed"): "contract",
        ("fresh", "added"): "expand",
        ("t.gone", "removed"): "contract",
        ("t.added", "added"): "expand",
        ("t.strict_new", "added"): "contract",   # NOT NULL, no default, existing table
        ("t.a", "changed"): "contract",          # NOT NULL added without a default
        ("t.b", "changed"): "contract",          # REAL -> INTEGER
        ("t.c", "changed"): "expand",            # NOT NULL with a default
        ("i_used", "removed"): "contract",       # a probe uses it
        ("i_other", "removed"): "warn",
        ("i_new", "added"): "expand",
        ("v", "changed"): "contract",            # lost column c
    }
    used = next(c for c in changes if c.name == "i_used")
    assert "by_a" in used.reason


def test_full_scans_resolve_aliases_and_ignore_index_scans(env: Env) -> None:
    path = env.make_db(rows=50)
    with ReadOnlyDB(path, 5000) as db:
        tables = set(schema.read_schema(db).tables)
        aliased = Probe("p", "SELECT * FROM tags_final AS t WHERE t.classification_source = ?",
                        params=("x",))
        plan = plans.query_plan(db, aliased)
        assert plans.full_scans(plan, aliased.sql, tables) == [("tags_final", plan[0])]
        ordered = Probe("q", "SELECT name FROM tags_final ORDER BY post_count DESC LIMIT 5")
        plan = plans.query_plan(db, ordered)
        assert plans.full_scans(plan, ordered.sql, tables) == []
        assert plans.indexes_used(plan) == {"idx_tags_post_count"}


# -- the publish gate ------------------------------------------------------------------


def test_dropped_column_fails_publish_naming_it_and_allow_contract_passes(store: Env) -> None:
    store.cli("publish", str(store.make_db(
        "one.db", seed=1, sql="ALTER TABLE tags_final ADD COLUMN legacy_flag INTEGER;")))
    before = store.snapshot()
    candidate = store.make_db("two.db", seed=2)  # no legacy_flag: a contract change
    result = store.cli("publish", str(candidate), expect=1)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1
    assert "tags_final.legacy_flag removed or renamed" in err[0]
    assert "--allow-contract" in err[0]
    assert store.snapshot() == before
    rejected = store.history()[0]
    assert rejected["action"] == "reject" and "legacy_flag" in rejected["reason"]
    res = store.cli_json("publish", str(candidate), "--allow-contract")
    assert res["outcome"] == "published"
    gate = _gate(res)
    assert [(g["name"], g["outcome"]) for g in gate] == [("tags_final.legacy_flag", "pass")]
    assert "allowed by --allow-contract" in gate[0]["detail"]


def test_allow_contract_in_config(store: Env) -> None:
    store.cli("publish", str(store.make_db(
        "one.db", seed=1, sql="ALTER TABLE tags_final ADD COLUMN legacy_flag INTEGER;")))
    store.write_config(allow_contract="true")
    res = store.cli_json("publish", str(store.make_db("two.db", seed=2)))
    assert res["outcome"] == "published"
    assert "allowed by [schema] allow_contract" in _gate(res)[0]["detail"]


def test_added_column_table_and_index_pass(store: Env) -> None:
    store.cli("publish", str(store.make_db("one.db", seed=1)))
    res = store.cli_json("publish", str(store.make_db("two.db", seed=2, sql=(
        "ALTER TABLE tags_final ADD COLUMN wiki_url TEXT;"
        "CREATE TABLE aliases (tag TEXT NOT NULL, alias TEXT);"
        "CREATE INDEX idx_tags_source ON tags_final(classification_source);"))))
    assert res["outcome"] == "published"
    assert [(g["outcome"], g["observed"]) for g in _gate(res)] == [("pass", "3 expand")]


def test_dropped_probe_index_fails_other_index_warns(store: Env) -> None:
    store.cli("publish", str(store.make_db("one.db", seed=1)))
    before = store.snapshot()
    # high_freq (post_count > 1000000) uses idx_tags_post_count on the live release
    no_probe_index = store.make_db("two.db", seed=2, sql="DROP INDEX idx_tags_post_count;")
    result = store.cli("publish", str(no_probe_index), expect=1)
    assert "index idx_tags_post_count" in result.stderr
    assert "probe high_freq uses it" in result.stderr
    assert store.snapshot() == before
    # no probe uses idx_tags_main_category: a warning, blocking only under --strict
    other = store.make_db("three.db", seed=3, sql="DROP INDEX idx_tags_main_category;")
    strict = store.cli("publish", str(other), "--strict", expect=1)
    assert "schema_compat idx_tags_main_category: warn" in strict.stderr
    assert store.snapshot() == before
    res = store.cli_json("publish", str(other))
    assert res["outcome"] == "published"
    assert any("idx_tags_main_category" in w and "removed" in w for w in res["warnings"])


def test_not_null_without_default_and_narrowed_type_fail(store: Env) -> None:
    store.cli("publish", str(store.make_db("one.db", seed=1, sql=ALIASES)))
    not_null = store.make_db("two.db", seed=2, sql=(
        "CREATE TABLE aliases (tag TEXT NOT NULL, alias TEXT, weight REAL);"))
    res = store.cli_json("publish", str(not_null), expect=1)
    failing = [(g["name"], g["outcome"]) for g in _gate(res) if g["outcome"] == "fail"]
    assert failing == [("aliases.tag", "fail")]
    assert "NOT NULL added without a default" in res["reasons"][0]
    narrowed = store.make_db("three.db", seed=3, sql=(
        "CREATE TABLE aliases (tag TEXT, alias TEXT, weight INTEGER);"))
    result = store.cli("publish", str(narrowed), expect=1)
    assert "aliases.weight: type REAL -> INTEGER narrows REAL to INTEGER" in result.stderr
    # a default makes NOT NULL safe; INTEGER -> REAL widens
    fine = store.make_db("four.db", seed=4, sql=(
        "CREATE TABLE aliases (tag TEXT NOT NULL DEFAULT '', alias TEXT, weight REAL);"))
    assert store.cli_json("publish", str(fine))["outcome"] == "published"  # type: ignore[index]


def test_probe_full_scan_warns_and_fails_with_strict(store: Env) -> None:
    store.write_config(scan_rows_max="1000", extra=(
        '[[probes]]\nname = "by_source"\n'
        'sql = "SELECT name FROM tags_final WHERE classification_source = ?"\n'
        'params = ["optimized_llm_batch"]\n'))
    db = store.make_db("one.db", seed=1)  # 3000 rows > 1000
    before = store.snapshot()
    result = store.cli("publish", str(db), "--strict", expect=1)
    assert ("query_plan by_source: warn: full table scan: SCAN tags_final: over "
            "[schema] scan_rows_max 1000 rows") in result.stderr
    assert store.snapshot() == before
    res = store.cli_json("publish", str(db))
    plans = {g["name"]: g for g in _gate(res, "query_plan")}
    assert plans["by_source"]["outcome"] == "warn"
    assert plans["high_freq"]["outcome"] == "pass"  # uses idx_tags_post_count
    assert "USING INDEX idx_tags_post_count" in plans["high_freq"]["detail"]
    # under the limit the same plan passes
    store.write_config(scan_rows_max="5000", extra=(
        '[[probes]]\nname = "by_source"\n'
        'sql = "SELECT name FROM tags_final WHERE classification_source = ?"\n'
        'params = ["optimized_llm_batch"]\n'))
    res = store.cli_json("publish", str(store.make_db("two.db", seed=2)), "--strict")
    assert {g["name"]: g["outcome"] for g in _gate(res, "query_plan")}["by_source"] == "pass"


def test_validate_runs_the_schema_gate_against_live(published: Env) -> None:
    candidate = published.make_db("v.db", seed=3, sql="DROP INDEX idx_tags_post_count;")
    result = published.cli("validate", str(candidate), expect=1)
    assert "idx_tags_post_count" in result.stderr and "probe high_freq" in result.stderr


def test_negative_scan_rows_max_is_a_config_error(env: Env) -> None:
    env.write_config(scan_rows_max="-1")
    result = env.cli("status", expect=2)
    assert "schema: scan_rows_max must be >= 0" in result.stderr


# -- review fixes: names, table options, ANY, plan costs -----------------------------


def test_probe_index_with_a_space_in_its_name_is_found_and_its_removal_fails(
        tmp_path: Path) -> None:
    ddl = 'CREATE TABLE "my tags" (id INTEGER PRIMARY KEY, name TEXT, n INT);'
    old = _db(tmp_path, "old.db", ddl + 'CREATE INDEX "by name" ON "my tags"(name);')
    new = _db(tmp_path, "new.db", ddl)
    probe = Probe("by_name", 'SELECT n FROM "my tags" WHERE name = ?', params=("x",))
    with ReadOnlyDB(old, 5000) as db:
        assert plans.query_plan(db, probe) == ["SEARCH my tags USING INDEX by name (name=?)"]
        used = plans.probe_index_usage(db, (probe,))
    assert used == {"by name": ["by_name"]}
    (change,) = schema_compat.compare(_schema(old), _schema(new), used)
    assert (change.name, change.category) == ("by name", "contract")
    assert "probe by_name uses it" in change.reason


@pytest.mark.parametrize("sql", [
    'SELECT id FROM "my tags" WHERE n = 1',                   # SCAN my tags
    "SELECT id FROM TAGS WHERE n = 1",                        # SCAN TAGS
    "SELECT id FROM main.tags WHERE n = 1",                   # SCAN main.tags
    'SELECT id FROM main."my tags" AS "m t" WHERE n = 1',     # SCAN m t
])
def test_full_scans_match_quoted_case_and_schema_qualified_names(tmp_path: Path,
                                                                 sql: str) -> None:
    path = _db(tmp_path, "t.db", (
        'CREATE TABLE "my tags" (id INTEGER PRIMARY KEY, n INT);'
        "CREATE TABLE tags (id INTEGER PRIMARY KEY, n INT);"))
    with ReadOnlyDB(path, 5000) as db:
        tables = {t.name for t in schema.read_schema(db).tables.values()}
        plan = plans.query_plan(db, Probe("p", sql))
    (scan,) = plans.full_scans(plan, sql, tables)
    assert scan == ("my tags" if "my tags" in sql else "tags", plan[0])


def test_rowid_to_without_rowid_is_contract_strict_is_warn(tmp_path: Path) -> None:
    old = _db(tmp_path, "old.db", (
        "CREATE TABLE a (k TEXT PRIMARY KEY, v TEXT);"
        "CREATE TABLE b (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;"
        "CREATE TABLE c (k TEXT, v TEXT);"
        "CREATE TABLE d (k TEXT, v TEXT) STRICT;"))
    new = _db(tmp_path, "new.db", (
        "CREATE TABLE a (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;"
        "CREATE TABLE b (k TEXT PRIMARY KEY, v TEXT);"
        "CREATE TABLE c (k TEXT, v TEXT) STRICT;"
        "CREATE TABLE d (k TEXT, v TEXT);"))
    s = _schema(new)
    assert (s.tables["a"].without_rowid, s.tables["c"].strict) == (True, True)
    # (a.k, b.k: WITHOUT ROWID makes a PRIMARY KEY column NOT NULL, reported per column)
    got = {c.name: (c.category, c.reason) for c in schema_compat.compare(_schema(old), s)
           if c.object == "table"}
    assert {n: cat for n, (cat, _) in got.items()} == {
        "a": "contract", "b": "expand", "c": "warn", "d": "expand"}
    assert "WITHOUT ROWID" in got["a"][1] and "STRICT" in got["c"][1]


def test_names_compare_case_insensitively(tmp_path: Path) -> None:
    old = _db(tmp_path, "old.db", (
        "CREATE TABLE Tags (Name TEXT, n INT); CREATE INDEX Ix ON Tags(Name);"
        "CREATE VIEW V AS SELECT Name FROM Tags;"))
    new = _db(tmp_path, "new.db", (
        "CREATE TABLE tags (name TEXT, n INT); CREATE INDEX ix ON tags(name);"
        "CREATE VIEW v AS SELECT name FROM tags;"))
    changes = schema_compat.compare(_schema(old), _schema(new), {"IX": ["p"]})
    got = {(c.object, c.name): c.category for c in changes}
    # nothing removed: only case changed (the view's SQL text changed with it)
    assert got == {("table", "tags"): "expand", ("column", "tags.name"): "warn",
                   ("view", "v"): "expand"}
    assert _schema(old).tables["tags"].column("NAME") is not None


@pytest.mark.parametrize(("old", "new", "strict", "category"), [
    ("ANY", "INTEGER", True, "contract"),   # no affinity -> INTEGER: '007' becomes 7
    ("TEXT", "ANY", True, "expand"),        # values kept as written
    ("INTEGER", "ANY", True, "expand"),
    ("TEXT", "ANY", False, "contract"),     # outside STRICT, ANY is NUMERIC affinity
])
def test_strict_any_has_no_affinity(old: str, new: str, strict: bool, category: str) -> None:
    assert schema_compat.type_change(old, new, strict, strict)[0] == category


def test_strict_any_column_changes_through_compare(tmp_path: Path) -> None:
    old = _db(tmp_path, "old.db", "CREATE TABLE s (a ANY, b TEXT) STRICT;")
    new = _db(tmp_path, "new.db", "CREATE TABLE s (a INTEGER, b ANY) STRICT;")
    got = {c.name: c.category for c in schema_compat.compare(_schema(old), _schema(new))}
    assert got == {"s.a": "contract", "s.b": "expand"}


def test_plan_row_count_that_times_out_is_a_warn_not_an_error(tmp_path: Path) -> None:
    path = _db(tmp_path, "big.db", (
        "CREATE TABLE big (x INTEGER, y TEXT);"
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 300000) "
        "INSERT INTO big SELECT i, i % 97 FROM r;"))
    probe = Probe("by_y", "SELECT x FROM big WHERE y = ?", params=("3",))
    # 1 ms is far too short to count 300000 rows (compiling the plan takes no steps)
    with ReadOnlyDB(path, 1) as db:
        (r,) = plans.plan_results(db, (probe,), scan_rows_max=10**9)
    assert (r.outcome, r.observed) == ("warn", "full scan")
    assert "SCAN big (row count timed out after 1 ms)" in r.detail
    # the count stops at scan_rows_max + 1: a big table costs no more than that
    with ReadOnlyDB(path, 5000) as db:
        assert plans.row_count(db, "big", limit=1001) == 1001
        (r,) = plans.plan_results(db, (probe,), scan_rows_max=1000)
    assert r.outcome == "warn" and "SCAN big: over [schema] scan_rows_max 1000" in r.detail
