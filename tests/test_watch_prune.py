"""`[watch] keep_done_days` / `keep_rejected_days`: processed files do not pile up forever."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .conftest import Env
from .test_watch import Watch

DAY = 86400


def aged(path: Path, days: float, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    t = time.time() - days * DAY
    os.utime(path, (t, t))
    return path


def test_old_done_and_rejected_files_are_pruned_with_their_reasons(store: Env) -> None:
    box = store.tmp / "inbox"
    store.write_config(f'[watch]\ninbox = "{box}"\nsettle_s = 0.3\nkeep_rejected_days = 7\n')
    old_done = [aged(box / "done" / "old.db", 31), aged(box / "done" / "old.db.reason.json", 31)]
    new_done = [aged(box / "done" / "new.db", 29), aged(box / "done" / "new.db.reason.json", 29)]
    old_rej = [aged(box / "rejected" / "bad.db", 8),
               aged(box / "rejected" / "bad.db.reason.json", 8)]
    new_rej = [aged(box / "rejected" / "meh.db", 6)]
    w = Watch(store)
    try:
        deadline = time.monotonic() + 20
        while any(p.exists() for p in old_done + old_rej) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(p.exists() for p in old_done + old_rej), "".join(w.stderr)
        assert all(p.exists() for p in new_done + new_rej)
        # a file published now lands in done/ and stays
        store.make_db("fresh.db", seed=3).rename(box / "fresh.db")
        assert w.next()["outcome"] == "published"
        assert (box / "done" / "fresh.db").exists()
        w.wait_log("pruned")
    finally:
        assert w.stop() == 0


def test_identical_build_goes_to_done_as_unchanged(store: Env) -> None:
    box = store.tmp / "inbox"
    store.write_config(f'[watch]\ninbox = "{box}"\nsettle_s = 0.3\n')
    build = store.make_db("same.db", seed=1)
    store.cli("publish", str(build))  # set-up: in-process
    box.mkdir()
    w = Watch(store)
    try:
        (box / "same.db").write_bytes(build.read_bytes())
        got = w.next()
        assert (got["outcome"], got["release_id"]) == ("unchanged", 1), got
        assert (box / "done" / "same.db").exists()
    finally:
        assert w.stop() == 0


def test_keep_days_must_not_be_negative(store: Env) -> None:
    store.write_config(f'[watch]\ninbox = "{store.tmp / "in"}"\nkeep_done_days = -1\n')
    proc = store.run("status", expect=2)
    assert "keep_done_days" in proc.stderr
