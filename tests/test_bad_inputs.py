"""Bad input corpus: every broken, hostile or misplaced candidate is refused cleanly.

Each case runs the installed `releaser publish` in a subprocess against a store with
a live release and asserts: the documented exit code, exactly one line on stderr that
names the file, no traceback, live symlink/sha256/slot inodes unchanged, history
unchanged apart from at most one reject event, no temp files in the store, and the
source itself left untouched.

A few edge inputs are not bad and must publish correctly (a pending WAL, a 0-byte
-wal, other page sizes); they are at the end.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from .conftest import Env
from .robust import leftovers, run_releaser, sha256

# fixtures: `published` here is a clone of one store built per module
from .store_clone import cloned_published, published_template  # noqa: F401

Maker = Callable[[Env], AbstractContextManager[Path]]


@contextmanager
def _just(path: Path) -> Iterator[Path]:
    yield path


def _db(env: Env, sql: str | None = None, rows: int = 3000, seed: int = 11, **kw: object) -> Path:
    return env.make_db(f"cand-{seed}-{rows}.db", rows=rows, seed=seed, sql=sql, **kw)


def missing(env: Env) -> AbstractContextManager[Path]:
    return _just(env.tmp / "builds" / "nope.db")


def folder(env: Env) -> AbstractContextManager[Path]:
    d = env.tmp / "builds" / "adir.db"
    d.mkdir(parents=True)
    return _just(d)


def empty(env: Env) -> AbstractContextManager[Path]:
    p = env.tmp / "builds" / "empty.db"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return _just(p)


def truncated(env: Env) -> AbstractContextManager[Path]:
    p = _db(env)
    size = p.stat().st_size
    with open(p, "r+b") as fh:  # whole pages, so only the header page count gives it away
        fh.truncate((size // 4096 // 2) * 4096)
    return _just(p)


def truncated_mid_page(env: Env) -> AbstractContextManager[Path]:
    p = _db(env)
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size - 1000)
    return _just(p)


def truncated_64k_pages(env: Env) -> AbstractContextManager[Path]:
    """A 64 KiB-page file cut at a 4 KiB boundary: the check must use the file's page size."""
    p = _db(env, page_size=65536)
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size - 65536 + 4096)
    return _just(p)


def random_bytes(env: Env) -> AbstractContextManager[Path]:
    p = env.tmp / "builds" / "random.db"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(random.Random(4).randbytes(256 * 1024))
    return _just(p)


def not_sqlite(env: Env) -> AbstractContextManager[Path]:
    p = env.tmp / "builds" / "tags.csv.db"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("name,main_category\n1girl,CHARACTER_RELATED\n" * 2000)
    return _just(p)


def bad_header(env: Env) -> AbstractContextManager[Path]:
    """SQLite magic, then a page size that is not a power of two."""
    p = _db(env)
    with open(p, "r+b") as fh:
        fh.seek(16)
        fh.write((3000).to_bytes(2, "big"))
    return _just(p)


def corrupted_page(env: Env) -> AbstractContextManager[Path]:
    p = _db(env)
    pages = p.stat().st_size // 4096
    with open(p, "r+b") as fh:
        fh.seek((pages // 2) * 4096)
        fh.write(random.Random(5).randbytes(4096))
    return _just(p)


def missing_table(env: Env) -> AbstractContextManager[Path]:
    return _just(_db(env, "ALTER TABLE tags_final RENAME TO tags_old;"))


def missing_column(env: Env) -> AbstractContextManager[Path]:
    return _just(_db(env, "DROP INDEX idx_tags_main_category; "
                          "ALTER TABLE tags_final DROP COLUMN sub_category;"))


def empty_table(env: Env) -> AbstractContextManager[Path]:
    return _just(_db(env, "DELETE FROM tags_final; VACUUM;"))


def confidence_out_of_range(env: Env) -> AbstractContextManager[Path]:
    return _just(_db(env, "UPDATE tags_final SET classification_confidence = 1.5 "
                          "WHERE classification_confidence IS NOT NULL;"))


def confidence_null_everywhere(env: Env) -> AbstractContextManager[Path]:
    return _just(_db(env, "UPDATE tags_final SET classification_confidence = NULL;"))


def huge_row_drop(env: Env) -> AbstractContextManager[Path]:
    return _just(_db(env, rows=300))


def foreign_key_violation(env: Env) -> AbstractContextManager[Path]:
    return _just(_db(env, """
        CREATE TABLE tag_alias (alias TEXT, tag_id INTEGER REFERENCES tags_final(id));
        INSERT INTO tag_alias VALUES ('ghost', 999999999);
    """))


def dangling_symlink(env: Env) -> AbstractContextManager[Path]:
    p = env.tmp / "builds" / "dangling.db"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(env.tmp / "builds" / "gone.db")
    return _just(p)


def fifo(env: Env) -> AbstractContextManager[Path]:
    """A named pipe: a naive `cp` would block on it forever."""
    p = env.tmp / "builds" / "pipe.db"
    p.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(p)
    return _just(p)


@contextmanager
def being_written(env: Env) -> Iterator[Path]:
    """Another process keeps appending to the file while publish runs."""
    p = _db(env)
    size = p.stat().st_size
    code = (
        "import os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
        "block = b'\\x5a' * 4096\n"
        "while True:\n"
        "    os.write(fd, block)\n"
        "    time.sleep(0.0005)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(p)])
    try:
        deadline = time.monotonic() + 10
        while p.stat().st_size == size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.stat().st_size > size, "the writer did not start"
        yield p
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()


@contextmanager
def writer_mid_transaction(env: Env) -> Iterator[Path]:
    """A writer holds an open write transaction: a hot rollback journal beside the file."""
    p = _db(env)
    conn = sqlite3.connect(p, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("UPDATE tags_final SET post_count = post_count + 1")
        assert Path(f"{p}-journal").stat().st_size > 0
        yield p
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def hostile_view_and_trigger(env: Env) -> AbstractContextManager[Path]:
    """tags_final is a view that would run for hours; triggers that would write."""
    return _just(_db(env, """
        ALTER TABLE tags_final RENAME TO tags_base;
        CREATE VIEW tags_final AS
            WITH RECURSIVE spin(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM spin
                                       WHERE x < 100000000000)
            SELECT b.* FROM tags_base b, spin WHERE spin.x % 1000000007 = b.id;
        CREATE TRIGGER wipe INSTEAD OF INSERT ON tags_final
            BEGIN DELETE FROM tags_base; END;
        CREATE TRIGGER wipe2 AFTER UPDATE ON tags_base
            BEGIN DELETE FROM tags_base; END;
    """))


def inside_store(env: Env) -> AbstractContextManager[Path]:
    return _just(env.root / "archive" / "release-1.db")


def the_live_symlink(env: Env) -> AbstractContextManager[Path]:
    return _just(env.live)


def symlink_to_live_file(env: Env) -> AbstractContextManager[Path]:
    p = env.tmp / "builds" / "link-to-live.db"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(os.path.realpath(env.live))
    return _just(p)


def no_read_permission(env: Env) -> AbstractContextManager[Path]:
    p = _db(env)
    p.chmod(0)
    return _just(p)


# name -> (maker, exit code, reject events expected)
CASES: dict[str, tuple[Callable[[Env], AbstractContextManager[Path]], int, int]] = {
    "missing": (missing, 2, 0),
    "folder": (folder, 2, 0),
    "empty": (empty, 1, 1),
    "truncated_whole_pages": (truncated, 1, 1),
    "truncated_mid_page": (truncated_mid_page, 1, 1),
    "truncated_64k_pages": (truncated_64k_pages, 1, 1),
    "random_bytes": (random_bytes, 1, 1),
    "not_sqlite": (not_sqlite, 1, 1),
    "bad_header": (bad_header, 1, 1),
    "corrupted_page": (corrupted_page, 1, 1),
    "missing_table": (missing_table, 1, 1),
    "missing_column": (missing_column, 1, 1),
    "empty_table": (empty_table, 1, 1),
    "confidence_out_of_range": (confidence_out_of_range, 1, 1),
    "confidence_null_everywhere": (confidence_null_everywhere, 1, 1),
    "huge_row_drop": (huge_row_drop, 1, 1),
    "foreign_key_violation": (foreign_key_violation, 1, 1),
    "dangling_symlink": (dangling_symlink, 2, 0),
    "fifo": (fifo, 2, 0),
    "being_written": (being_written, 1, 1),
    "writer_mid_transaction": (writer_mid_transaction, 1, 1),
    "hostile_view_and_trigger": (hostile_view_and_trigger, 1, 1),
    "inside_store": (inside_store, 2, 0),
    "the_live_symlink": (the_live_symlink, 2, 0),
    "symlink_to_live_file": (symlink_to_live_file, 2, 0),
    "no_read_permission": (no_read_permission, 2, 0),
}

# Root reads anything: drop the capabilities that let it (setpriv, util-linux).
NO_DAC_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
               "--"]


def _store_fingerprint(env: Env) -> dict:
    snap = env.snapshot()
    snap["archive"] = sorted(os.listdir(env.root / "archive"))
    snap["live_file_sha"] = sha256(env.live)
    return snap


def _source_fingerprint(path: Path) -> tuple | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o400:
        return (st.st_ino, st.st_size, st.st_mtime_ns, sha256(path))
    return (st.st_ino, st.st_mode)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_cleanly(published: Env, case: str) -> None:
    env = published
    maker, code, reject_events = CASES[case]
    prefix: list[str] = []
    if case == "no_read_permission" and os.geteuid() == 0:
        if shutil.which("setpriv") is None and os.environ.get("CI") != "true":
            pytest.skip("running as root without setpriv: root can read a mode-000 file")
        prefix = NO_DAC_CAPS
    if case == "hostile_view_and_trigger":
        # each of its ~7 gate queries spins until the limit: 100 ms, not the default
        env.write_config(query_timeout_ms="100")
    before = _store_fingerprint(env)
    history_before = env.history()
    with maker(env) as source:
        src_before = _source_fingerprint(source) if case != "being_written" else None
        proc = run_releaser(env, "publish", str(source), prefix=prefix, timeout=120)
        src_after = _source_fingerprint(source) if case != "being_written" else None

    assert proc.returncode == code, f"{case}: exit {proc.returncode}\n{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{case}: stderr is not one line:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert str(source) in lines[0], f"{case}: {lines[0]!r} does not name {source}"
    if case == "hostile_view_and_trigger":
        assert "exceeded the 100 ms time limit" in lines[0], lines[0]
        env.write_config()  # the good build below publishes under the default limit

    assert _store_fingerprint(env) == before, f"{case}: the store changed"
    history_after = env.history()
    new = history_after[: len(history_after) - len(history_before)]
    assert history_after[len(new):] == history_before
    assert len(new) == reject_events, f"{case}: new events {new}"
    assert all(e["action"] == "reject" for e in new)
    assert leftovers(env) == [], f"{case}: leftovers {leftovers(env)}"
    assert src_before == src_after, f"{case}: the source was modified"
    # and the store still works: the next good build publishes
    env.cli("publish", str(env.make_db("after.db", seed=99)))


def test_the_corpus_has_at_least_twenty_kinds() -> None:
    assert len(CASES) >= 20


def test_validate_refuses_the_same_files_without_touching_anything(published: Env) -> None:
    """`validate` (no store write at all) agrees with publish on content failures."""
    for case in ("corrupted_page", "missing_table", "confidence_out_of_range", "random_bytes"):
        maker, _code, _ = CASES[case]
        before = published.history()
        with maker(published) as source:
            proc = run_releaser(published, "validate", str(source))
        assert proc.returncode == 1, f"{case}: {proc.stderr}"
        assert str(source) in proc.stderr and "Traceback" not in proc.stderr
        assert published.history() == before


# -- edge inputs that are NOT bad: they must publish, and publish right -----------------


def _published_release(env: Env) -> Path:
    return Path(os.path.realpath(env.live))


def _journal_mode_and_perm(path: Path) -> tuple[str, int, int]:
    header = path.read_bytes()[:100]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
    assert header[18] == header[19] == 1, "header still says WAL"
    return mode, stat.S_IMODE(path.stat().st_mode), header[18]


def test_wal_source_with_pending_wal_publishes_committed_rows(published: Env) -> None:
    env = published
    src = env.make_db("wal.db", seed=21)
    conn = sqlite3.connect(src, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE wal_marker (v TEXT)")
    conn.execute("INSERT INTO wal_marker VALUES ('committed-in-wal')")
    conn.execute("UPDATE tags_final SET post_count = post_count + 7 WHERE id <= 100")
    # keep the connection open so the -wal is not checkpointed away on close
    assert Path(f"{src}-wal").stat().st_size > 0
    try:
        proc = run_releaser(env, "publish", str(src), "--json")
        assert proc.returncode == 0, proc.stderr
        assert Path(f"{src}-wal").stat().st_size > 0, "publish must not checkpoint the source"
    finally:
        conn.close()
    rel = _published_release(env)
    mode, perm, _ = _journal_mode_and_perm(rel)
    assert mode == "delete" and perm == 0o444
    ro = sqlite3.connect(f"file:{env.live}?mode=ro", uri=True)
    try:
        assert ro.execute("SELECT v FROM wal_marker").fetchone() == ("committed-in-wal",)
    finally:
        ro.close()
    assert not Path(f"{rel}-wal").exists() and not Path(f"{rel}-shm").exists()
    assert leftovers(env) == []


@pytest.mark.parametrize("wal_mode", [False, True])
def test_zero_byte_wal_beside_the_source_publishes_as_delete_mode(published: Env,
                                                                   wal_mode: bool) -> None:
    """A 0-byte -wal holds no frames: the file alone is the database (a checkpointed
    WAL-mode build looks like this). It publishes, and the release is DELETE mode."""
    env = published
    src = env.make_db(f"zwal-{wal_mode}.db", seed=31)
    if wal_mode:
        conn = sqlite3.connect(src, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    Path(f"{src}-wal").write_bytes(b"")
    # a warning: --strict refuses it with one line, nothing changed
    before = _store_fingerprint(env)
    strict = run_releaser(env, "publish", "--strict", str(src))
    assert strict.returncode == 1
    err = strict.stderr.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and "-wal exists (0 bytes)" in err[0]
    assert _store_fingerprint(env) == before
    # the refusal above is the process's exit code and stderr; what the publish makes of
    # the file is the same in-process
    doc = env.cli_json("publish", str(src))
    assert any("-wal exists (0 bytes)" in w for w in doc["warnings"])  # type: ignore[index]
    mode, perm, _ = _journal_mode_and_perm(_published_release(env))
    assert mode == "delete" and perm == 0o444
    assert leftovers(env) == []


@pytest.mark.parametrize("page_size", [512, 65536])
def test_other_page_sizes_publish_and_keep_their_page_size(published: Env,
                                                           page_size: int) -> None:
    env = published
    src = env.make_db(f"ps{page_size}.db", seed=41, page_size=page_size)
    # a page size other than the live release's is a warning: --strict refuses it
    before = _store_fingerprint(env)
    strict = run_releaser(env, "publish", "--strict", str(src))
    assert strict.returncode == 1
    err = strict.stderr.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and f"page size {page_size} differs" in err[0]
    assert _store_fingerprint(env) == before
    doc = env.cli_json("publish", str(src))  # in-process, as above
    assert any(f"page size {page_size} differs" in w
               for w in doc["warnings"])  # type: ignore[index]
    rel = _published_release(env)
    conn = sqlite3.connect(f"file:{rel}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == page_size
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    assert sha256(rel) == sha256(src)


WRITER = r"""
import random, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
r = random.Random(1)
while True:
    c.execute("BEGIN IMMEDIATE")
    for _ in range(200):
        delta = r.randint(1, 9)
        c.execute("UPDATE tags_final SET post_count = post_count + ? WHERE id = ?",
                  (delta, r.randint(9, 3000)))
        c.execute("UPDATE ledger SET total = total + ?", (delta,))
    c.execute("COMMIT")
    time.sleep(0.02)
"""


def test_publish_while_a_sqlite_writer_commits_gets_one_committed_state(published: Env
                                                                        ) -> None:
    """A build still being written (DELETE mode, commits all the time): each publish is
    refused (exit 1, one line) or publishes one committed state, never a torn copy.
    The writer keeps ledger.total == SUM(post_count) in every transaction."""
    env = published
    src = _db(env, "CREATE TABLE ledger AS SELECT SUM(post_count) AS total FROM tags_final;")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(src)])
    outcomes = []
    try:
        time.sleep(0.2)
        # a publish that starts while the writer's journal exists is refused (hot
        # journal); one that starts between transactions copies while commits wait
        for _ in range(40):
            if len(outcomes) >= 8 and 0 in outcomes:
                break
            proc = run_releaser(env, "publish", str(src))
            outcomes.append(proc.returncode)
            assert proc.returncode in (0, 1), proc.stderr
            assert len(proc.stderr.strip().splitlines()) == (proc.returncode != 0), proc.stderr
            if proc.returncode == 0:
                conn = sqlite3.connect(f"file:{env.live}?mode=ro", uri=True)
                try:
                    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                    total, summed = conn.execute(
                        "SELECT (SELECT total FROM ledger), "
                        "(SELECT SUM(post_count) FROM tags_final)").fetchone()
                finally:
                    conn.close()
                assert total == summed, "the release mixes two transactions"
    finally:
        writer.kill()
        writer.wait()
    assert leftovers(env) == []
    # refusing every attempt would pass the checks above: at least one must publish a
    # committed state (staging holds a SQLite read lock, so the writer waits for the copy)
    assert 0 in outcomes, f"no publish succeeded while the writer ran: {outcomes}"
    print("publish exits while writing:", outcomes)


def test_dry_run_of_a_warned_build_still_shows_the_diff(published: Env) -> None:
    src = published.make_db("ps512-dry.db", seed=41, page_size=512)
    doc = published.cli_json("publish", "--dry-run", str(src))
    assert doc["outcome"] == "validated" and doc["diff"] is not None
    assert any("page size 512 differs" in w for w in doc["warnings"])
