"""Concurrency: 4 publishers, a rollback and a monitor auto-revert at once.

All are real processes (the installed `releaser`, and `releaser.rollback.revert_live` in
a Python subprocess as the monitor calls it). They serialise on the store lock: each
completes or exits 3; history has exactly one event per completed operation and the
live-making events form one chain (each starts from the release the previous one made
live); the live symlink, sampled throughout, always names a recorded release.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from releaser.store import Store
from tests.sample import write_sample

from .conftest import RELEASER_BIN, Env
from .robust import (
    assert_history_is_one_chain,
    leftovers,
    state_rows,
)

MONITOR = """
import json, sys
from releaser.config import load_config
from releaser.errors import LockBusy
from releaser.rollback import revert_live
try:
    r = revert_live(load_config(sys.argv[1]), actor="monitor",
                    reasons=["concurrency test: live failed its checks"],
                    wait_s=float(sys.argv[2]))
except LockBusy as exc:
    print(exc.message, file=sys.stderr)
    sys.exit(3)
print(json.dumps(r.as_dict() if r else None))
"""


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("conc-builds")
    return [write_sample(d / f"b{seed}.db", rows=20_000, seed=seed) for seed in range(1, 8)]


@pytest.fixture
def three_live(env: Env, builds: list[Path]) -> Env:
    """Three good releases, so a rollback and an auto-revert always have a target."""
    env.cli("init")
    for b in builds[:3]:
        env.cli("publish", str(b))
    return env


_libc = ctypes.CDLL(None, use_errno=True)
IN_MOVED_FROM, IN_MOVED_TO, IN_DELETE = 0x40, 0x80, 0x200


class LiveSampler(threading.Thread):
    """The live symlink must always exist. inotify on its folder sees every change of the
    name: an atomic swap is one rename onto it (IN_MOVED_TO); a delete or a rename away
    (IN_DELETE, IN_MOVED_FROM), however brief the gap after it, is an error. The link
    is read after each change and every 5 ms (`seen`). (It used to spin on readlink,
    a core of CPU while the operations ran, and could still miss a microsecond gap.)"""

    def __init__(self, live: Path) -> None:
        super().__init__(daemon=True)
        self.live, self.stop, self.seen, self.errors = live, threading.Event(), set(), []
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        mask = IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE
        if _libc.inotify_add_watch(self.fd, str(live.parent).encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {live.parent}")

    def _changes(self) -> None:
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        i = 0
        while i < len(buf):
            _wd, mask, _cookie, size = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16:i + 16 + size].rstrip(b"\0").decode()
            i += 16 + size
            if name == self.live.name and mask & (IN_DELETE | IN_MOVED_FROM):
                self.errors.append(f"{self.live} was {'deleted' if mask & IN_DELETE else 'moved away'}")

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                select.select([self.fd], [], [], 0.005)
                self._changes()
                try:
                    self.seen.add(os.path.basename(os.readlink(self.live)))
                except OSError as exc:
                    self.errors.append(repr(exc))
            self._changes()
        finally:
            os.close(self.fd)


def _launch(env: Env, builds: list[Path], wait: list[float]) -> list[tuple[str, subprocess.Popen]]:
    procs: list[tuple[str, subprocess.Popen]] = []
    base = [str(RELEASER_BIN), "--config", str(env.config)]
    for i, b in enumerate(builds[3:7]):
        procs.append(("publish", subprocess.Popen(
            [*base, "publish", str(b), "--wait", str(wait[i])], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)))
    procs.append(("rollback", subprocess.Popen(
        [*base, "rollback", "--reason", "concurrent", "--wait", str(wait[4])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    procs.append(("auto-revert", subprocess.Popen(
        [sys.executable, "-c", MONITOR, str(env.config), str(wait[5])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    return procs


def _check_outcome(env: Env, procs: list[tuple[str, subprocess.Popen]], events_before: int,
                   sampler: LiveSampler) -> Counter:
    completed: Counter = Counter()
    for kind, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 3), f"{kind} exit {proc.returncode}: {err}"
        assert "Traceback" not in err
        if proc.returncode == 0:
            completed[kind] += 1
            if kind == "auto-revert":
                assert json.loads(out) is not None, "auto-revert found no target"
        elif kind == "rollback" and "live changed" in err:
            # rollback --wait remembers the release live when it was asked for: a publish
            # that got the lock first moved live, so it refuses (exit 3) instead of rolling
            # back a release the person never saw
            assert len(err.strip().splitlines()) == 1 and "nothing rolled back" in err, err
        else:
            assert len(err.strip().splitlines()) == 1 and "locked" in err, err
    sampler.stop.set()
    sampler.join()
    assert sampler.errors == []

    events = sorted(env.history(), key=lambda e: e["id"])
    new = events[events_before:]
    by_kind = Counter(e["action"] for e in new)
    assert all(e["outcome"] in ("published", "ok") for e in new), new
    assert by_kind == completed, f"events {by_kind} != completed {completed}"
    # one chain: every live-making event starts where the previous one left live
    assert_history_is_one_chain(env, events)
    recorded = {r[0] for r in state_rows(env, "SELECT id FROM releases WHERE published_at "
                                              "IS NOT NULL")}
    seen_ids = {int(name.split("-")[1].split(".")[0]) for name in sampler.seen}
    assert seen_ids <= recorded, f"live showed unrecorded releases {seen_ids - recorded}"
    assert leftovers(env) == []
    assert env.cli_json("status")["lock"] is None
    return completed


def test_six_operations_at_once_all_wait_and_serialise(three_live: Env,
                                                       builds: list[Path]) -> None:
    env = three_live
    events_before = len(env.history())
    sampler = LiveSampler(env.live)
    sampler.start()
    procs = _launch(env, builds, wait=[120] * 6)
    completed = _check_outcome(env, procs, events_before, sampler)
    # the rollback completes when it held the lock before any publish moved live, and is
    # refused (checked in _check_outcome) otherwise; everything else always completes
    assert completed["rollback"] in (0, 1)
    assert completed - Counter({"rollback": 1}) == Counter({"publish": 4, "auto-revert": 1})
    # the auto-reverted release is marked bad and is not live
    bad = state_rows(env, "SELECT id FROM releases WHERE status='bad'")
    assert len(bad) == 1 and bad[0][0] != env.status()["live"]["release_id"]


def test_no_wait_operations_exit_3_while_the_lock_is_held(three_live: Env,
                                                          builds: list[Path]) -> None:
    """Half the operations do not wait: while another holder has the lock they exit 3
    and record nothing; the waiting half completes once it is free."""
    env = three_live
    events_before = len(env.history())
    sampler = LiveSampler(env.live)
    sampler.start()
    waits = [0, 120, 0, 120, 0, 120]  # publishers 1 and 3 and the rollback give up
    store = Store(env.root, env.live)
    with store.lock("test holder"):
        procs = _launch(env, builds, wait=waits)
        for (kind, proc), w in zip(procs, waits, strict=True):
            if w == 0:
                proc.wait(timeout=60)
                assert proc.returncode == 3, kind
        time.sleep(0.2)
        assert all(p.poll() is None for (_, p), w in zip(procs, waits, strict=True) if w)
    completed = _check_outcome(env, procs, events_before, sampler)
    assert completed == Counter({"publish": 2, "auto-revert": 1})
