"""Wave rollouts with the real SeaweedFS and real `releaser agent` processes (one per
host, in parallel, poll 0.3 s): waves in order with their bake time, a failing wave
aborts the rollout and sends everyone back to the previous release, and pause /
promote-wave / resume steer it. Bakes are short here; nothing is timed against a
wall-clock target, only ordered."""

from __future__ import annotations

import time

from releaser.fleet.waves import assign
from tests.fleet.fleetenv import Fleet, wait_for
from tests.test_notify import Receiver

STRICT = """
[[checks]]
name = "min_rows_here"
sql = "SELECT COUNT(*) FROM tags_final"
fail = { min = 2050 }
"""


def test_healthy_rollout_passes_waves_in_order_after_bake(fleet: Fleet) -> None:
    hosts = [fleet.host(f"app{i}") for i in range(4)]
    fleet.first_release(hosts)
    bake = 1.5
    second = fleet.push(fleet.make_db("two.db", rows=2150, seed=2), note="waves")
    assert second["plan"] is None  # no waves asked: every host at once
    fleet.wait_all(hosts, "applied", second["seq"])

    third = fleet.build.cli_json("fleet", "push", str(fleet.make_db("three.db", rows=2200,
                                                                    seed=3)),
                                 "--channel", "staging", "--waves", "1,2,100%",
                                 "--bake", str(bake))
    waves = third["plan"]["waves"]
    assert waves == assign("1,2,100%", [h.name for h in hosts], [])
    assert len(waves[0]) == 1 and len(waves[1]) == 1 and waves[2] == ["*"]
    seen: dict[str, float] = {}
    waiting: set[str] = set()

    def progress() -> bool:
        for name, ack in fleet.acks().items():
            if ack["seq"] == third["seq"] and ack["state"] == "waiting":
                waiting.add(name)
            if (ack["state"] == "applied" and ack["applied_sha256"] == third["sha256"]
                    and name not in seen):
                seen[name] = time.monotonic()
        return len(seen) == len(hosts)

    wait_for("all hosts on the third release", progress, timeout=40)
    t0, t1 = seen[waves[0][0]], seen[waves[1][0]]
    rest = [seen[h.name] for h in hosts if h.name not in (waves[0][0], waves[1][0])]
    # never early: each wave starts only after the previous one stayed healthy for bake
    assert t1 - t0 >= bake - 0.2, (t0, t1)
    assert min(rest) - t1 >= bake - 0.2, (t1, rest)
    assert waves[0][0] not in waiting and waiting >= set(h.name for h in hosts[1:]) - {
        waves[0][0]}
    status = fleet.fleet_json("status", "--channel", "staging")
    assert status["rollout"]["state"] == "complete"


def test_failing_wave_aborts_and_every_host_ends_on_the_previous_release(
        fleet: Fleet) -> None:
    names = [f"app{i}" for i in range(4)]
    waves = assign("1,100%", names, ["app0"])
    bad_host = waves[1][0]  # the second wave's only host rejects what the others accept
    receiver = Receiver()
    hook = (f'[[notify.webhook]]\nurl = "{receiver.url}"\n'
            'events = ["fleet-rollout-aborted"]\n')
    hosts = [fleet.host(n, extra=STRICT if n == bad_host else hook if n == "app0" else "")
             for n in names]
    first = fleet.first_release(hosts)

    second = fleet.build.cli_json(
        "fleet", "push", str(fleet.make_db("two.db", rows=2000, seed=2)), "--channel",
        "staging", "--canary", "app0", "--waves", "1,100%", "--bake", "0.5")
    assert second["plan"]["waves"] == waves
    assert second["plan"]["previous"]["sha256"] == first["sha256"]

    def aborted() -> dict | None:
        s = fleet.fleet_json("status", "--channel", "staging")
        return s if s["rollout"]["state"] == "aborted" else None

    status = wait_for("the rollout aborted", aborted, timeout=40, interval=0.25)
    assert status["rollout"]["failed"] == [bad_host]
    assert any(bad_host in r and "min_rows_here" in r for r in status["rollout"]["reasons"])
    # the canary that had applied it goes back by itself; nobody else ever takes it
    wait_for("app0 back on the first release",
             lambda: fleet.acks()["app0"]["applied_sha256"] == first["sha256"], timeout=30)
    time.sleep(1.0)  # a few more polls: the abort holds
    for h in hosts:
        assert h.live_sha() == first["sha256"], h.name
    untouched = [h for h in hosts if h.name not in ("app0", bad_host)]
    for h in untouched:
        assert second["sha256"] not in [r["sha256"] for r in h.releases()], h.name
    assert fleet.acks()["app0"]["state"] == "reverted"
    assert "aborted" in fleet.acks()["app0"]["reasons"][0]
    [event] = receiver.wait_for(1)  # the hook event, once
    assert (event["action"], event["outcome"]) == ("fleet-rollout-aborted", "aborted")
    assert event["release"]["sha256"] == second["sha256"] and bad_host in event["reasons"][1]

    # a canary that fails stops the next rollout at once
    third = fleet.build.cli_json(
        "fleet", "push", str(fleet.make_db("three.db", rows=2010, seed=3)), "--channel",
        "staging", "--canary", bad_host, "--waves", "100%", "--bake", "0")
    wait_for("the canary rejected",
             lambda: fleet.acks()[bad_host]["state"] == "rejected"
             and fleet.acks()[bad_host]["seq"] == third["seq"], timeout=30)
    time.sleep(1.0)
    assert fleet.fleet_json("status", "--channel", "staging")["rollout"]["state"] == "aborted"
    for h in hosts:
        assert h.live_sha() == first["sha256"], h.name
    events = receiver.wait_for(2)
    assert [e["release"]["sha256"] for e in events] == [second["sha256"], third["sha256"]]
    fleet.stop_all()
    receiver.server.shutdown()
    receiver.server.server_close()


def test_pause_promote_wave_resume(fleet: Fleet) -> None:
    hosts = [fleet.host(f"app{i}") for i in range(2)]  # the canary, then the other
    fleet.first_release(hosts)
    out = fleet.build.cli(
        "fleet", "push", str(fleet.make_db("two.db", rows=2150, seed=2)), "--channel",
        "staging", "--canary", "app0", "--waves", "100%", "--bake", "600").stdout
    assert "\n  waves: app0 -> every other host; bake 600 s\n" in out, out  # the plan, said
    second = fleet.fleet_json("status", "--channel", "staging")["pointer"]
    others = hosts[1:]
    fleet.wait_all(hosts[:1], "applied", second["seq"])
    fleet.wait_all(others, "waiting", second["seq"])  # baking for 600 s

    out = fleet.build.cli("fleet", "resume", "--channel", "staging", expect=4)
    assert "not paused; nothing to resume" in out.stderr  # and no pointer written
    paused = fleet.fleet_json("pause", "--channel", "staging")
    assert paused["plan"]["paused"] is True
    out = fleet.build.cli("fleet", "pause", "--channel", "staging", expect=4)
    assert "already paused" in out.stderr
    promoted = fleet.fleet_json("promote-wave", "--channel", "staging")
    assert promoted["plan"]["promoted"] == 1 and promoted["plan"]["paused"] is True
    fleet.wait_all(others, "waiting", promoted["seq"])
    time.sleep(1.0)  # paused: the promoted wave still does not start
    assert all(h.live_sha() != second["sha256"] for h in others)
    assert "paused" in fleet.acks()["app1"]["reasons"][0]

    resumed = fleet.fleet_json("resume", "--channel", "staging")
    fleet.wait_all(hosts, "applied", resumed["seq"])  # promoted: no 600 s bake
    assert all(h.live_sha() == second["sha256"] for h in hosts)
    status = fleet.fleet_json("status", "--channel", "staging")
    assert status["rollout"]["state"] == "complete"
    chain = fleet.fleet_json("releases", "--channel", "staging")
    assert [r["action"] for r in chain[:4]] == ["resume", "promote-wave", "pause", "push"]
    out = fleet.build.cli("fleet", "pause", "--channel", "staging", expect=4)
    assert "complete" in out.stderr  # nothing in progress to pause
