"""A failed auto-revert: recorded (`auto-revert`/`failed` with the reason), counted
(releaser_auto_revert_failures_total), logged at error, and tried again on later checks
with backoff (after 1, 2, 4... checks), until the revert can swap.

The failure is real: the live symlink's folder is made immutable (chattr +i), so the
kernel refuses the swap's new symlink even to root, as a root-owned live folder
refused it to User=releaser under systemd (issue 10).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from releaser import rollback
from releaser.config import load_config
from releaser.metrics import CheckStats, Metrics
from releaser.state import StateDB

from .conftest import Env
from .monitorproc import MonitorProc, events, parse_metrics, set_config, wait_for
from .test_monitor import damage


def _chattr(path: Path, flag: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def immutable_live_folder(published: Env) -> Iterator[Path]:
    """The live symlink's folder, immutable until the test calls _chattr(.., "-i")."""
    folder = published.live.parent
    why = None
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        why = "chattr +i needs root and chattr (e2fsprogs)"
    else:
        proc = _chattr(folder, "+i")
        if proc.returncode != 0:
            why = f"chattr +i {folder}: {proc.stderr.strip()} (filesystem without it?)"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield folder
    finally:
        _chattr(folder, "-i")


def _failed(env: Env) -> list[dict]:
    return [e for e in events(env, "auto-revert") if e["outcome"] == "failed"]


def test_failed_auto_revert_is_recorded_counted_and_retried_with_backoff(
        published: Env, immutable_live_folder: Path) -> None:
    env = published
    # counting checks (the backoff is in checks, not seconds): a short interval
    set_config(env, monitor={"failures_before_revert": 2, "interval_s": 0.2})
    with MonitorProc(env, "-v", "monitor") as mon:
        mon.wait_listening()
        mon.wait_healthy()
        damage(env, "overwrite")
        # logged after the failed revert was recorded
        wait_for("three failed auto-reverts", lambda: "failed (attempt 3;" in mon.stderr(),
                 timeout=30, proc=mon)
        failed = _failed(env)
        assert len(failed) >= 3, failed
        # nothing swapped: release 2 stays live, the monitor says critical
        assert env.status()["live"]["release_id"] == 2
        assert mon.get("/healthz")[0] == 503
        for e in failed:
            assert (e["from_release_id"], e["actor"], e["release_id"]) == (2, "monitor", None)
            assert "the revert failed" in e["reason"] and str(env.live.parent) in e["reason"]
            assert "Operation not permitted" in e["reason"], e["reason"]
        m = mon.metrics()
        assert m["releaser_auto_revert_failures_total"] >= 3
        assert m["releaser_auto_reverts_total"] == 0

        _chattr(immutable_live_folder, "-i")
        wait_for("the retried auto-revert", lambda: "auto-revert: live release 2 -> 1"
                 in mon.stderr(), timeout=30, proc=mon)
        assert [e for e in events(env, "auto-revert") if e["outcome"] == "ok"]
        mon.wait_healthy()
        assert env.status()["live"]["release_id"] == 1
        m = mon.metrics()
        assert m["releaser_auto_reverts_total"] == 1
        assert m["releaser_auto_revert_failures_total"] == len(_failed(env)) >= 3
        assert mon.stop() == 0
    err = mon.stderr()
    # logged at error, with the attempt; then backoff: 1, 2, 4 checks between attempts
    assert re.search(r"ERROR auto-revert from release 2 failed \(attempt 1; retrying on the "
                     r"next check\)", err), err
    steps = re.findall(r"failed \(attempt (\d+)|next try in (\d+) check", err)
    seq = [f"A{a}" if a else f"S{s}" for a, s in steps]
    # attempt i that fails is followed by 2**(i-1) - 1 skipped checks. At least three
    # attempts failed while the folder was immutable; a starved test may unlock it only
    # after a fourth, which must then follow the same pattern (7 skipped checks).
    attempts = sum(1 for step in seq if step.startswith("A"))
    assert attempts >= 3, seq
    expected = [step for i in range(1, attempts + 1)
                for step in [f"A{i}", *(f"S{k}" for k in range(2 ** (i - 1) - 1, 0, -1))]]
    assert seq == expected, seq
    assert expected[:7] == ["A1", "A2", "S1", "A3", "S3", "S2", "S1"]
    # the fourth attempt, once the folder was writable again, swapped
    assert err.index("auto-revert: live release 2 -> 1") > err.rindex("next try in 1 check")


def test_a_failed_revert_is_not_a_settled_attempt(published: Env) -> None:
    """After a restart the monitor asks the event log: a failed revert is tried again,
    a settled one (ok, no-target, refused) is not."""
    env = published
    config = load_config(env.config)
    assert rollback.record_failed_revert(config, actor="monitor", from_release_id=2,
                                         reasons=["header: not a database"],
                                         error="cannot swap: [Errno 13] Permission denied")
    [event] = events(env, "auto-revert")
    assert event["outcome"] == "failed" and event["from_release_id"] == 2
    assert event["reason"] == ("header: not a database; the revert failed: cannot swap: "
                               "[Errno 13] Permission denied")
    state = StateDB(env.root / "state.db")
    try:
        assert not state.auto_reverted_from(2)
    finally:
        state.close()
    body, _ = Metrics(config, CheckStats()).exposition()
    m = parse_metrics(body.decode())
    assert m["releaser_auto_revert_failures_total"] == 1
    assert m["releaser_auto_reverts_total"] == 0
