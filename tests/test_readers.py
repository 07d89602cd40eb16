"""Readers never notice a release: external sqlite3 CLI processes and Python readers open
live_path in a loop while publish/rollback cycles run.

Every build carries a marker row (its seed, row count and SUM(post_count)); each read is
one statement that returns the marker and the recount, so a read that mixed two
releases, or saw half a file, would not match. Zero failed reads are allowed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from releaser import publish, rollback
from releaser.config import load_config
from tests.sample import write_sample

from .conftest import Env
from .robust import assert_live_is_recorded_and_sound, leftovers

SEEDS = (11, 12, 13, 14)
READ_SQL = ("SELECT m.seed, m.n, m.total, (SELECT COUNT(*) FROM tags_final), "
            "(SELECT SUM(post_count) FROM tags_final) FROM release_marker m")

CLI_LOOP = r"""
while [ ! -e "$STOP" ]; do
  out=$(sqlite3 -readonly -bail -separator ' ' "$LIVE" "$SQL" 2>&1)
  echo "$? $out"
done
"""

PY_READERS = r"""
import sqlite3, sys, threading, os
live, stop, out = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()
def reader():
    lines = []
    while not os.path.exists(stop):
        try:
            conn = sqlite3.connect(f"file:{live}?mode=ro", uri=True, timeout=5)
            try:
                row = conn.execute(sys.argv[4]).fetchone()
            finally:
                conn.close()
            lines.append("0 " + " ".join(str(v) for v in row))
        except Exception as exc:
            lines.append(f"1 {type(exc).__name__}: {exc}")
    with lock, open(out, "a") as fh:
        fh.write("\n".join(lines) + "\n")
threads = [threading.Thread(target=reader) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
"""


@pytest.fixture(scope="module")
def marked_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("reader-builds")
    out = {}
    for seed in SEEDS:
        path = write_sample(d / f"m{seed}.db", rows=5000, seed=seed)
        conn = __import__("sqlite3").connect(path)
        conn.execute(f"CREATE TABLE release_marker AS SELECT {seed} AS seed, COUNT(*) AS n, "
                     "SUM(post_count) AS total FROM tags_final")
        conn.commit()
        conn.close()
        out[seed] = path
    return out


def _parse(lines: list[str], who: str) -> tuple[int, set[int]]:
    reads, seeds = 0, set()
    for line in lines:
        if not line.strip():
            continue
        rc, _, rest = line.partition(" ")
        assert rc == "0", f"{who}: failed read: {line}"
        seed, n, total, count, summed = (int(v) for v in rest.split())
        assert (n, total) == (count, summed), f"{who}: torn read: {line}"
        assert seed in SEEDS
        reads += 1
        seeds.add(seed)
    return reads, seeds


def _cycles(env: Env, builds: dict[int, Path], cycles: int) -> None:
    # This test is about whole reads, not probe speed: the readers hammer the same file on
    # a shared machine, so the default 100 ms probe budget would make it a timing test,
    # and 2 probe runs instead of 20 shorten each cycle (the readers spin all along).
    env.write_config(budget_ms="10000", probe_runs="2")
    config = load_config(env.config)
    publish.publish(config, builds[SEEDS[0]], actor="readers-test")
    others = [builds[s] for s in SEEDS[1:]]
    stop = env.tmp / "STOP"
    cli_logs = [env.tmp / f"cli-{i}.log" for i in range(2)]
    py_log = env.tmp / "py.log"
    readers = [
        subprocess.Popen(["bash", "-c", CLI_LOOP], stdout=open(log, "w"),  # noqa: SIM115
                         env={**os.environ, "STOP": str(stop), "LIVE": str(env.live),
                              "SQL": READ_SQL})
        for log in cli_logs
    ]
    readers.append(subprocess.Popen(
        [sys.executable, "-c", PY_READERS, str(env.live), str(stop), str(py_log), READ_SQL]))
    try:
        deadline = time.monotonic() + 30
        while not all(log.stat().st_size for log in cli_logs):  # the readers are reading
            assert time.monotonic() < deadline, "the sqlite3 readers never read"
            time.sleep(0.01)
        for i in range(cycles):
            # publish a new build, then roll back to the one before: live flips each time
            publish.publish(config, others[i % len(others)], actor="readers-test")
            rollback.rollback(config, actor="readers-test", reason=f"cycle {i}")
    finally:
        stop.touch()
        for proc in readers:
            proc.wait(timeout=60)
    total_reads, seen = 0, set()
    for log in [*cli_logs, py_log]:
        reads, seeds = _parse(log.read_text().splitlines(), log.name)
        assert reads > 0, f"{log.name}: no reads"
        total_reads += reads
        seen |= seeds
    assert len(seen) >= 2, "the readers never saw a swap"
    assert assert_live_is_recorded_and_sound(env)
    assert leftovers(env) == []
    print(f"{cycles} cycles, {total_reads} whole reads, seeds seen {sorted(seen)}")


def test_readers_see_whole_releases_during_50_cycles(store: Env,
                                                     marked_builds: dict[int, Path]) -> None:
    _cycles(store, marked_builds, 50)


@pytest.mark.stress
def test_readers_see_whole_releases_during_200_cycles(store: Env,
                                                      marked_builds: dict[int, Path]) -> None:
    _cycles(store, marked_builds, 200)
