"""Disk full while staging: RLIMIT_FSIZE on a real `releaser publish` subprocess.

CPython ignores SIGXFSZ, so a write past the limit fails with EFBIG (as ENOSPC would on
a full disk). The publish must exit 5 with one line, leave nothing partial in the store,
and leave live, the slots and history (apart from one reject event) as they were.
"""

from __future__ import annotations

import resource
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Env
from .robust import assert_live_is_recorded_and_sound, leftovers, run_releaser

# fixtures: `published` here is a clone of one store built per module
from .store_clone import cloned_published, published_template  # noqa: F401

LIMIT = 2 << 20  # bytes: more than state.db needs, far less than the candidate


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


# rows and seeds of tests/test_crash.py's builds: the session generates them once (sample.py)
def _plain(env: Env) -> Path:
    return env.make_db("big.db", rows=40_000, seed=1)


def _with_pending_wal(env: Env) -> Path:
    """Goes through SQLite's backup API instead of the streamed copy."""
    src = env.make_db("big-wal.db", rows=40_000, seed=3)
    conn = sqlite3.connect(src, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("UPDATE tags_final SET post_count = post_count + 1 WHERE id <= 50")
    _open_writers.append(conn)  # the -wal stays pending while the writer is open
    assert Path(f"{src}-wal").stat().st_size > 0
    return src


_open_writers: list[sqlite3.Connection] = []


@pytest.mark.parametrize("make", [_plain, _with_pending_wal], ids=["stream-copy", "backup-api"])
def test_disk_full_while_staging_is_exit_5_and_leaves_nothing(
        published: Env, make: Callable[[Env], Path]) -> None:
    env = published
    source = make(env)
    assert source.stat().st_size > 2 * LIMIT
    before = env.snapshot()
    history_before = env.history()
    try:
        proc = run_releaser(env, "publish", str(source), preexec_fn=_limit_file_size)
    finally:
        while _open_writers:
            _open_writers.pop().close()
    assert proc.returncode == 5, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(env.root) in lines[0] and ("too large" in lines[0] or "space" in lines[0]), lines
    assert env.snapshot() == before
    history_after = env.history()
    new = history_after[: len(history_after) - len(history_before)]
    assert len(new) <= 1 and all(e["action"] == "reject" for e in new), new
    assert leftovers(env) == []
    assert_live_is_recorded_and_sound(env)
    # room again: the same build publishes
    env.cli("publish", str(source))
    assert leftovers(env) == []
