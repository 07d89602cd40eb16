"""Delta transfer with the real SeaweedFS and the real zstd: a host holding the previous
release downloads a segmented zstd patch (fewer bytes than the full file) and rebuilds
the exact release segment by segment; a corrupted patch and a missing base both fall
back to the full file. Each agent run is one poll of a fresh in-process Agent (its state
read from the host's store, as `releaser agent --once` does; test_cli_errors.py runs that
process for its exit codes, test_agents.py runs agents as processes)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from releaser.fleet import segments
from releaser.fleet.agent import Agent
from tests.fleet.fleetenv import Fleet, Host

pytestmark = pytest.mark.skipif(
    shutil.which("zstd") is None and os.environ.get("CI") != "true",
    reason="the zstd program is not installed (apt-get install zstd); .ci/run installs it")


def updated_copy(src: Path, dst: Path, pct: float, bump: int) -> Path:
    """A rebuild of src with pct % of rows updated in place (ids stable), VACUUMed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    conn = sqlite3.connect(dst)
    n = conn.execute("SELECT count(*) FROM tags_final").fetchone()[0]
    step = max(1, int(100 / pct))
    conn.execute("UPDATE tags_final SET post_count = post_count + ? WHERE id % ? = 0",
                 (bump, step))
    assert conn.total_changes >= n // step - 1
    conn.commit()
    conn.execute("VACUUM")
    conn.close()
    return dst


def push(fleet: Fleet, db: Path, note: str) -> dict:
    """Small segments so this small file is patched in many: only while pushing (the
    agents must follow the plan in the signed manifest, not these constants)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(segments, "SEGMENT", 64 << 10)
        m.setattr(segments, "MARGIN", 16 << 10)
        return fleet.push(db, note=note)


def agent_once(host: Host) -> None:
    ack = Agent(host.load()).poll()
    assert ack is not None and ack.state == "applied", ack


def test_delta_applied_corrupted_and_missing_base(fleet: Fleet) -> None:
    old = updated_copy(fleet.make_db("one.db", rows=6000, seed=1),
                       fleet.tmp / "builds" / "one-rebuilt.db", 1, 0)
    first = push(fleet, old, note="first")
    assert first["deltas"] == []  # nothing earlier in the channel
    a = fleet.host("app0")
    agent_once(a)

    second = push(fleet, updated_copy(old, fleet.tmp / "builds" / "two.db", 1, 7),
                  note="1 % updated")
    [d] = second["deltas"]
    assert d["base_sha256"] == first["sha256"]
    assert d["size"] * 2 < second["compressed_size"]
    assert len(d["segments"]) > 5
    agent_once(a)
    ack = fleet.acks()["app0"]
    assert ack["state"] == "applied" and ack["applied_sha256"] == second["sha256"]
    assert ack["bytes_downloaded"] == d["size"] < second["compressed_size"]
    assert a.live_sha() == second["sha256"]

    # a host that never had the base takes the full file
    b = fleet.host("app1")
    agent_once(b)
    ack = fleet.acks()["app1"]
    assert ack["state"] == "applied" and ack["applied_sha256"] == second["sha256"]
    assert ack["bytes_downloaded"] == second["compressed_size"]

    # a patch damaged in the bucket (same size, one byte flipped): refused by its
    # sha256 before zstd reads it, then the full file
    third = push(fleet, updated_copy(fleet.tmp / "builds" / "two.db",
                                     fleet.tmp / "builds" / "three.db", 1, 11), note="third")
    d3 = next(x for x in third["deltas"] if x["base_sha256"] == second["sha256"])
    body = bytearray(fleet.bucket.get(d3["file"]).body)
    body[len(body) // 2] ^= 0xFF
    fleet.bucket.put(d3["file"], bytes(body))
    agent_once(a)
    ack = fleet.acks()["app0"]
    assert ack["state"] == "applied" and ack["applied_sha256"] == third["sha256"]
    assert ack["bytes_downloaded"] == d3["size"] + third["compressed_size"]
    assert a.live_sha() == third["sha256"]
    # nothing left behind in the download folder
    assert not any((a.root.parent / "store.incoming").iterdir())
