"""Promote staging -> production: refused below --require-acked, then production's
agent takes the very release staging's hosts acknowledged."""

from __future__ import annotations

from releaser.fleet.agent import Agent
from tests.fleet.fleetenv import Fleet


def test_promote_requires_acks_then_production_follows(fleet: Fleet) -> None:
    staging = [Agent(fleet.host(f"s{i}").load()) for i in range(2)]
    prod_host = fleet.host("p1", channel="production")
    prod = Agent(prod_host.load())
    for agent in staging:  # an agent reports on its first poll: the channel knows it
        agent.poll()
    assert len(fleet.acks("staging")) == 2
    pushed = fleet.push(fleet.make_db("one.db", seed=1))
    assert staging[0].poll().state == "applied"

    refused = fleet.build.cli("fleet", "promote", "--from", "staging", "--to", "production",
                              "--require-acked", "100", expect=1)
    assert "1 of 2 hosts (50 %)" in refused.stderr
    assert prod.poll() is None or prod.state.applied_seq == 0  # production has no pointer

    assert staging[1].poll().state == "applied"
    promoted = fleet.fleet_json("promote", "--from", "staging", "--to", "production",
                                "--require-acked", "100")
    assert promoted["outcome"] == "promoted" and promoted["sha256"] == pushed["sha256"]
    assert promoted["acked"] == 2 and promoted["seq"] == 1
    ack = prod.poll()
    assert ack is not None and ack.state == "applied"
    assert prod_host.live_sha() == pushed["sha256"]
    again = fleet.fleet_json("promote", "--from", "staging", "--to", "production")
    assert again["outcome"] == "unchanged"
    chain = fleet.fleet_json("releases", "--channel", "production")
    assert [(r["seq"], r["action"]) for r in chain] == [(1, "promote")]
