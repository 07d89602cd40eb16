"""Every refusal an agent must make, against real stores and a real bucket: tampered
release file, manifest or pointer, unsigned pointer, a pointer signed by an unknown key,
a replayed lower seq (also after a restart), an expired pointer. Live never changes;
the ack says `rejected` with the reason. Agents run in-process here, one poll at a time,
so each refusal is observed exactly; test_agents.py runs them as processes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from releaser.fleet import layout
from releaser.fleet.agent import Agent
from releaser.fleet.envelope import Signed, seal
from releaser.fleet.pointer import Pointer
from releaser.fleet.sign import SecretKey, keygen
from releaser.fleet.transfer import Compressed, compress_chunks
from tests.fleet.fleetenv import Fleet, Host


@pytest.fixture
def two(fleet: Fleet) -> tuple[list[Host], list[Agent], dict]:
    """Two agents with release one live."""
    hosts = [fleet.host("a"), fleet.host("b")]
    agents = [Agent(h.load()) for h in hosts]
    one = fleet.push(fleet.make_db("one.db", rows=2000, seed=1))
    for agent in agents:
        assert agent.poll().state == "applied"
    return hosts, agents, one


def _refused(fleet: Fleet, hosts: list[Host], agents: list[Agent], live_sha: str,
             reason: str) -> None:
    for host, agent in zip(hosts, agents, strict=True):
        ack = agent.poll()
        assert ack is not None and ack.state == "rejected", ack
        assert any(re.search(reason, r) for r in ack.reasons), ack.reasons
        assert host.live_sha() == live_sha
        assert fleet.acks()[host.name]["state"] == "rejected"
        assert not list(agent.incoming.iterdir())


def _pointer(fleet: Fleet) -> dict:
    return json.loads(fleet.bucket.get(layout.channel("staging")).body)


def _put_pointer(fleet: Fleet, outer: dict | bytes) -> None:
    body = outer if isinstance(outer, bytes) else json.dumps(outer).encode()
    fleet.bucket.put(layout.channel("staging"), body)  # an attacker with bucket access


def _signed(outer: dict) -> Signed:
    raw = outer["payload"].encode()
    return Signed(json.loads(raw), raw, "")


def test_tampered_release_file_and_manifest_are_refused(fleet: Fleet, two) -> None:
    hosts, agents, one = two
    two_ = fleet.push(fleet.make_db("two.db", rows=2000, seed=2))
    evil = b"".join(compress_chunks(fleet.make_db("evil.db", rows=2000, seed=3),
                                    Compressed()))
    fleet.bucket.put(layout.release_file(two_["sha256"]), evil)
    _refused(fleet, hosts, agents, one["sha256"],
             r"release file|\(tampered\?\)|not the manifest's")

    three = fleet.push(fleet.make_db("three.db", rows=2200, seed=4))
    name = layout.manifest(three["manifest"])
    outer = json.loads(fleet.bucket.get(name).body)
    outer["payload"] = outer["payload"].replace('"note":"test"', '"note":"evil"')
    fleet.bucket.put(name, json.dumps(outer).encode())
    _refused(fleet, hosts, agents, one["sha256"], "bad signature")

    four = fleet.push(fleet.make_db("four.db", rows=2300, seed=5))
    for agent in agents:  # a genuine release still goes through afterwards
        assert agent.poll().state == "applied"
    assert {h.live_sha() for h in hosts} == {four["sha256"]}


def test_bad_pointers_replays_and_expiry_are_refused(fleet: Fleet, two,
                                                     tmp_path: Path) -> None:
    hosts, agents, one = two
    old = _pointer(fleet)
    two_ = fleet.push(fleet.make_db("two.db", rows=2100, seed=2))
    good = _pointer(fleet)

    _put_pointer(fleet, dict(good, payload=good["payload"].replace('"note":"test"',
                                                                    '"note":"evil"')))
    _refused(fleet, hosts, agents, one["sha256"], "bad signature")
    _put_pointer(fleet, {"payload": good["payload"]})
    _refused(fleet, hosts, agents, one["sha256"], "missing signature")
    stranger = keygen(tmp_path / "x.key", tmp_path / "x.pub")
    pointer = Pointer.from_signed(_signed(good), "p")
    _put_pointer(fleet, seal(pointer.payload(), stranger, pointer.comment())[0])
    _refused(fleet, hosts, agents, one["sha256"], r"not in \[fleet\] public_keys")

    _put_pointer(fleet, good)  # the genuine pointer still works
    for agent in agents:
        assert agent.poll().state == "applied"
    assert {h.live_sha() for h in hosts} == {two_["sha256"]}

    _put_pointer(fleet, old)  # validly signed, but older: a replay
    _refused(fleet, hosts, agents, two_["sha256"], "replayed pointer")
    restarted = [Agent(h.load()) for h in hosts]  # the highest seq is persisted
    _refused(fleet, hosts, restarted, two_["sha256"], "replayed pointer")

    stale = Pointer.next(_signed(good), channel="staging", manifest=pointer.manifest,
                         release_sha256=pointer.release_sha256, action="push",
                         actor="t", note=None, ttl_s=-1)
    key = SecretKey.load(fleet.key)
    _put_pointer(fleet, seal(stale.payload(), key, stale.comment())[0])
    _refused(fleet, hosts, restarted, two_["sha256"], "expired")
    assert all(a.metrics.pointer_expired._value.get() == 1 for a in restarted)
