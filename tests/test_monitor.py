"""`releaser monitor`: real monitor processes on loopback, interval 1 s.

Damage the live release in the ways production does (bytes overwritten in place,
truncated, deleted, replaced by another valid database) and see the monitor put
the previous release back after failures_before_revert failed checks; see it
refuse to flap when there is nothing good to go back to; see probe timeouts,
SIGTERM mid-check and the sd_notify protocol.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import pytest

from releaser import sdnotify
from releaser.store import Store

from .conftest import Env, env_in, publish_two
from .monitorproc import (
    MonitorProc,
    events,
    health_checks,
    make_writable,
    set_config,
    wait_for,
)

# a probe that never ends on its own: only the query time limit stops it
HANGING_PROBE = """
[[probes]]
name = "hangs"
sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
budget_ms = 100000
"""


def live_file(env: Env) -> Path:
    return env.live.resolve()


def damage(env: Env, how: str) -> None:
    target = live_file(env)
    if how == "overwrite":
        make_writable(target)
        with open(target, "r+b") as fh:
            fh.seek(4096 + 100)
            fh.write(b"\xde\xad\xbe\xef" * 64)
    elif how == "truncate":
        make_writable(target)
        os.truncate(target, target.stat().st_size // 2 + 123)
    elif how == "delete":
        target.unlink()
    elif how == "replace":
        # another, perfectly valid database under the release's name
        other = env.make_db("other.db", seed=9)
        tmp = target.with_name("other.tmp")
        shutil.copyfile(other, tmp)
        os.replace(tmp, target)
    else:  # pragma: no cover
        raise AssertionError(how)


DAMAGES = ("overwrite", "truncate", "delete", "replace")
# the monitor's one log line of an auto-revert, written after the event is recorded
REVERTED_2_TO_1 = "auto-revert: live release 2 -> 1"


def published_env(tmp: Path) -> Env:
    """Like the `published` fixture, in a folder of its own (several stores per test)."""
    tmp.mkdir()
    return publish_two(env_in(tmp))


def test_damaged_live_release_is_auto_reverted(tmp_path: Path) -> None:
    """Each kind of damage in its own store, the four monitors running side by side."""
    envs = {how: published_env(tmp_path / how) for how in DAMAGES}
    mons: dict[str, MonitorProc] = {}
    try:
        for how, env in envs.items():
            # counting checks, not timing them: a short interval keeps the test short
            set_config(env, monitor={"failures_before_revert": 2, "interval_s": 0.25})
            assert env.status()["live"]["release_id"] == 2
            mons[how] = MonitorProc(env, "-v", "monitor")
        for how, mon in mons.items():
            mon.wait_listening()
            mon.wait_healthy()
            damage(envs[how], how)
        for how, mon in mons.items():
            # logged once revert_live has recorded it (check_reverted reads the history)
            wait_for(f"the auto-revert after {how}", lambda mon=mon: REVERTED_2_TO_1
                     in mon.stderr(), proc=mon)
        for how, mon in mons.items():
            mon.wait_healthy()
            check_reverted(envs[how], mon.metrics(), how)
        for mon in mons.values():  # the four stop side by side too
            mon.signal(signal.SIGTERM)
        for how, mon in mons.items():
            assert mon.proc.wait(15) == 0, (how, mon.stderr())
    finally:
        for mon in mons.values():
            mon.__exit__()


def check_reverted(env: Env, metrics: dict[str, float], how: str) -> None:
    revert = events(env, "auto-revert")
    assert [(e["outcome"], e["release_id"], e["from_release_id"], e["actor"])
            for e in revert] == [("ok", 1, 2, "monitor")], how
    status = env.status()
    assert status["live"]["release_id"] == 1, how
    # the bad release is marked bad and is no rollback target any more
    assert status["rollback_target"] is None, how
    # reverted after exactly failures_before_revert failed checks of release 2
    checks = health_checks(env)
    failed = [c for c in checks if c["release_id"] == 2 and not c["ok"]]
    assert len(failed) == 2, (how, checks)
    assert all(c["actor"] == "monitor" for c in failed)
    assert checks[-1]["release_id"] == 1 and checks[-1]["ok"], how
    # counters and the live release on /metrics
    assert metrics["releaser_auto_reverts_total"] == 1, how
    assert metrics["releaser_health_check_failures_total"] == 2, how
    assert metrics["releaser_health_check_success"] == 1, how
    assert metrics["releaser_publishes_total"] == 2, how
    live_info = [k for k in metrics if k.startswith("releaser_live_release_info")]
    assert len(live_info) == 1 and 'release_id="1"' in live_info[0], how


def test_change_only_the_hash_sees_is_caught_on_the_hash_cadence(published: Env) -> None:
    """Bytes changed with size and mtime kept: invisible to stat, caught by the full hash."""
    env = published
    set_config(env, monitor={"failures_before_revert": 2, "hash_every": 2,
                             "integrity_every": 1000, "interval_s": 0.3})
    target = live_file(env)
    with MonitorProc(env, "-v", "monitor") as mon:
        mon.wait_listening()
        mon.wait_healthy()
        st = target.stat()
        # paused, so that no check sees the new mtime before it is put back
        mon.signal(signal.SIGSTOP)
        make_writable(target)
        with open(target, "r+b") as fh:  # user_version in the header: no query sees it
            fh.seek(60)
            fh.write(b"\x00\x00\x00\x2a")
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.chmod(target, 0o444)
        mon.signal(signal.SIGCONT)
        wait_for("the auto-revert", lambda: REVERTED_2_TO_1 in mon.stderr(), proc=mon)
        assert mon.stop() == 0
    failed = [c for c in health_checks(env) if not c["ok"]]
    # the hash check found it, and the next (normally stat-only) check repeated the hash
    assert len(failed) == 2
    assert all("sha256" in c["reasons"][0] for c in failed), failed
    assert env.status()["live"]["release_id"] == 1


def test_previous_release_also_bad_no_revert_no_flapping(published: Env) -> None:
    env = published
    # counting checks, not timing them: a shorter interval keeps the test short
    set_config(env, monitor={"failures_before_revert": 2, "interval_s": 0.25})
    # the rollback target (release 1, idle slot) is broken too
    idle = Path(env.status()["idle"]["path"])
    make_writable(idle)
    os.truncate(idle, 1000)
    with MonitorProc(env, "-v", "monitor") as mon:
        mon.wait_listening()
        mon.wait_healthy()
        damage(env, "truncate")
        # logged once revert_live has recorded the no-target event
        wait_for("the no-target event", lambda: "no earlier good release passes its check"
                 in mon.stderr(), proc=mon)
        # keep checking: several more failed checks, still exactly one attempt
        wait_for("2 more checks", lambda: mon.metrics()[
            "releaser_health_check_failures_total"] >= 4, proc=mon)
        status, _ctype, body = mon.get("/healthz")
        metrics = mon.metrics()
        assert mon.stop() == 0
    assert status == 503 and '"critical": true' in body
    assert metrics["releaser_live_critical"] == 1
    assert metrics["releaser_auto_reverts_total"] == 0
    assert metrics["releaser_health_check_success"] == 0
    attempts = events(env, "auto-revert")
    assert sorted(e["outcome"] for e in attempts) == ["no-target", "refused"]
    assert env.status()["live"]["release_id"] == 2
    assert "CRITICAL live release 2 is unhealthy and stays live" in mon.stderr()

    # a restarted monitor reads the attempt back from the log: still no new events
    with MonitorProc(env, "-v", "monitor", name="monitor2") as mon2:
        mon2.wait_listening()
        # the counters come from state.db: they go on from the first monitor's
        before = len(health_checks(env))
        assert mon2.metrics()["releaser_health_checks_total"] >= before
        wait_for("2 checks", lambda: len(health_checks(env)) >= before + 2, proc=mon2)
        assert mon2.stop() == 0
    assert len(events(env, "auto-revert")) == 2
    assert env.status()["live"]["release_id"] == 2


def test_revert_waits_for_a_running_publish(published: Env) -> None:
    """The lock is busy (a publish): the auto-revert is retried at the next check."""
    env = published
    set_config(env, monitor={"failures_before_revert": 2, "interval_s": 0.25})
    store = Store(env.root, env.live)
    with MonitorProc(env, "-v", "monitor") as mon:
        mon.wait_listening()
        mon.wait_healthy()
        with store.lock("test publish"):
            damage(env, "truncate")
            wait_for("the postponed revert", lambda: "auto-revert postponed" in mon.stderr(),
                     proc=mon)
            assert events(env, "auto-revert") == []
        wait_for("the auto-revert", lambda: REVERTED_2_TO_1 in mon.stderr(), proc=mon)
        assert mon.stop() == 0
    assert [e["outcome"] for e in events(env, "auto-revert")] == ["ok"]
    assert env.status()["live"]["release_id"] == 1


def test_revert_refuses_when_live_changed_since_the_check(published: Env) -> None:
    """A publish between the failed check and the lock: the new release is not reverted."""
    from releaser import rollback
    from releaser.config import load_config

    before = published.snapshot()
    with pytest.raises(rollback.LiveChanged, match="from release 1 to 2"):
        rollback.revert_live(load_config(published.config), actor="monitor",
                            reasons=["test"], expect_live=1)
    assert published.snapshot() == before
    assert events(published, "auto-revert") == []
    assert published.status()["live"]["status"] == "good"


# a bad disk under releases 2 and 3: their checks fail with EIO before looking at anything.
# Release 2's second check waits (up to 60 s) until the test's publish of release 3 has
# returned (the file $PUBLISHED_3), so a short interval neither reverts release 2 while the
# test is still publishing release 3 nor finds the store locked by that publish
EIO_FOR_RELEASES_2_3 = """
checks_of_2 = []
def eio(config, store, state, **kw):
    if store.live_release_id() == 2:
        checks_of_2.append(1)
        deadline = time.monotonic() + 60
        while (len(checks_of_2) == 2 and not os.path.exists(os.environ["PUBLISHED_3"])
               and time.monotonic() < deadline):
            time.sleep(0.05)
    if store.live_release_id() in (2, 3):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(store.live_path))
patch("check_live", before=eio)
"""


def test_check_that_cannot_run_fails_the_release_it_was_about(published: Env) -> None:
    """Checks of releases 2 and 3 fail with EIO before they can look at anything.

    Each failure belongs to the release live when the check started: the one
    failure of release 2 before release 3 is published does not count against
    release 3, which is reverted after failures_before_revert checks of its own;
    then release 2, failing on its own, is reverted too (one revert per release).
    """
    env = published
    set_config(env, monitor={"failures_before_revert": 3, "interval_s": 0.25})
    published_3 = env.tmp / "published-3"
    with MonitorProc(env, "-v", "monitor", setup=EIO_FOR_RELEASES_2_3,
                     extra_env={"PUBLISHED_3": str(published_3)}) as mon:
        mon.wait_listening()
        wait_for("a failed check", lambda: "UNHEALTHY (1/3)" in mon.stderr(), proc=mon)
        env.cli("publish", str(env.make_db("three.db", seed=3)))
        published_3.touch()
        wait_for("two auto-reverts", lambda: mon.stderr().count("auto-revert: live release")
                 == 2, proc=mon)
        mon.wait_healthy()
        assert mon.stop() == 0
    assert [(e["outcome"], e["release_id"], e["from_release_id"])
            for e in events(env, "auto-revert")] == [("ok", 2, 3), ("ok", 1, 2)]
    checks = health_checks(env)
    of_3 = [c for c in checks if c["release_id"] == 3]
    assert len(of_3) == 3 and not any(c["ok"] for c in of_3), checks
    assert all(c["reasons"][0].startswith("check could not run: OSError: [Errno 5]")
               for c in of_3), of_3
    # no failed check is left without the release it was about
    assert all(c["release_id"] is not None for c in checks), checks
    assert checks[-1] == {"release_id": 1, "ok": True, "actor": "monitor", "reasons": []}
    status = env.status()
    assert status["live"]["release_id"] == 1


def test_nothing_live_is_critical_and_never_reverted(published: Env) -> None:
    env = published
    set_config(env, monitor={"failures_before_revert": 2, "interval_s": 0.25})
    target = os.readlink(env.live)
    with MonitorProc(env, "-v", "monitor") as mon:
        mon.wait_listening()
        mon.wait_healthy()
        env.live.unlink()
        wait_for("critical", lambda: "no release is live to revert from" in mon.stderr(),
                 proc=mon)
        os.symlink(target, env.live)
        mon.wait_healthy()
        assert mon.stop() == 0
    assert events(env, "auto-revert") == []
    assert env.status()["live"]["release_id"] == 2


def test_watchdog_pings_stop_when_a_check_overruns_its_budget(published: Env,
                                                            tmp_path: Path) -> None:
    """The auto-revert hangs under the lock (a test pause point): no more WATCHDOG=1."""
    env = published
    # budget of the revert's target check: 0.2 s x (2 probes + 2) + 2 s of grace
    set_config(env, monitor={"failures_before_revert": 2, "misfire_grace_s": 2,
                             "interval_s": 0.25},
               gates={"query_timeout_ms": 200})
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    try:
        with MonitorProc(env, "-v", "monitor", extra_env={
                "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000",
                }, pause_at="rollback_ready") as mon:
            while b"READY=1" not in sock.recv(4096):
                pass
            damage(env, "truncate")
            wait_for("the revert to hang", lambda: "releaser-fault: rollback_ready"
                     in mon.stderr(), proc=mon)
            wait_for("the watchdog to stop", lambda: "checks stopped completing"
                     in mon.stderr(), proc=mon)
            # from then on nothing: drain what was queued, then the socket stays silent
            sock.settimeout(0.05)
            with pytest.raises(TimeoutError):
                while True:
                    sock.recv(4096)
            sock.settimeout(1.0)  # 5 periods of WATCHDOG_USEC/2, as the fault test waits
            with pytest.raises(TimeoutError):
                sock.recv(4096)
    finally:
        sock.close()


def test_hanging_probe_hits_its_time_limit(published: Env) -> None:
    env = published
    set_config(env, monitor={"failures_before_revert": 100, "interval_s": 0.5},
               gates={"query_timeout_ms": 300}, extra=HANGING_PROBE)
    with MonitorProc(env, "-v", "monitor") as mon:
        mon.wait_listening()
        # checks keep completing although the probe never would
        wait_for("2 checks", lambda: mon.metrics()["releaser_health_checks_total"] >= 2,
                 proc=mon)
        status, _ctype, body = mon.get("/healthz")
        metrics = mon.metrics()
        assert mon.stop() == 0
    assert status == 503
    assert "300 ms time limit" in body
    checks = health_checks(env)
    assert checks and not checks[0]["ok"]
    assert any("hangs" in r and "time limit" in r for r in checks[0]["reasons"])
    # the timed-out probe is in its histogram, at about its limit
    assert metrics['releaser_probe_query_duration_seconds_count{probe="hangs"}'] >= 2
    assert metrics['releaser_probe_query_duration_seconds_bucket{le="0.1",probe="hangs"}'] == 0


def test_sigterm_mid_check_exits_0(published: Env) -> None:
    env = published
    # the first check spends ~1 s in this probe (CPU-bound until its time limit): SIGTERM,
    # sent as soon as the check is logged, lands in the middle of it
    set_config(env, gates={"query_timeout_ms": 1000}, extra=HANGING_PROBE)
    with MonitorProc(env, "--debug", "monitor") as mon:
        wait_for("check 1 to start", lambda: "check 1 started" in mon.stderr(), proc=mon)
        mon.signal(signal.SIGTERM)
        assert mon.stop(timeout=15) == 0
        err = mon.stderr()
    assert "received SIGTERM: stopping" in err
    assert "Traceback" not in err
    # nothing half-done: the live release is untouched
    assert env.status()["live"]["release_id"] == 2


def test_notify_socket_ready_watchdog_stopping(published: Env, tmp_path: Path) -> None:
    env = published
    set_config(env)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    messages: list[str] = []

    def until(needle: str) -> None:
        while not any(needle in m for m in messages):
            messages.append(sock.recv(4096).decode())

    try:
        # stderr is "the journal": JOURNAL_STREAM names its device and inode (the file
        # MonitorProc opens for stderr, truncated in place), so <N> priority prefixes
        err = env.tmp / "monitor.err"
        err.touch()
        st = err.stat()
        with MonitorProc(env, "-v", "monitor", extra_env={
                "NOTIFY_SOCKET": str(sock_path),
                "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) as mon:
            until("READY=1")
            until("WATCHDOG=1")
            mon.wait_listening()
            mon.signal(signal.SIGTERM)
            until("STOPPING=1")
            assert mon.stop() == 0
    finally:
        sock.close()
    ready = next(m for m in messages if "READY=1" in m)
    # READY only after the first check, with the live release in STATUS=
    assert "STATUS=live release 2 healthy" in ready
    assert sum("READY=1" in m for m in messages) == 1
    lines = [line for line in mon.stderr().splitlines() if line]
    assert lines and all(line.startswith(("<6>", "<4>")) for line in lines), lines


@pytest.mark.parametrize("form", ["path", "abstract"])
def test_sd_notify_socket_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                form: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if form == "path":
        addr = str(tmp_path / "n.sock")
        sock.bind(addr)
        monkeypatch.setenv("NOTIFY_SOCKET", addr)
    else:
        name = f"releaser-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    sock.settimeout(5)
    try:
        assert sdnotify.notify("READY=1", "STATUS=hello")
        assert sock.recv(100) == b"READY=1\nSTATUS=hello"
    finally:
        sock.close()


def test_sd_notify_is_a_noop_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval_s() is None


def test_monitor_without_store_is_a_usage_error(env: Env) -> None:
    proc = env.run("monitor", expect=2)
    assert "releaser init" in proc.stderr and "Traceback" not in proc.stderr


def test_monitor_port_in_use_is_one_line(store: Env) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        proc = store.run("monitor", "--listen", f"127.0.0.1:{port}", expect=5)
    finally:
        busy.close()
    assert "cannot listen" in proc.stderr and str(port) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.bench
def test_bench_check_cost_does_not_grow_with_size(tmp_path: Path) -> None:
    """Between the periodic full passes a check is O(1) in the file size."""
    import statistics

    from releaser import health, session
    from releaser.config import load_config

    medians = {}
    for rows in (3000, 300_000):
        env = published_env(tmp_path / f"r{rows}")
        env.cli("publish", str(env.make_db("big.db", rows=rows, seed=5)))
        config = load_config(env.config)
        with session.open_store(config) as ctx:
            times = []
            for _ in range(21):
                report = health.check_live(config, ctx.store, ctx.state, full_hash=False,
                                           integrity=False)
                assert report.ok, report.reasons
                times.append(report.duration_ms)
            full = health.check_live(config, ctx.store, ctx.state, full_hash=True,
                                     integrity=True)
        medians[rows] = statistics.median(times)
        print(f"\nrows={rows} size={env.live.stat().st_size >> 20} MiB: check "
              f"{medians[rows]:.2f} ms, with sha256 + quick_check {full.duration_ms:.1f} ms")
    # 100x the rows; the cheap check stays within noise of the small one
    assert medians[300_000] < 5 * medians[3000] + 2.0


SECOND_SIGTERM_WHILE_STOPPING = """
import os, signal
sent = []
def second(*msgs):
    if any("STOPPING=1" in m for m in msgs) and not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)  # handled inside the first signal's handler
patch("releaser.sdnotify.notify", before=second)
"""


def test_a_second_sigterm_while_stopping_is_a_no_op(published: Env) -> None:
    """systemd may repeat SIGTERM (or on-call presses Ctrl-C twice): the second signal's
    handler runs nested in the first; it must do nothing, or it blocks on locks its own
    thread holds (a hang seen in CI) or shuts the scheduler down twice (a traceback)."""
    set_config(published)
    with MonitorProc(published, "-v", "monitor", setup=SECOND_SIGTERM_WHILE_STOPPING) as mon:
        mon.wait_listening()
        wait_for("the first check", lambda: "check: release 2" in mon.stderr(), 20, mon)
        mon.signal(signal.SIGTERM)
        assert mon.stop() == 0
    err = mon.stderr()
    assert err.count("received SIGTERM: stopping") == 1, err
    assert "Traceback" not in err and "Exception in thread" not in err, err
