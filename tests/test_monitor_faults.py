"""The monitor charges a release only for failures about it (issue 11, items 6, 10, 11).

A bug in the monitor is a monitor fault: logged CRITICAL, counted in its own metric,
never a failed check of the release, never a revert, and the watchdog pings stop. A
check resolves live_path once: a swap in the middle does not fail the old release.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from . import faults
from .conftest import Env
from .monitorproc import MonitorProc, events, health_checks, set_config, wait_for

MONITOR_BUG = """
def bug(*a, **k):
    raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")
patch("check_live", before=bug)
"""


def test_a_monitor_bug_is_a_fault_not_a_failed_check(published: Env, tmp_path: Path) -> None:
    env = published
    set_config(env, monitor={"failures_before_revert": 2, "interval_s": 0.3})
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    try:
        with MonitorProc(env, "-v", "monitor", setup=MONITOR_BUG, extra_env={
                "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}) as mon:
            mon.wait_listening()
            wait_for("three monitor faults", lambda: mon.stderr().count("monitor fault") >= 3,
                     proc=mon)
            assert mon.metrics()["releaser_monitor_faults_total"] >= 3
            assert "TypeError" in mon.stderr() and "CRITICAL" in mon.stderr().upper()
            # no WATCHDOG=1 once the fault happened: drain, then silence
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                while True:
                    sock.recv(4096)
            sock.settimeout(1.0)
            with pytest.raises(TimeoutError):
                while True:
                    assert b"WATCHDOG=1" not in sock.recv(4096)
            assert mon.stop() == 0
    finally:
        sock.close()
    assert events(env, "auto-revert") == []
    assert not [c for c in health_checks(env) if not c["ok"]]
    status = env.status()
    assert status["live"]["release_id"] == 2 and status["live"]["status"] == "good"


# the live symlink moves to release 1 after the check resolved it, before it looks
SWAP_DURING_CHECK = """
import os
done = [False]
def swap(path, release, state):
    if not done[0]:
        done[0] = True
        live = os.environ["LIVE"]
        tmp = live + ".tmp-swap"
        os.symlink(os.environ["OTHER"], tmp)
        os.replace(tmp, live)
patch("identity_problem", before=swap)
"""


def test_a_swap_during_a_check_does_not_fail_the_release_checked(published: Env) -> None:
    env = published
    other = next(str(p) for p in env.root.rglob("release-1.db") if "slots" in str(p))
    proc = subprocess.run(
        faults.argv("--config", str(env.config), "check", "--json", setup=SWAP_DURING_CHECK),
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "LIVE": str(env.live), "OTHER": other})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.path.realpath(env.live) == other  # the swap did happen
    (check,) = [c for c in health_checks(env)]
    assert check["ok"] and check["release_id"] == 2, check


# a check that announces something, then hangs past the stop grace (0.3 s here)
ANNOUNCE_THEN_HANG = """
import releaser.monitor as monitor_module
from releaser import notify
monitor_module.STOP_GRACE_S = 0.3
def announce_and_hang(config, store, state, **kw):
    notify.send(config.notify, notify.payload("auto-revert", "ok", release={"id": 1},
                                              live_path=str(config.live_path)))
    time.sleep(60)
patch("check_live", before=announce_and_hang)
"""


def test_monitor_leaving_a_stuck_check_still_delivers_webhooks_in_flight(
        published: Env) -> None:
    """Item 11: the exit that abandons a stuck check (os._exit) used to drop them."""
    from .test_notify import Receiver

    rec = Receiver(fail_first=1, fail_delay_s=0.5)  # in flight for > 1 s: 500, then retry
    try:
        set_config(published, extra=f'[[notify.webhook]]\nurl = "{rec.url}"\n'
                                    "retry_delay_s = 0.5\n")
        with MonitorProc(published, "-v", "monitor", setup=ANNOUNCE_THEN_HANG) as mon:
            mon.wait_listening()
            wait_for("the first delivery attempt", lambda: rec.attempts >= 1, proc=mon)
            assert mon.stop() == 0
        assert [b["action"] for b in rec.bodies] == ["auto-revert"], mon.stderr()
    finally:
        rec.server.shutdown()
        rec.server.server_close()


def test_a_fault_is_final_even_for_an_analysis_tick(env: Env) -> None:
    """After a fault, neither a check's arm() nor an analysis tick's extend() feeds it."""
    from releaser.check_watchdog import CheckWatchdog
    from releaser.config import load_config

    wd = CheckWatchdog(load_config(env.config))
    wd.extend(60)
    assert wd.completing()
    wd.fault()
    assert not wd.completing()
    wd.arm(60)
    wd.extend(60)
    assert not wd.completing()
