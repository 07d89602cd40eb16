"""`releaser watch` as a real subprocess, with files arriving in a real inbox."""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from releaser.store import Store
from tests.conftest import RELEASER_BIN, Env


class Watch:
    """The watcher process; its JSON lines (one per processed file) on a queue."""

    def __init__(self, env: Env, *args: str,
                 preexec_fn: Callable[[], None] | None = None,
                 runner: Callable[..., list[str]] | None = None) -> None:
        """runner: builds the command from releaser's arguments (e.g. faults.argv)."""
        releaser_args = ["--config", str(env.config), "-v", "watch", "--json", *args]
        cmd = runner(*releaser_args) if runner else [str(RELEASER_BIN), *releaser_args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
        self.results: queue.Queue[dict] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.results.put(json.loads(line)["data"])  # one envelope per line

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def next(self, timeout: float = 30) -> dict:
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no result from the watcher; stderr:\n"
                                 + "".join(self.stderr)) from None

    def wait_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.stderr):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not logged; stderr:\n" + "".join(self.stderr))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def inbox(store: Env) -> Path:
    box = store.tmp / "inbox"
    store.write_config(f'[watch]\ninbox = "{box}"\nsettle_s = 0.3\nlock_retry_s = 0.2\n')
    return box


@pytest.fixture
def watcher(store: Env, inbox: Path) -> Iterator[Watch]:
    w = Watch(store)
    yield w
    w.stop()


def reason(inbox: Path, folder: str, name: str) -> dict:
    return json.loads((inbox / folder / f"{name}.reason.json").read_text())


def test_present_slow_renamed_and_garbage_files(store: Env, inbox: Path) -> None:
    inbox.mkdir()
    # already there when the watcher starts
    store.make_db("early.db", seed=1).rename(inbox / "early.db")
    w = Watch(store)
    try:
        got = w.next()
        assert (got["file"], got["outcome"], got["release_id"]) == ("early.db", "published", 1)
        assert (inbox / "done" / "early.db").is_file() and not (inbox / "early.db").exists()
        assert reason(inbox, "done", "early.db")["outcome"] == "published"

        # a slow writer: chunks with pauses shorter than settle_s, published once, whole
        src = store.make_db("slow.db", seed=2).read_bytes()
        with open(inbox / "slow.db", "wb") as fh:
            for i in range(0, len(src), len(src) // 8 + 1):
                fh.write(src[i:i + len(src) // 8 + 1])
                fh.flush()
                time.sleep(0.1)
        got = w.next()
        assert (got["file"], got["outcome"]) == ("slow.db", "published")
        assert (inbox / "done" / "slow.db").read_bytes() == src
        assert store.status()["live"]["release_id"] == got["release_id"]

        # written under a dot-name (ignored), then renamed into place
        tmp = inbox / ".renamed.db.part"
        store.make_db("renamed.db", seed=3).rename(tmp)
        (inbox / "x.db-journal").write_bytes(b"")  # side files are never candidates
        tmp.rename(inbox / "renamed.db")
        got = w.next()
        assert (got["file"], got["outcome"]) == ("renamed.db", "published")

        # garbage ends in rejected/ with the reason, and the watcher carries on
        (inbox / "garbage.db").write_bytes(os.urandom(20000))
        got = w.next()
        assert (got["file"], got["outcome"]) == ("garbage.db", "rejected")
        why = reason(inbox, "rejected", "garbage.db")
        assert why["outcome"] == "rejected" and why["release_id"] is not None
        assert "not a SQLite database" in why["reasons"][0]
        assert (inbox / "rejected" / "garbage.db").is_file()

        # the same build again: already live, so done/ as unchanged, under a fresh name
        (inbox / "done" / "renamed.db").rename(inbox / "renamed.db")
        got = w.next()
        assert got["outcome"] == "unchanged"
        assert "identical to the live release" in got["reasons"][0]
        assert "/done/renamed.db" in got["moved_to"]

        assert (inbox / "x.db-journal").exists()  # ignored, untouched
        assert w.results.empty()
        assert w.stop() == 0  # SIGTERM: clean exit
        assert "Traceback" not in "".join(w.stderr) and "ERROR" not in "".join(w.stderr)
    finally:
        w.stop()
    history = store.history()
    assert sum(e["action"] == "publish" for e in history) == 3
    assert all(e["actor"] == "watch" for e in history)


def test_polling_observer_sees_a_rename(store: Env, inbox: Path) -> None:
    w = Watch(store, "--polling")
    try:
        w.wait_log("(polling, settle 0.3 s)")
        store.make_db("p.db", seed=5).rename(inbox / "p.db")
        got = w.next()
        assert (got["file"], got["outcome"]) == ("p.db", "published")
    finally:
        assert w.stop() == 0


def test_busy_lock_is_retried_not_rejected(store: Env, inbox: Path, watcher: Watch) -> None:
    watcher.wait_log("watching")
    with Store(store.root, store.live).lock("test holds the lock"):
        store.make_db("wait.db", seed=6).rename(inbox / "wait.db")
        watcher.wait_log("trying again in 0.2 s")
        assert (inbox / "wait.db").exists()
        assert not (inbox / "rejected").joinpath("wait.db").exists()
    got = watcher.next()
    assert (got["file"], got["outcome"]) == ("wait.db", "published")


def test_a_reverted_publish_goes_to_rejected(store: Env, inbox: Path) -> None:
    store.write_config(f'[watch]\ninbox = "{inbox}"\nsettle_s = 0.3\n'
                       '[verify]\n[[verify.exec]]\nargv = ["false"]\n')
    w = Watch(store)
    try:
        w.wait_log("watching")  # the watcher creates the inbox
        store.make_db("v.db", seed=7).rename(inbox / "v.db")
        got = w.next()
        assert got["outcome"] == "reverted" and "exec false: exit 1" in got["reasons"][0]
        assert reason(inbox, "rejected", "v.db")["outcome"] == "reverted"
        assert store.status()["live"]["release_id"] is None  # first release: nothing live
    finally:
        assert w.stop() == 0


def test_watch_without_inbox_is_usage_error(store: Env) -> None:
    r = store.run("watch", expect=2)
    assert "[watch] inbox is not set" in r.stderr and "--inbox DIR" in r.stderr


def test_watch_without_store_is_usage_error(env: Env) -> None:
    r = env.run("watch", "--inbox", str(env.tmp / "inbox"), expect=2)
    assert "run `releaser init` first" in r.stderr


def test_a_new_build_dropped_under_the_same_name_is_published_too(store: Env,
                                                                  inbox: Path) -> None:
    # the after_swap hook of the first publish drops build B under the same name (once)
    b = store.make_db("b.db", seed=12)
    target = inbox / "a.db"
    store.write_config(
        f'[watch]\ninbox = "{inbox}"\nsettle_s = 0.3\n[hooks]\nafter_swap = [{{ argv = '
        f'["sh", "-c", "if [ -e {b} ]; then mv {b} {target}; fi"], timeout_s = 10 }}]\n')
    w = Watch(store)
    try:
        w.wait_log("watching")
        a_bytes = store.make_db("a.db", seed=11).read_bytes()
        store.make_db("a.db", seed=11).rename(target)
        first = w.next()
        assert (first["file"], first["outcome"], first["release_id"]) == ("a.db", "published", 1)
        assert first["moved_to"] is None and first["replaced"] is True  # B was left alone
        second = w.next()
        assert (second["file"], second["outcome"], second["release_id"]) == (
            "a.db", "published", 2)
        assert reason(inbox, "done", "a.db")["release_id"] == 2
        assert (inbox / "done" / "a.db").read_bytes() != a_bytes
        assert store.status()["live"]["release_id"] == 2
        assert not target.exists()
    finally:
        assert w.stop() == 0


def test_a_source_locked_by_its_writer_is_retried_not_rejected(store: Env, inbox: Path,
                                                               watcher: Watch) -> None:
    watcher.wait_log("watching")
    src = store.make_db("locked.db", seed=13)
    writer = sqlite3.connect(src, isolation_level=None)
    try:
        writer.execute("BEGIN EXCLUSIVE")  # no reader gets in; size and mtime stay put
        src.rename(inbox / "locked.db")
        watcher.wait_log("temporary failure (try 1 of 6)", timeout=60)
        assert (inbox / "locked.db").exists()
        assert not (inbox / "rejected" / "locked.db").exists()
    finally:
        writer.close()
    got = watcher.next(timeout=60)
    assert (got["file"], got["outcome"]) == ("locked.db", "published")
    assert reason(inbox, "done", "locked.db")["outcome"] == "published"


LIMIT = 2 << 20  # RLIMIT_FSIZE: far less than the candidate (see test_diskfull.py)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_store_io_error_is_retried_then_rejected_with_the_count(store: Env,
                                                                inbox: Path) -> None:
    # the delay doubles from lock_retry_s: 0.05 s makes the five waits 1.55 s in all
    store.write_config(f'[watch]\ninbox = "{inbox}"\nsettle_s = 0.3\nlock_retry_s = 0.05\n')
    w = Watch(store, preexec_fn=_limit_file_size)  # every staging copy fails (EFBIG)
    try:
        w.wait_log("watching")
        big = store.make_db("big.db", rows=40_000, seed=14)
        assert big.stat().st_size > 2 * LIMIT
        big.rename(inbox / "big.db")
        got = w.next(timeout=90)
        assert (got["file"], got["outcome"], got["attempts"]) == ("big.db", "error", 6)
        why = reason(inbox, "rejected", "big.db")
        assert why["reasons"][0].startswith("gave up after 6 tries (temporary failure")
        assert "too large" in why["reasons"][0] or "space" in why["reasons"][0]
        assert sum("temporary failure (try" in line for line in w.stderr) == 5
    finally:
        assert w.stop() == 0


def test_an_inbox_under_a_missing_folder_is_a_usage_error(store: Env) -> None:
    """A typo in --inbox creates nothing: one line naming the missing folder, exit 2."""
    typo = store.tmp / "srv" / "inbx" / "inbox"
    r = store.run("watch", "--inbox", str(typo), expect=2)
    assert f"{typo.parent}: no such folder" in r.stderr and "Traceback" not in r.stderr
    assert not (store.tmp / "srv").exists()
