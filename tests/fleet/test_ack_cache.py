"""Wave gating reads acks through an ETag cache (fleet/ackcache.py), against the real
SeaweedFS: a waiting agent's poll with unchanged acks is one LIST and no ack GET (counted
by the agent's own releaser_agent_bucket_requests_total{op}), a changed ack is read
again and still opens the next wave, and the cache drops deleted keys."""

from __future__ import annotations

import json

from releaser.fleet.ackcache import AckCache
from releaser.fleet.agent import Agent
from releaser.fleet.bucket import Bucket
from tests.fleet.fleetenv import Fleet, wait_for

OPS = ("ListObjectsV2", "GetObject", "PutObject", "HeadObject")


def _requests(agent: Agent) -> dict[str, float]:
    sample = agent.metrics.registry.get_sample_value
    return {op: sample("releaser_agent_bucket_requests_total", {"op": op}) or 0.0
            for op in OPS}


def _poll(agent: Agent) -> tuple[str | None, dict[str, float]]:
    """One poll: the state the agent last acked, and the requests it sent (by op)."""
    before = _requests(agent)
    agent.poll()
    after = _requests(agent)
    return agent.state.last.get("state"), {op: after[op] - before[op] for op in OPS
                                           if after[op] != before[op]}


def test_waiting_agent_polls_one_list_and_rereads_only_changed_acks(fleet: Fleet) -> None:
    hosts = [fleet.host(f"app{i}") for i in range(4)]
    agents = {h.name: Agent(h.load()) for h in hosts}
    first = fleet.push(fleet.make_db("one.db", rows=2100, seed=1))
    for agent in agents.values():
        assert agent.poll().state == "applied"
    second = fleet.build.cli_json("fleet", "push", str(fleet.make_db("two.db", rows=2150,
                                                                     seed=2)),
                                  "--channel", "staging", "--waves", "1,100%",
                                  "--canary", "app0", "--bake", "0.5")
    waiter = agents["app1"]
    state, sent = _poll(waiter)  # new pointer: full GET, LIST, a GET per host's ack
    assert state == "waiting"
    assert sent["ListObjectsV2"] == 1 and sent["GetObject"] == 1 + len(hosts), sent
    _poll(waiter)  # its own `waiting` ack (written after the last read) is re-read once
    for _ in range(2):  # nothing changed: the pointer's conditional GET (304) and 1 LIST
        state, sent = _poll(waiter)
        assert state == "waiting"
        assert sent == {"ListObjectsV2": 1, "GetObject": 1}, sent
    assert fleet.acks()["app1"]["seq"] == second["seq"]

    assert agents["app0"].poll().state == "applied"  # the canary: its ack changes
    assert agents["app0"].state.last["target_sha256"] == second["sha256"]
    state, sent = _poll(waiter)
    assert sent == {"ListObjectsV2": 1, "GetObject": 2, "PutObject": 1}, sent  # + app0's
    assert state == "waiting" and "baking until" in waiter.state.last["reasons"][0]
    # the wave opens once the canary's re-read ack has stayed healthy for the bake
    wait_for("app1 applies the rollout's release",
             lambda: waiter.poll() is not None
             and waiter.state.last.get("state") == "applied"
             and waiter.state.last.get("applied_sha256") == second["sha256"], timeout=20)
    assert first["sha256"] != second["sha256"]


def _put_ack(bucket: Bucket, host: str, **fields: object) -> None:
    bucket.put(f"status/staging/{host}.json",
               json.dumps({"host_id": host, **fields}, sort_keys=True).encode())


def test_cache_rereads_changed_keys_and_drops_deleted_ones(bucket: Bucket) -> None:
    for host in ("a", "b", "c"):
        _put_ack(bucket, host, state="applied")
    bucket.put("status/staging/junk.json", b"not json")
    cache = AckCache()
    assert [a["host_id"] for a in cache.read(bucket, "staging")] == ["a", "b", "c"]
    assert cache.gets == 4
    cache.read(bucket, "staging")
    assert cache.gets == 0  # the LIST's ETags match the GETs' (bad body remembered too)
    _put_ack(bucket, "b", state="applied")  # same bytes: same ETag (MD5), nothing to read
    cache.read(bucket, "staging")
    assert cache.gets == 0
    _put_ack(bucket, "b", state="rejected")
    got = {a["host_id"]: a["state"] for a in cache.read(bucket, "staging")}
    assert cache.gets == 1 and got == {"a": "applied", "b": "rejected", "c": "applied"}
    bucket.delete("status/staging/c.json")
    got = {a["host_id"]: a["state"] for a in cache.read(bucket, "staging")}
    assert cache.gets == 0 and got == {"a": "applied", "b": "rejected"}
    _put_ack(bucket, "c", state="waiting")  # back with other content: read, not remembered
    got = {a["host_id"]: a["state"] for a in cache.read(bucket, "staging")}
    assert cache.gets == 1 and got["c"] == "waiting"
    assert AckCache().read(bucket, "staging") == cache.read(bucket, "staging")
