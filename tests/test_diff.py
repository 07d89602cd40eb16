"""Issue 6: `releaser diff`, `publish --dry-run` with the diff, `releaser releases`."""

from __future__ import annotations

import os
import sqlite3

import pytest

from .conftest import Env


def _count(path: os.PathLike[str] | str, sql: str) -> object:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def test_diff_candidate_vs_live_json(published: Env) -> None:
    # live is release 2 (seed 2, 3000 rows); the candidate loses its ARTIST rows
    cand = published.make_db("cand.db", seed=2, sql=(
        "DELETE FROM tags_final WHERE main_category = 'ARTIST';"
        "ALTER TABLE tags_final ADD COLUMN wiki_url TEXT;"
        "DROP INDEX idx_tags_main_category;"))
    artists = _count(published.tmp / "builds" / "two.db",
                     "SELECT COUNT(*) FROM tags_final WHERE main_category = 'ARTIST'")
    assert isinstance(artists, int) and artists > 0
    doc = published.cli_json("diff", str(cand))
    assert isinstance(doc, dict)
    assert doc["new"]["label"] == str(cand) and doc["new"]["release_id"] is None
    assert doc["old"]["label"] == "release 2 (live)" and doc["old"]["release_id"] == 2
    schema = {(c["name"], c["category"]) for c in doc["schema"]}
    assert schema == {("tags_final.wiki_url", "expand"), ("idx_tags_main_category", "warn")}
    assert doc["tables"] == [{"table": "tags_final", "new": 3000 - artists, "old": 3000,
                              "change": -artists,
                              "change_pct": round(-artists / 3000 * 100, 3)}]
    rows = {c["name"]: c for c in doc["checks"]}["rows"]
    assert (rows["new"], rows["old"], rows["change"]) == (3000 - artists, 3000, -artists)
    # [diff] group_by = ["main_category"] in the documented config
    (group,) = doc["groups"]
    assert group["column"] == "tags_final.main_category"
    by_value = {r["value"]: r for r in group["rows"]}
    assert by_value["ARTIST"]["new"] == 0 and by_value["ARTIST"]["old"] == artists
    assert by_value["CHARACTER"]["change"] == 0
    assert sum(r["old"] for r in group["rows"]) == 3000
    probes = {p["name"]: p for p in doc["probes_p95_ms"]}
    assert set(probes) == {"high_freq", "lookup_by_name"}
    assert all(p["new"] > 0 and p["old"] > 0 and p["budget_ms"] == 100 for p in probes.values())


def test_diff_human_table(published: Env) -> None:
    cand = published.make_db("cand.db", seed=2,
                              sql="DELETE FROM tags_final WHERE main_category = 'ARTIST';")
    out = published.cli("diff", str(cand)).stdout
    assert f"NEW = {cand}" in out and "OLD = release 2 (live)" in out
    assert "no schema changes" in out
    lines = out.splitlines()
    artist = next(ln for ln in lines if ln.strip().startswith("ARTIST"))
    # OLD (live) first, then NEW, then the change (NEW - OLD)
    cols = artist.split()
    assert cols[2] == "0" and cols[3].startswith("-") and cols[4] == "(-100.00%)"
    assert any(ln.startswith("rows by tags_final.main_category") for ln in lines)
    assert any(ln.startswith("probes (p95 ms)") for ln in lines)


def test_diff_defaults_to_idle_vs_live_and_takes_release_ids(published: Env) -> None:
    default = published.cli_json("diff")
    assert isinstance(default, dict)
    assert (default["new"]["label"], default["old"]["label"]) == ("release 1 (idle)",
                                                              "release 2 (live)")
    by_id = published.cli_json("diff", "1", "r2")
    assert isinstance(by_id, dict)
    assert (by_id["new"]["release_id"], by_id["old"]["release_id"]) == (2, 1)
    # the same checks, seen from the other side
    assert by_id["checks"][1]["change"] == pytest.approx(-default["checks"][1]["change"])


def test_diff_two_files_needs_no_store(env: Env) -> None:
    a = env.make_db("a.db", seed=1)
    b = env.make_db("b.db", seed=1, sql="DROP INDEX idx_tags_post_count;")
    doc = env.cli_json("diff", str(a), str(b))  # OLD a, NEW b
    assert isinstance(doc, dict)
    (change,) = doc["schema"]
    assert change["name"] == "idx_tags_post_count" and change["category"] == "contract"
    assert "probe high_freq" in change["reason"]


@pytest.mark.parametrize(("args", "message"), [
    (("nope.db",), "nope.db: no such file, and not a release id"),
    (("7",), "7: no such file or release"),
])
def test_diff_bad_arguments_are_one_line_exit_2(published: Env, args: tuple[str, ...],
                                                message: str) -> None:
    result = published.cli("diff", *args, expect=2)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_diff_of_a_non_database_is_exit_2(published: Env) -> None:
    junk = published.tmp / "junk.db"
    junk.write_text("not sqlite")
    result = published.cli("diff", str(junk), expect=2)
    assert "not a SQLite database" in result.stderr


def test_publish_dry_run_prints_diff_and_report(published: Env) -> None:
    before = published.snapshot()
    cand = published.make_db("three.db", seed=3,
                             sql="ALTER TABLE tags_final ADD COLUMN wiki_url TEXT;")
    out = published.cli("publish", str(cand), "--dry-run").stdout
    assert "OLD = release 2 (live)" in out
    assert "expand    column tags_final.wiki_url TEXT added" in out
    assert "quick_check" in out and "schema_compat" in out
    assert "dry run:" in out
    res = published.cli_json("publish", str(cand), "--dry-run")
    assert isinstance(res, dict) and res["outcome"] == "validated"
    assert res["diff"]["old"]["release_id"] == 2
    assert res["diff"]["schema"][0]["name"] == "tags_final.wiki_url"
    assert published.snapshot() == before
    # a failing dry run still shows the diff and why it fails
    bad = published.make_db("four.db", seed=3, sql="DROP INDEX idx_tags_post_count;")
    result = published.cli("publish", str(bad), "--dry-run", expect=1)
    assert "contract  index idx_tags_post_count" in result.stdout
    assert "schema_compat idx_tags_post_count: fail" in result.stderr


def test_releases_lists_statuses_and_rollback_to_archived(store: Env) -> None:
    for seed in (1, 2, 3):
        store.cli("publish", str(store.make_db(f"r{seed}.db", seed=seed)), "--note",
                  f"build {seed}")
    rejected = store.make_db("bad.db", seed=4, sql="DROP INDEX idx_tags_post_count;")
    store.cli("publish", str(rejected), expect=1)
    rows = store.cli_json("releases")
    assert isinstance(rows, list)
    got = {r["release_id"]: (r["status"], r["rollback_ok"]) for r in rows}
    assert got == {4: ("rejected", False), 3: ("live", False), 2: ("idle", True),
                   1: ("good", True)}
    one = next(r for r in rows if r["release_id"] == 1)
    assert one["note"] == "build 1" and one["published_at"] and len(one["sha256"]) == 64
    assert (store.root / "archive" / "release-1.db").exists()
    bad = next(r for r in rows if r["release_id"] == 4)
    assert bad["published_at"] is None and "idx_tags_post_count" in bad["reason"]
    human = store.cli("releases").stdout.splitlines()
    assert human[0].split()[:5] == ["id", "status", "published", "sha256", "rollback"]
    assert any(ln.split()[:2] == ["4", "rejected"] for ln in human)
    # release 1 is neither live nor idle: only archived
    store.cli("rollback", "--to", "1", "--reason", "back to build 1")
    assert store.status()["live"]["release_id"] == 1
    assert os.path.realpath(store.live) != str(store.root / "archive" / "release-1.db")
    after = {r["release_id"]: r["status"] for r in store.cli_json("releases")}  # type: ignore[union-attr]
    assert after[1] == "live" and after[3] == "idle"


def test_releases_on_an_empty_store(store: Env) -> None:
    assert store.cli("releases").stdout.strip() == "no releases yet"
    assert store.cli_json("releases") == []


def test_new_commands_have_examples(env: Env) -> None:
    for cmd in ("diff", "releases"):
        assert "Examples:" in env.cli(cmd, "--help").stdout
    assert "--allow-contract" in env.cli("publish", "--help").stdout


def _big(n: int, modulo: int, hot: str = "") -> str:
    """A table of n rows with `modulo` distinct values of y (plus optional hot rows)."""
    return ("CREATE TABLE big (x INTEGER, y TEXT);"
            f"WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {n}) "
            f"INSERT INTO big SELECT i, 'v' || (i % {modulo}) FROM r;" + hot)


def test_diff_groups_read_top_values_under_the_integrity_time_limit(env: Env) -> None:
    # 97 values in B; A adds 5000 rows of a value B has only 3 of: it is in A's top
    # 50 but not in B's, so B's count must be read exactly (not shown as 0)
    b = env.make_db("b.db", seed=1, rows=50, sql=_big(
        300000, 97, "INSERT INTO big VALUES (1, 'rare'), (2, 'rare'), (3, 'rare');"))
    a = env.make_db("a.db", seed=1, rows=50, sql=_big(
        300000, 97, "INSERT INTO big SELECT x, 'rare' FROM big LIMIT 5000;"
        "INSERT INTO big VALUES (0, 'rare'), (0, 'rare'), (0, NULL);"))
    # a GROUP BY over 300000 rows takes far more than 1 ms: under the query limit the
    # whole diff used to fail; counts run under integrity_timeout_ms instead
    env.write_config(query_timeout_ms="1", group_by='["big.y"]')
    doc = env.cli_json("diff", str(b), str(a))  # OLD b, NEW a
    assert isinstance(doc, dict)
    (group,) = doc["groups"]
    rows = {r["value"]: r for r in group["rows"]}
    assert len(group["rows"]) == 50 + 1  # MAX_GROUPS values, then one "(other values)" row
    assert (rows["rare"]["new"], rows["rare"]["old"]) == (5002, 3)
    assert sum(r["new"] for r in group["rows"]) == 300000 + 5003
    assert sum(r["old"] for r in group["rows"]) == 300003
    other = rows["(other values)"]
    assert other["old"] == 300003 - sum(r["old"] for r in group["rows"][:-1])
    big = next(t for t in doc["tables"] if t["table"] == "big")
    assert (big["new"], big["old"]) == (305003, 300003)


def test_diff_matches_tables_and_group_by_case_insensitively(env: Env) -> None:
    b = env.make_db("b.db", seed=1, rows=50)
    a = env.make_db("a.db", seed=1, rows=50,
                    sql=("ALTER TABLE tags_final RENAME TO t_tmp;"
                         "ALTER TABLE t_tmp RENAME TO Tags_Final;"))
    env.write_config(group_by='["TAGS_FINAL.Main_Category"]')
    doc = env.cli_json("diff", str(b), str(a))  # OLD b, NEW a
    assert isinstance(doc, dict)
    assert [(t["table"], t["new"], t["old"]) for t in doc["tables"]] == [("Tags_Final", 50, 50)]
    assert [c["category"] for c in doc["schema"]] == ["expand"]  # renamed in case only
    (group,) = doc["groups"]
    assert "error" not in group and sum(r["new"] for r in group["rows"]) == 50
