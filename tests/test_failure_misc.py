"""Failure paths around the pipeline (issue 11, items 2, 5, 9, 11, 12, 13).

Paths compared resolved; hooks judged by their exit status, their process group
killed when interrupted, their output streamed into a bounded tail; a briefly
locked state.db is a retry for the watcher; status probes the flock; one-line
output for names with newlines; inbox folders recreated; rollback says what it
skipped.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import faults
from .conftest import RELEASER_BIN, Env, config_text
from .robust import peak_rss_kib
from .test_watch import Watch

# -- item 2: the same store through another spelling of its path ---------------


def test_store_reached_through_a_symlinked_parent_is_the_same_store(
        published: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # in-process commands (releaser keeps no path caches between them): this is about
    # how paths resolve, not about the process
    alias = published.tmp.parent / f"{published.tmp.name}-alias"
    alias.symlink_to(published.tmp)
    try:
        cfg = published.tmp / "alias.toml"
        cfg.write_text(config_text(alias / "app" / "tags.db", alias / "store"))
        via_alias = Env(tmp=published.tmp, config=cfg, live=alias / "app" / "tags.db",
                        root=alias / "store")
        via_alias.cli("check", "--json")
        status = via_alias.status()
        assert status["live"]["release_id"] == 2 and not status["problems"], status
        # relative root/live from another working directory
        monkeypatch.chdir(alias)
        rel = published.cli_json("--root", "store", "--live", "app/tags.db", "status")
        assert rel["live"]["release_id"] == 2  # type: ignore[index]
        via_alias.cli("publish", str(published.make_db("three.db", seed=3)))
        assert published.status()["live"]["release_id"] == 3
    finally:
        alias.unlink()


# -- hooks: items 5, 11, 12 ------------------------------------------------------


def test_hook_leaving_a_background_child_is_judged_by_its_exit_status(
        published: Env) -> None:
    """Item 5: `sh -c 'sleep 30 & exit 0'` succeeded; its child holds the pipe."""
    published.write_config("""
[hooks]
before_swap = [{ argv = ["sh", "-c", "sleep 30 & exit 0"], timeout_s = 5 }]
""")
    doc = published.cli_json("publish", str(published.make_db("three.db", seed=3)))
    assert doc["outcome"] == "published", doc


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_interrupting_a_hook_kills_its_process_group(published: Env) -> None:
    """Item 11: SIGTERM to publish while an after_swap hook runs: no hook left behind."""
    pids = published.tmp / "hook.pids"
    published.write_config(f"""
[hooks]
after_swap = [{{ argv = ["sh", "-c", "sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait"], timeout_s = 60 }}]
""")
    proc = subprocess.Popen([str(RELEASER_BIN), "--config", str(published.config), "publish",
                             str(published.make_db("three.db", seed=3))],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    left = [int(p) for p in pids.read_text().split()]
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in left), left


def test_a_signal_while_a_hook_starts_still_kills_it(published: Env) -> None:
    """SIGTERM the moment the hook's Popen returned (before run_command could wait on
    it, as a loaded machine allows): the hook is killed all the same."""
    pidfile = published.tmp / "hook.pid"
    published.write_config("""
[hooks]
after_swap = [{ argv = ["sleep", "60"], timeout_s = 60 }]
""")
    setup = ("patch('subprocess.Popen', after=lambda p, argv, *a, **k: "
             f"(__import__('pathlib').Path({str(pidfile)!r}).write_text(str(p.pid)), "
             "signal_self(signal.SIGTERM)) if argv[:1] == ['sleep'] else None)")
    proc = subprocess.run(faults.argv("--config", str(published.config), "publish",
                                      str(published.make_db("three.db", seed=3)), setup=setup),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    hook = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(hook) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(hook), "the hook outlived the interrupted publish"


def test_hook_printing_300_mb_keeps_publish_memory_flat(published: Env) -> None:
    """Item 12: a hook's output is streamed and only a bounded tail kept."""
    script = published.tmp / "loud.py"
    script.write_text("import sys\nfor _ in range(300):\n    sys.stdout.write('x' * 1000000)\n"
                      "print('the last line')\n")
    published.write_config(f"""
[hooks]
after_swap = [{{ argv = ["{sys.executable}", "{script}"], timeout_s = 60 }}]
""")
    rss, code = peak_rss_kib([str(RELEASER_BIN), "--config", str(published.config),
                               "publish", str(published.make_db("three.db", seed=3))])
    assert code == 0
    assert rss < 100 * 1024, f"peak RSS {rss / 1024:.0f} MB"


# -- item 11: status probes the flock, not the pid --------------------------------


def test_status_ignores_a_lock_file_naming_a_live_pid_that_holds_no_lock(
        published: Env) -> None:
    lock = published.root / "lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "command": "publish old",
                                "since": "2026-01-01T00:00:00Z"}))
    assert published.status()["lock"] is None
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert published.status()["lock"]["pid"] == os.getpid()
    finally:
        os.close(fd)


# -- item 9: state.db briefly locked is not a rejection ---------------------------


def test_watch_retries_when_state_db_is_briefly_locked(published: Env) -> None:
    inbox = published.tmp / "inbox"
    inbox.mkdir()
    published.write_config(f'[watch]\ninbox = "{inbox}"\nsettle_s = 0.2\nlock_retry_s = 0.2\n')
    once = """
import sqlite3
calls = [0]
def locked(*a, **k):
    calls[0] += 1
    if calls[0] == 1:
        raise sqlite3.OperationalError("database is locked")
patch("StateDB.add_release", before=locked)
"""
    db = published.make_db("three.db", seed=3)
    os.replace(db, inbox / "three.db")
    proc = subprocess.Popen(faults.argv("--config", str(published.config), "watch", "--json",
                                        setup=once),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 40
        while not (inbox / "done" / "three.db").exists():
            assert not (inbox / "rejected" / "three.db").exists(), proc.stderr
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# -- item 13: the small ones -------------------------------------------------------


def test_file_name_with_a_newline_is_escaped_in_history(published: Env) -> None:
    db = published.tmp / "bad\nname.db"
    db.write_bytes(published.live.read_bytes())
    Path(f"{db}-journal").write_bytes(b"\0" * 512)  # a hot journal: the reason names it
    published.cli("publish", str(db), expect=1)
    out = published.cli("history", "--limit", "1").stdout
    assert len(out.strip().splitlines()) == 2, out  # the header, then one event
    assert "bad\\nname.db" in out


def test_inbox_moved_away_and_recreated_gets_done_and_rejected_again(
        published: Env) -> None:
    inbox = published.tmp / "inbox"
    inbox.mkdir()
    published.write_config(f'[watch]\ninbox = "{inbox}"\nsettle_s = 0.2\n')
    # replaced inside the watcher just as it sends READY=1 (after its "watching" line):
    # the identity it compares against must be the folder it watches, taken before, or
    # the new folder is left to the 30 s rescan and never gets done/ and rejected/
    old = published.tmp / "inbox.old"
    setup = (f"patch('releaser.sdnotify.notify', before=lambda *a, **k: 'READY=1' in a "
             f"and (os.rename({str(inbox)!r}, {str(old)!r}), os.mkdir({str(inbox)!r})))")
    w = Watch(published, runner=lambda *args: faults.argv(*args, setup=setup))
    try:
        w.wait_log("watching")
        deadline = time.monotonic() + 10  # well before the 30 s rescan
        while not ((inbox / "done").is_dir() and (inbox / "rejected").is_dir()):
            assert time.monotonic() < deadline and w.proc.poll() is None, "".join(w.stderr)
            time.sleep(0.05)
        assert (old / "done").is_dir()  # it did replace the folder the watcher had made
        db = published.make_db("three.db", seed=3)
        os.replace(db, inbox / "three.db")
        deadline = time.monotonic() + 20
        while not (inbox / "done" / "three.db").exists():
            assert time.monotonic() < deadline and w.proc.poll() is None, "".join(w.stderr)
            time.sleep(0.1)
    finally:
        w.stop()


def test_rollback_says_which_releases_it_skipped_because_their_files_are_gone(
        published: Env) -> None:
    published.cli("publish", str(published.make_db("three.db", seed=3)))
    # release 2 (idle) loses its files: rollback goes to 1 and says why not 2
    for p in published.root.rglob("release-2.db"):
        p.unlink()
    res = published.cli("rollback")
    assert "release 2" in (res.stdout + res.stderr) and "skipp" in (res.stdout + res.stderr)
    assert published.status()["live"]["release_id"] == 1
