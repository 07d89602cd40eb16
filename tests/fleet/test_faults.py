"""Faults: two concurrent pushes (one wins, the other exits 3), SIGKILL of an agent
mid-download (no partial file; the next run completes), the bucket stopped (agents keep
serving, count poll errors, catch up when it returns), a monitor auto-revert (reported
as `reverted`, not re-applied)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from releaser.fleet.agent import Agent
from releaser.rollback import revert_live
from tests.fleet.fleetenv import Fleet, python_argv
from tests.s3server import WeedServer


def test_concurrent_pushes_one_wins_other_exits_3(fleet: Fleet) -> None:
    fleet.push(fleet.make_db("base.db", seed=1))
    dbs = [fleet.make_db(f"c{i}.db", rows=2000 + i, seed=10 + i) for i in range(2)]
    barrier = fleet.tmp / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen(python_argv("procs.py", "barrier-push", str(barrier), "2",
                                          "--config", str(fleet.build.config), "fleet",
                                          "push", str(db), "--channel", "staging"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for db in dbs]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 3], results
    loser = next(r for r in results if r[0] == 3)
    assert "moved by another writer" in loser[2] and loser[2].count("\n") == 1, loser[2]
    status = fleet.fleet_json("status", "--channel", "staging")
    assert status["pointer"]["seq"] == 2


def test_sigkill_mid_download_leaves_nothing_and_next_run_completes(fleet: Fleet) -> None:
    host = fleet.host("k", extra='metrics_listen = "127.0.0.1:0"\n')
    pushed = fleet.push(fleet.make_db("one.db", rows=3000, seed=1))
    host.start_agent(python_argv("procs.py", "pause-download", "--config", str(host.config),
                                 "agent"))
    assert host.proc is not None and host.proc.stdout is not None
    for line in host.proc.stdout:
        if "paused-download" in line:
            break
    incoming = fleet.tmp / "k" / "store.incoming"
    partial = list(incoming.iterdir())
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # really mid-download
    host.stop_agent(signal.SIGKILL)
    assert host.live_sha() is None  # nothing half-applied

    sock_path = fleet.tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    try:  # the real `releaser agent`, as systemd runs it (Type=notify, watchdog)
        host.start_agent(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
        assert host.proc is not None and host.proc.stdout is not None
        url = re.search(r"metrics on (\S+)", host.proc.stdout.readline()).group(1)
        fleet.wait_all([host], "applied", pushed["seq"])
        metrics = {s.name: s.value for f in text_string_to_metric_families(
            urllib.request.urlopen(url, timeout=10).read().decode()) for s in f.samples}
        assert metrics["releaser_agent_applied_seq"] == pushed["seq"]
        assert metrics["releaser_agent_download_bytes_total"] == pushed["compressed_size"]
        assert metrics["releaser_agent_pointer_expired"] == 0
        got = b""
        while b"READY=1" not in got or b"WATCHDOG=1" not in got:
            got += sock.recv(4096)
        host.stop_agent()
    finally:
        sock.close()
    assert host.live_sha() == pushed["sha256"]
    assert list(incoming.iterdir()) == []


def test_bucket_outage_keeps_serving_and_catches_up(fleet: Fleet, weed: WeedServer) -> None:
    hosts = [fleet.host("o1"), fleet.host("o2")]
    agents = [Agent(h.load()) for h in hosts]
    one = fleet.push(fleet.make_db("one.db", seed=1))
    for agent in agents:
        assert agent.poll().state == "applied"
    two = fleet.push(fleet.make_db("two.db", rows=2100, seed=2))
    weed.stop()
    try:
        for host, agent in zip(hosts, agents, strict=True):
            assert agent.poll() is None
            assert agent.metrics.poll_errors._value.get() == 1
            assert host.live_sha() == one["sha256"]
        failed = fleet.push(fleet.make_db("three.db", rows=2200, seed=3), expect=5)
        assert failed.stderr.count("\n") == 1
    finally:
        weed.start()
    for host, agent in zip(hosts, agents, strict=True):
        assert agent.poll().state == "applied"
        assert host.live_sha() == two["sha256"]
        assert agent.metrics.applied_seq._value.get() == two["seq"]


def test_monitor_auto_revert_is_reported_and_not_reapplied(fleet: Fleet) -> None:
    host = fleet.host("m")
    agent = Agent(host.load())
    one = fleet.push(fleet.make_db("one.db", seed=1))
    assert agent.poll().state == "applied"
    two = fleet.push(fleet.make_db("two.db", rows=2100, seed=2))
    assert agent.poll().state == "applied"
    assert revert_live(host.load(), actor="monitor", reasons=["probe failed"]) is not None
    ack = agent.poll()
    assert ack is not None and ack.state == "reverted" and ack.target_sha256 == two["sha256"]
    assert fleet.acks()["m"]["state"] == "reverted"
    assert fleet.acks()["m"]["applied_sha256"] == one["sha256"]
    again = agent.poll()
    assert again is None or again.state == "reverted"
    assert host.live_sha() == one["sha256"]
