"""Five real `releaser agent` processes (each its own store and live path) take pushes
within poll_s + a few seconds; a fleet rollback brings all back with no download."""

from __future__ import annotations

import re
import sqlite3

from tests.fleet.fleetenv import Fleet


def _rows(live) -> int:  # noqa: ANN001
    conn = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM tags_final").fetchone()[0]
    finally:
        conn.close()


def test_five_agents_take_pushes_and_roll_back_without_download(fleet: Fleet) -> None:
    # five: the fleet issue (12) names this figure
    hosts = [fleet.host(f"app{i}") for i in range(5)]
    first = fleet.push(fleet.make_db("one.db", rows=2000, seed=1), note="first")
    for h in hosts:
        h.start_agent()
    acks = fleet.wait_all(hosts, "applied", first["seq"])
    assert {a["applied_sha256"] for a in acks.values()} == {first["sha256"]}
    assert all(a["bytes_downloaded"] == first["compressed_size"] for a in acks.values())

    second = fleet.push(fleet.make_db("two.db", rows=2100, seed=2), note="second")
    acks = fleet.wait_all(hosts, "applied", second["seq"])
    assert {a["applied_sha256"] for a in acks.values()} == {second["sha256"]}
    assert all(_rows(h.live) == 2100 for h in hosts)
    totals = {k: a["bytes_downloaded_total"] for k, a in acks.items()}

    back = fleet.fleet_json("rollback", "--channel", "staging")
    assert back["sha256"] == first["sha256"] and back["seq"] == second["seq"] + 1
    acks = fleet.wait_all(hosts, "applied", back["seq"])
    for name, ack in acks.items():
        assert ack["applied_sha256"] == first["sha256"]
        assert ack["bytes_downloaded"] == 0  # the local O(1) rollback path
        assert ack["bytes_downloaded_total"] == totals[name]
    assert all(_rows(h.live) == 2000 for h in hosts)
    fleet.stop_all()
    # each host's own history says it was a rollback, not a new publish
    for h in hosts:
        assert [r["sha256"] for r in h.releases()].count(first["sha256"]) == 1

    status = fleet.fleet_json("status", "--channel", "staging")
    assert status["pointer"]["seq"] == back["seq"]
    assert status["summary"] == {"hosts": 5, "on_pointer_release": 5, "applied": 5}
    chain = fleet.fleet_json("releases", "--channel", "staging")
    assert [(r["seq"], r["action"]) for r in chain] == [
        (3, "rollback"), (2, "push"), (1, "push")]
    # the human tables: a header that says what each number is, one row per host/pointer
    lines = fleet.build.cli("fleet", "status", "--channel", "staging").stdout.splitlines()
    header = next(x for x in lines if "host" in x)
    assert re.search(r"host\s+state\s+live seq\s+live sha256\s+last download\s+"
                     r"downloaded total\s+last seen", header), lines
    row = next(x for x in lines if x.strip().startswith("app0 "))
    assert re.search(rf"applied\s+{back['seq']}\s+{first['sha256'][:12]}\s+0 B\s+"
                     r"\d+(\.\d+)? kB\s+\d{4}-", row), row  # rollback: 0 B this time
    lines = fleet.build.cli("fleet", "releases", "--channel", "staging").stdout.splitlines()
    assert re.match(r"seq\s+sha256\s+action\s+created\s+actor\s+note", lines[0]), lines
    assert re.match(r"\s*3\s+\w{12}…\s+rollback\s+\d{4}-", lines[1]), lines
