"""A real `releaser monitor` racing real publishes (issue 9).

While three publishes run one after another (real `releaser publish --wait` processes),
a damager grows whatever release is live (4 KiB appended: a size the identity
check sees at once, harmless to readers) and waits until it is no longer live;
the monitor fails its check and auto-reverts it, unless a publish replaced it
first, in which case the damager repairs it. Afterwards:
- every publish completed; the monitor reverted at least once, only from damaged
  releases, and marked bad only damaged releases;
- history is one chain: each live-making event starts from the release the
  previous one made live, and ends at the live release;
- live, sampled throughout, only ever named recorded published releases, and any
  that was not damaged was good; at the end live is good, sound and unmodified.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

from releaser import views
from releaser.config import load_config

from .conftest import RELEASER_BIN, Env
from .monitorproc import MonitorProc, health_checks, set_config, wait_for
from .robust import (
    assert_history_is_one_chain,
    sha256,
    state_rows,
)

GROWTH = 4096


def _live_id(env: Env) -> int | None:
    try:
        return int(os.readlink(env.live).rsplit("release-", 1)[1].split(".")[0])
    except (OSError, IndexError, ValueError):
        return None


def _status(env: Env, rid: int) -> str:
    return state_rows(env, "SELECT status FROM releases WHERE id=?", (rid,))[0][0]


def _moved_away_by(env: Env, rid: int, since: int) -> str | None:
    """The action recorded after event `since` that made live something else than rid."""
    rows = state_rows(env, "SELECT action FROM events WHERE id > ? AND from_release_id=? AND "
                           "outcome IN ('published', 'ok') ORDER BY id LIMIT 1", (since, rid))
    return rows[0][0] if rows else None


class Damager(threading.Thread):
    def __init__(self, env: Env) -> None:
        super().__init__(daemon=True)
        self.env, self.stop = env, threading.Event()
        self.config = load_config(env.config)
        self.damaged: set[int] = set()
        self.repaired: set[int] = set()
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._one_round()
                time.sleep(0.2)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))

    def _one_round(self) -> None:
        rid = _live_id(self.env)
        # only a recorded release (one still in its post-swap check is the publish's),
        # and only when the monitor has a good release to go back to
        if rid is None or not state_rows(self.env, "SELECT 1 FROM releases WHERE id=? AND "
                                         "published_at IS NOT NULL", (rid,)):
            return
        st = views.status(self.config)
        if st["live"]["release_id"] != rid or st["rollback_target"] is None:
            return
        path = Path(os.path.realpath(self.env.live))
        if not path.name.startswith(f"release-{rid}."):
            return  # live moved since rid was read: damage only the release recorded here
        size = path.stat().st_size
        since = state_rows(self.env, "SELECT COALESCE(MAX(id), 0) FROM events")[0][0]
        self.damaged.add(rid)
        with open(path, "r+b") as fh:  # the test damages a release; releaser never would
            fh.seek(size)
            fh.write(b"\0" * GROWTH)
        deadline = time.monotonic() + 30
        while _moved_away_by(self.env, rid, since) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if _moved_away_by(self.env, rid, since) != "auto-revert":  # a publish replaced it first
            os.truncate(path, size)
            self.repaired.add(rid)


class Sampler(threading.Thread):
    def __init__(self, env: Env) -> None:
        super().__init__(daemon=True)
        self.env, self.stop, self.seen = env, threading.Event(), set()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            rid = _live_id(self.env)
            if rid is None:
                self.errors.append(f"{self.env.live} named no release")
            else:
                self.seen.add(rid)
            time.sleep(0.005)


def test_monitor_reverts_race_publishes_and_history_stays_one_chain(published: Env) -> None:
    env = published
    set_config(env, monitor={"interval_s": 0.3, "failures_before_revert": 1})
    builds = [env.make_db(f"race-{seed}.db", seed=seed) for seed in range(3, 6)]
    sampler, damager = Sampler(env), Damager(env)
    with MonitorProc(env, "monitor") as mon:
        wait_for("the first check", lambda: health_checks(env), proc=mon)
        sampler.start()
        damager.start()
        for build in builds:
            proc = subprocess.run([str(RELEASER_BIN), "--config", str(env.config), "publish",
                                   str(build), "--wait", "60"], capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == 0, proc.stderr
        # the monitor's log line of an auto-revert, written once it is recorded
        wait_for("an auto-revert", lambda: "auto-revert: live release" in mon.stderr(),
                 timeout=30, proc=mon)
        damager.stop.set()
        damager.join(60)
        assert damager.errors == []
        final = _live_id(env)
        assert final is not None
        # the monitor has checked the final live release since the damage stopped
        n = len(health_checks(env))
        wait_for("a healthy check of the final live release", lambda: any(
            c["ok"] and c["release_id"] == _live_id(env) for c in health_checks(env)[n:]),
            timeout=30, proc=mon)
        assert mon.stop() == 0
    sampler.stop.set()
    sampler.join()
    assert sampler.errors == []

    events = sorted(env.history(), key=lambda e: e["id"])
    reverts = [e for e in events if e["action"] == "auto-revert" and e["outcome"] == "ok"]
    print(f"damaged {sorted(damager.damaged)}, repaired {sorted(damager.repaired)}, "
          f"reverted from {[e['from_release_id'] for e in reverts]}")
    assert reverts and {e["from_release_id"] for e in reverts} <= damager.damaged
    bad = {r[0] for r in state_rows(env, "SELECT id FROM releases WHERE status='bad'")}
    assert {e["from_release_id"] for e in reverts} <= bad <= damager.damaged
    published_ids = {r[0] for r in state_rows(
        env, "SELECT id FROM releases WHERE published_at IS NOT NULL")}
    assert len(published_ids) == 2 + len(builds)
    assert sampler.seen <= published_ids
    assert all(_status(env, rid) == "good" for rid in sampler.seen - damager.damaged)

    live_id = assert_history_is_one_chain(env, events)
    sha = state_rows(env, "SELECT sha256 FROM releases WHERE id=?", (live_id,))[0][0]
    assert sha256(env.live) == sha
