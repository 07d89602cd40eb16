"""On call at 3 a.m.: rollback that always helps, honest status, exit codes that mean something.

The commands under test run as the installed `releaser` in real subprocesses on real
stores; the publishes that only set a store up run in-process (CliRunner), as the
conftest `published` fixture does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import RELEASER_BIN, Env


def publish_n(env: Env, n: int) -> list[Path]:
    """Set-up: releases 1..n, in-process (no test here is about these publishes)."""
    builds = [env.make_db(f"b{i}.db", rows=600 + i, seed=i) for i in range(1, n + 1)]
    for b in builds:
        env.cli("publish", str(b))
    return builds


def live_id(env: Env) -> int | None:
    return env.status()["live"]["release_id"]


def damage_in_place(path: Path) -> None:
    """Bytes overwritten inside the live file: same size, a new mtime."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(4096 + 100)
        fh.write(b"\xde\xad\xbe\xef" * 64)


def events(env: Env, action: str | None = None) -> list[dict]:
    return [e for e in env.history() if action is None or e["action"] == action]


# -- 1. rollback that always helps ---------------------------------------------------


def test_each_rollback_goes_one_step_further_back(store: Env) -> None:
    publish_n(store, 5)
    assert live_id(store) == 5
    seen = []
    for step in range(3):  # the last one as the installed command, the walk in-process
        (store.run if step == 2 else store.cli)("rollback", "--reason", "walk back")
        seen.append(live_id(store))
    assert seen == [4, 3, 2]  # Capistrano order, never back to one rolled back from


def test_rollback_skips_bad_releases(store: Env) -> None:
    publish_n(store, 3)
    # release 2 went bad (as the monitor marks one it reverted from)
    conn = sqlite3.connect(store.root / "state.db")
    with conn:
        conn.execute("UPDATE releases SET status = 'bad' WHERE id = 2")
    conn.close()
    store.run("rollback")
    assert live_id(store) == 1


def test_nothing_older_exit_4_names_the_rollback_to_command(store: Env) -> None:
    publish_n(store, 2)
    store.cli("rollback")  # 2 -> 1: release 2 is rolled back from, still good, idle
    proc = store.run("rollback", expect=4)
    err = proc.stderr
    # what `rollback --to` accepts: id, published time and status, and the exact command
    assert re.search(r"release 2\b.*\d{4}-\d\d-\d\dT\d\d:\d\d.*idle", err), err
    assert f"releaser --config {store.config} rollback --to 2" in err, err
    assert "Traceback" not in err
    assert live_id(store) == 1


def test_3am_trap_status_says_unhealthy_and_one_command_fixes_it(store: Env) -> None:
    """Live damaged in place, a good release in the idle slot it was rolled back from."""
    publish_n(store, 2)
    store.cli("rollback")  # live 1, idle 2 (rolled back from, good)
    damage_in_place(store.live.resolve())
    st = store.run("status").stdout
    live_line = next(line for line in st.splitlines() if line.startswith("live:"))
    assert "UNHEALTHY" in live_line and "not release 1 as recorded" in live_line, st
    assert "(good)" not in live_line, st
    assert "rollback --to 2" in st, st  # what to type, not "nothing to roll back to"
    doc = store.cli_json("status")
    assert doc["live"]["health"]["ok"] is False  # type: ignore[index]
    # the printed command works
    proc = store.run("rollback", expect=4)
    cmd = re.search(r"`(releaser [^`]*rollback --to 2)`", proc.stderr)
    assert cmd, proc.stderr
    argv = cmd.group(1).split()
    subprocess.run([str(RELEASER_BIN), *argv[1:]], check=True, capture_output=True)
    assert live_id(store) == 2
    assert "UNHEALTHY" not in store.cli("status").stdout


def test_status_health_comes_from_the_last_check_too(store: Env) -> None:
    publish_n(store, 1)
    store.cli("check")
    assert "healthy" in next(x for x in store.run("status").stdout.splitlines()
                             if x.startswith("live:"))





def test_republishing_the_live_build_repairs_a_damaged_live_file(store: Env) -> None:
    builds = publish_n(store, 2)
    damage_in_place(store.live.resolve())
    store.cli("check", expect=1)
    doc = json.loads(store.run("publish", str(builds[1]), "--json").stdout)
    assert doc["outcome"] == "published", doc
    assert doc["data"]["release_id"] == 3
    assert live_id(store) == 3
    store.cli("check", "--hash")  # a healthy copy of the same build is live again
    assert not events(store, "reject")


# -- 2. --expect-live, --wait remembers live -------------------------------------------


def test_expect_live_mismatch_exits_3_and_changes_nothing(store: Env) -> None:
    publish_n(store, 3)
    before = store.snapshot()
    proc = store.run("rollback", "--expect-live", "2", expect=3)
    assert "2" in proc.stderr and "3" in proc.stderr and "live" in proc.stderr
    assert store.snapshot() == before
    store.run("rollback", "--expect-live", "3")
    assert live_id(store) == 2


def _wait_has_lock_open(pid: int, lock: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            break
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(lock):
                    return
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never opened {lock}")


def test_rollback_wait_refuses_when_live_changed_while_waiting(store: Env) -> None:
    builds = publish_n(store, 2)
    go, started = store.tmp / "go", store.tmp / "started"
    hook = f"touch {started}; while [ ! -e {go} ]; do sleep 0.05; done"
    store.write_config(f'[hooks]\nbefore_swap = [{{ argv = ["sh", "-c", "{hook}"], '
                       "timeout_s = 60 }]\n")
    pub = subprocess.Popen([str(RELEASER_BIN), "--config", str(store.config), "publish",
                            str(store.make_db("b3.db", rows=700, seed=3))],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline and pub.poll() is None, pub.communicate()
            time.sleep(0.05)
        # issued while release 2 is live and the publish of 3 holds the lock
        rb = subprocess.Popen([str(RELEASER_BIN), "--config", str(store.config), "rollback",
                               "--wait", "60"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        _wait_has_lock_open(rb.pid, store.root / "lock")
        go.touch()
        assert pub.wait(30) == 0
        out, err = rb.communicate(timeout=30)
    finally:
        go.touch()
        pub.kill()
    assert rb.returncode == 3, err
    assert "release 2" in err and "release 3" in err, err
    assert live_id(store) == 3  # the new release stays; nothing was rolled back
    assert not events(store, "rollback")
    del builds


# -- 3. identical publish ----------------------------------------------------------------


def test_identical_publish_is_success_unchanged_and_records_nothing(store: Env) -> None:
    builds = publish_n(store, 2)
    before = (store.cli_json("releases"), store.history())
    doc = json.loads(store.run("publish", str(builds[1]), "--json").stdout)
    assert doc["outcome"] == "unchanged", doc
    assert doc["data"]["release_id"] == 2  # the live release, no new id
    human = store.cli("publish", str(builds[1])).stdout
    assert "unchanged" in human and "release 2" in human
    assert (store.cli_json("releases"), store.history()) == before
    store.cli("publish", str(store.make_db("b3.db", rows=800, seed=3)))
    assert store.status()["live"]["release_id"] == 3  # no id was used up


# -- 4. interruption -----------------------------------------------------------------------


SLOW_CHECK = """
[[checks]]
name = "slow"
sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000000) SELECT count(*) FROM c"
"""


def _cpu_s(pid: int) -> float:
    """user + system CPU seconds of a running process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupt_during_the_gates_exits_130_and_records_no_reject(store: Env, sig: int
                                                                      ) -> None:
    publish_n(store, 1)
    store.write_config(SLOW_CHECK, query_timeout_ms="60000")
    before = (store.cli_json("releases"), store.history(), store.snapshot())
    proc = subprocess.Popen(
        [str(RELEASER_BIN), "--config", str(store.config), "-v", "publish",
         str(store.make_db("b2.db", rows=700, seed=2))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    deadline = time.monotonic() + 30
    for line in proc.stderr:  # -v logs each phase as it ends; the checks come after integrity
        lines.append(line)
        if re.search(r"\bintegrity\b.*\bdone\b", line) or time.monotonic() > deadline:
            break
    # the signal lands while the slow check's statement runs: once the process has
    # spent CPU past the integrity gate (was a fixed 0.3 s sleep after staging)
    start = _cpu_s(proc.pid)
    while _cpu_s(proc.pid) < start + 0.05 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    err = "".join(lines) + err
    assert proc.returncode == 130, err
    assert "live is release 1" in err, err  # says what is live, truthfully
    assert "history" not in err.splitlines()[-1]  # no pointer to an entry that is not there
    assert (store.cli_json("releases"), store.history(), store.snapshot()) == before
    assert not list((store.root / "slots").rglob(".staging*"))


def test_a_slow_probe_run_warns_but_never_refuses_a_rollback(published: Env) -> None:
    """One probe run over its budget (a busy host during an incident) is no p95: the
    rollback goes ahead with a warning; the publish gate still judges the p95."""
    published.write_config(budget_ms="0.000001")  # every run is "slow"
    out = published.run("rollback", "--reason", "INC-7", "--json")
    doc = json.loads(out.stdout)
    assert doc["outcome"] == "ok" and published.status()["live"]["release_id"] == 1
    refused = published.run("validate", str(published.make_db("three.db", seed=3)),
                            expect=1)
    assert "exceeds the 1e-06 ms budget" in refused.stdout + refused.stderr
