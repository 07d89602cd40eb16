"""Analysis as a wave rollout's promotion condition, and bakes that survive a restart:
real SeaweedFS, real `releaser agent` processes, and for the error-rate case the real
Prometheus scraping the real test app that reads each host's live release."""

from __future__ import annotations

import json
import time

from releaser.analysis_record import parse_iso
from tests.fleet.fleetenv import Fleet, wait_for
from tests.promserver import Fault, LoadGen, Stack, free_port
from tests.test_notify import Receiver

# the share of 5xx answers of the release live on the agent's own host ({host} is the
# agent's host_id, {release_id} its local id of the release), over 5 s
ERROR_RATE = ('(sum(rate(http_requests_total{host="{host}",release="{release_id}",'
              'status=~"5.."}[5s])) or vector(0)) / sum(rate(http_requests_total'
              '{host="{host}",release="{release_id}"}[5s]))')


def analysis_toml(address: str, query: str, *, interval_s: float,
                  inconclusive_limit: int) -> str:
    return (f"[analysis]\ninconclusive_limit = {inconclusive_limit}\n\n"
            f'[[analysis.prometheus]]\nname = "error_rate"\naddress = "{address}"\n'
            f"query = {json.dumps(query)}\nfail = {{ max = 0.05 }}\n"
            f"interval_s = {interval_s}\ntimeout_s = 2\n")


def _push_canary(fleet: Fleet, name: str, canary: str, bake: float) -> dict:
    return fleet.build.cli_json(
        "fleet", "push", str(fleet.make_db(name, rows=2150, seed=2)), "--channel",
        "staging", "--canary", canary, "--waves", "100%", "--bake", str(bake))


def _rollout(fleet: Fleet) -> dict:
    return fleet.fleet_json("status", "--channel", "staging")["rollout"]


def test_a_canary_whose_error_rate_rises_halts_the_rollout(fleet: Fleet,
                                                          prom_stack: Stack) -> None:
    names = ["wa-canary", "wa-app1"]
    toml = analysis_toml(prom_stack.prom.url, ERROR_RATE, interval_s=1,
                         inconclusive_limit=10)  # no data until two scrapes of the release
    hosts = [fleet.host(n, extra=toml) for n in names]
    canary = hosts[0]
    vhost = prom_stack.app.add_host(canary.name, canary.live)
    load = LoadGen(prom_stack.app, canary.name)
    try:
        first = fleet.first_release(hosts)
        # the new build makes the app fail every 2nd request while it is live (release 2)
        vhost.fault = Fault(error_ratio=0.5, release_id=2)
        second = _push_canary(fleet, "two.db", canary.name, bake=60)
        status = wait_for("the rollout aborted",
                          lambda: (r := _rollout(fleet))["state"] == "aborted" and r,
                          timeout=60, interval=0.25)
    finally:
        load.stop()
    assert status["failed"] == [canary.name]
    assert any(canary.name in r and "analysis error_rate failed: observed" in r
               for r in status["reasons"])
    ack = fleet.acks()[canary.name]
    assert ack["state"] == "reverted" and ack["applied_sha256"] == first["sha256"]
    assert ack["analysis"]["outcome"] == "fail" and ack["analysis"]["release_id"] == 2
    [entry] = ack["analysis"]["entries"]
    assert entry["failures"] == 1 and entry["last"]["value"] > 0.05
    assert f'host="{canary.name}",release="2"' in entry["last"]["query"]
    # the canary went back by itself, as the monitor would: marked bad, event recorded
    event = canary.cli_json("history")[0]
    assert (event["action"], event["from_release_id"], event["release_id"]) == \
        ("auto-revert", 2, 1)
    assert event["reason"].startswith("analysis error_rate failed: observed ")
    assert "healthy <= 0.05" in event["reason"]
    time.sleep(1.0)  # a few more polls: the abort holds, nobody else takes it
    for h in hosts:
        assert h.live_sha() == first["sha256"], h.name
    for h in hosts[1:]:
        assert second["sha256"] not in [r["sha256"] for r in h.releases()], h.name
    text = fleet.build.cli("fleet", "status", "--channel", "staging").stdout
    assert "rollout: aborted" in text and "analysis failed: analysis error_rate" in text
    fleet.stop_all()


def test_an_unreachable_prometheus_pauses_the_rollout_and_never_reverts(
        fleet: Fleet) -> None:
    # nothing listens there: every evaluation is inconclusive
    toml = analysis_toml(f"http://127.0.0.1:{free_port()}", "vector(0)", interval_s=0.3,
                         inconclusive_limit=2)
    canary = fleet.host("wi-canary", extra=toml)
    receiver = Receiver()
    hook = (f'[[notify.webhook]]\nurl = "{receiver.url}"\n'
            'events = ["fleet-rollout-paused"]\n')
    others = [fleet.host("wi-app1", extra=hook)]  # no analysis of its own
    hosts = [canary, *others]
    first = fleet.first_release(hosts)
    second = _push_canary(fleet, "two.db", canary.name, bake=1)
    rollout = wait_for("the rollout paused",
                       lambda: (r := _rollout(fleet))["state"] == "paused" and r, timeout=40,
                       interval=0.25)
    assert rollout["inconclusive"] == [canary.name] and rollout["failed"] == []
    assert "analysis inconclusive" in rollout["reasons"][0]
    assert "did not answer" in rollout["reasons"][0]
    fleet.wait_all(others, "waiting", second["seq"])
    time.sleep(1.2)  # past the 1 s bake (it began before the pause): paused, not baking
    assert all(h.live_sha() == first["sha256"] for h in others)
    assert "rollout paused" in fleet.acks()[others[0].name]["reasons"][0]
    [event] = receiver.wait_for(1)  # the waiting host tells on-call, once
    assert (event["action"], event["outcome"]) == ("fleet-rollout-paused", "paused")
    assert event["release"]["sha256"] == second["sha256"]
    assert canary.name in event["reasons"][0] and "inconclusive" in event["reasons"][0]
    receiver.server.shutdown()
    receiver.server.server_close()
    # never a revert: the canary keeps the release
    assert canary.live_sha() == second["sha256"]
    assert not [e for e in canary.cli_json("history") if e["action"] == "auto-revert"]
    ack = fleet.acks()[canary.name]
    assert ack["state"] == "applied" and ack["analysis"]["outcome"] == "inconclusive"
    [entry] = ack["analysis"]["entries"]
    assert entry["inconclusive"] == 2 and ack["analysis"]["inconclusive_limit"] == 2
    # the host's own status says so too
    status = canary.cli_json("status")
    [record] = [r for r in status["analysis"] if r["who"] == "agent"]
    assert record["outcome"] == "inconclusive" and record["release_id"] == 2
    assert "inconclusive 2 of 2" in canary.cli("status").stdout
    text = fleet.build.cli("fleet", "status", "--channel", "staging").stdout
    assert "rollout: paused" in text and "analysis inconclusive 2 of 2" in text
    assert "fleet resume --channel staging` accepts the inconclusive analysis of " \
        f"{canary.name}" in text

    resumed = fleet.fleet_json("resume", "--channel", "staging", "--note", "prom down")
    assert resumed["accepted"] == [canary.name]
    fleet.wait_all(hosts, "applied", resumed["seq"])
    assert all(h.live_sha() == second["sha256"] for h in hosts)
    assert _rollout(fleet)["state"] == "complete"
    fleet.stop_all()


def test_an_agent_restarted_mid_bake_does_not_bake_again(fleet: Fleet,
                                                         prom_stack: Stack) -> None:
    # restarted at half the bake, the app must apply within bake/2 of its end (a second
    # full bake would put it at least bake/2 later); its own analysis (every 0.5 s) must
    # count 3 evaluations, restart and evaluate again within one bake
    bake = 6.0
    canary = fleet.host("wr-canary")
    # the second wave's host analyses its bake too (vector(0): always a pass)
    app = fleet.host("wr-app", extra=analysis_toml(prom_stack.prom.url, "vector(0)",
                                                  interval_s=0.5, inconclusive_limit=3))
    fleet.first_release([canary, app])
    second = _push_canary(fleet, "two.db", canary.name, bake=bake)
    seen: set[str] = set()

    def baking() -> str | None:
        ack = fleet.acks()[app.name]
        if (ack["seq"] == second["seq"] and ack["state"] == "waiting"
                and "baking until" in ack["reasons"][0]):
            seen.add(ack["reasons"][0])
            return ack["reasons"][0]
        return None

    reason = wait_for("the wave baking", baking, timeout=30)
    until = parse_iso(reason.rsplit(" ", 1)[1])
    assert until is not None
    canary_since = parse_iso(fleet.acks()[canary.name]["healthy_since"])
    assert canary_since is not None and until == canary_since + bake
    app.stop_agent()
    # restart it halfway through the bake
    time.sleep(max(0.0, until - bake / 2 - time.time()))
    restarted = time.time()
    app.start_agent()
    ack = wait_for("the app applied", lambda: baking() is None and (
        a := fleet.acks()[app.name])["state"] == "applied" and a, timeout=30)
    since = parse_iso(ack["healthy_since"])
    assert since is not None
    # never early, and the bake went on from where it was: no second full bake
    assert since >= until
    assert since < restarted + bake, (since - restarted, bake)
    assert seen == {reason}  # the same end of the bake, before and after the restart

    # restarted during its own bake analysis: same healthy_since, same window, and
    # the evaluations counted before the restart still count
    def analysis(evaluated_after: float = 0.0, at_least: int = 0) -> dict | None:
        a = fleet.acks()[app.name]["analysis"]
        if not a or not a["entries"]:
            return None  # (its first ack says `running` before any evaluation)
        if not evaluated_after and a["outcome"] != "running":
            return None
        [entry] = a["entries"]
        last_at = parse_iso((entry["last"] or {}).get("at")) or 0.0
        ok = entry["evaluations"] >= at_least and last_at > evaluated_after
        return a if ok else None

    before = wait_for("3 evaluations", lambda: analysis(at_least=3), timeout=20)
    app.stop_agent()
    stopped = time.time()
    app.start_agent()
    after = wait_for("an evaluation after the restart", lambda: analysis(stopped),
                     timeout=20)
    assert (after["since"], after["until"]) == (before["since"], before["until"])
    assert parse_iso(after["since"]) == since
    assert after["entries"][0]["evaluations"] > before["entries"][0]["evaluations"]
    assert fleet.acks()[app.name]["healthy_since"] == ack["healthy_since"]
    wait_for("the rollout complete", lambda: _rollout(fleet)["state"] == "complete",
             timeout=30, interval=0.25)
    done = fleet.acks()[app.name]["analysis"]
    assert done["outcome"] == "pass" and parse_iso(done["until"]) == since + bake
    fleet.stop_all()
