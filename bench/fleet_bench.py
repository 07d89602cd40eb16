"""Fleet benchmark (issue 15): delta bytes and memory, fleet rollback time, push-to-10-agents
time, wave-gating cost.

    .venv/bin/python bench/fleet_bench.py [--rows N] [--agent-rows N] [--agents 10]
        [--rollbacks 3] [--ack-hosts 200] [--whole] [--agent-large] [--skip-a] [--skip-b]

Part A, on the bench's large database (bench/bench.py's cached tags-ROWS.db, ~1 GB at
8M rows), rebuilt (VACUUM INTO), and a rebuild of it with 1 % of rows updated (ids
stable, VACUUMed; also one with 0.5 % deleted + 0.5 % inserted): the segmented patch
exactly as `fleet push` makes it and an agent
applies it (releaser/fleet/segments.py), each side in a child process under
/usr/bin/time, so its peak RSS is the largest of that Python process and its zstd
children. Printed: bytes an agent downloads (the patch) vs the full compressed file vs
raw (target <= 5 % of raw); peak RSS of each side next to its floor (the same Python
importing the module, no zstd) and the base's size (target: under the base's size);
the rebuilt file's sha256 checked. --whole also runs one whole-file
`zstd --patch-from --long=31` for comparison (about 3 GB of memory).
Part B, with a real SeaweedFS and --agents real `releaser agent` processes (poll_s 1) on
a smaller database (--agent-rows; every agent holds its own store):
  push of the 1 %-updated build until the last agent acked it, next to one local
  `releaser publish` of the same file; bytes downloaded per agent (the delta);
  --rollbacks times: `fleet rollback` until the last agent's live symlink points at the
  previous release, and until the last ack says so (target <= poll_s + 2 s, 0 bytes),
  with where the time goes (the command, the poll wait, the local switch, the ack);
  wave gating: the requests, ms and client CPU of one waiting agent's ack read per poll
  with --ack-hosts hosts: first poll (every ack) vs steady state (1 LIST, 0 GET: the
  floor) vs after 5 acks changed (5 GETs).
Part C (--agent-large): one real `releaser agent --once` on the large database, first
the full file, then the 1 %-updated build as a delta: bytes and the agent's peak RSS
(download, segment rebuild and the publish gates together).
Prints each figure next to its floor/target and `uptime`'s load; writes
bench-results/fleet-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fleet_delta import load, part_a, part_c, print_a, print_c, rebuilt, updated, weed_fleet  # noqa: E402

from bench import OUT, candidate  # noqa: E402


def _watch_live(hosts: list, before: dict[str, str], t0: float,
                switched: dict[str, float], stop: threading.Event) -> None:
    """Record when each host's live symlink first points somewhere else."""
    while not stop.is_set() and len(switched) < len(hosts):
        for h in hosts:
            if h.name not in switched and os.readlink(h.live) != before[h.name]:
                switched[h.name] = time.perf_counter() - t0
        time.sleep(0.005)


def rollback_trial(fleet, hosts: list) -> dict[str, object]:  # noqa: ANN001
    before = {h.name: os.readlink(h.live) for h in hosts}
    switched: dict[str, float] = {}
    stop = threading.Event()
    t0 = time.perf_counter()
    watcher = threading.Thread(target=_watch_live, args=(hosts, before, t0, switched, stop),
                               daemon=True)
    watcher.start()
    try:
        back = fleet.fleet_json("rollback", "--channel", "staging")
        cmd_s = time.perf_counter() - t0
        acks = fleet.wait_all(hosts, "applied", back["seq"], timeout=120)
        ack_s = time.perf_counter() - t0
        watcher.join(timeout=10)
    finally:
        stop.set()
    lives = sorted(switched.values())
    return {"cmd_s": cmd_s, "first_live_s": lives[0], "last_live_s": lives[-1],
            "all_live": len(lives) == len(hosts), "acks_s": ack_s,
            "bytes": sum(a["bytes_downloaded"] for a in acks.values())}


def local_switch_ms(host, runs: int = 5) -> list[float]:  # noqa: ANN001
    """The agent's local O(1) rollback path alone (in this process, agents stopped)."""
    from releaser.fleet import local

    config = host.load()
    by_sha = {r["sha256"]: r["release_id"] for r in reversed(host.releases())
              if r.get("on_disk")}
    out = []
    for _ in range(runs):
        live = local.live_sha256(config)
        other = next(rid for sha, rid in by_sha.items() if sha != live)
        t0 = time.perf_counter()
        local.switch_to(config, other, actor="bench", reason="bench")
        out.append(1000 * (time.perf_counter() - t0))
    return out


def ack_read_cost(server, template: dict[str, object], n: int, runs: int = 5,
                  changed: int = 5) -> dict[str, object]:  # noqa: ANN001
    """What one waiting agent reads per poll during a wave rollout with n hosts, through
    the agent's AckCache (rollout.step): the first poll (LIST + a GET per host, as
    `fleet status` always reads), the steady state of a bake (no ack changed) and a poll
    after `changed` hosts rewrote their acks. Requests are counted on the client
    (Bucket.on_request, as the agent's releaser_agent_bucket_requests_total)."""
    from releaser.fleet.ackcache import AckCache
    from releaser.fleet.bucket import Bucket

    bucket = Bucket("s3://releases/ack-bench", endpoint_url=server.endpoint_url,
                    region="us-east-1")
    sent: dict[str, int] = {}
    bucket.on_request(lambda op: sent.__setitem__(op, sent.get(op, 0) + 1))

    def put(i: int, **more: object) -> None:
        body = dict(template, host_id=f"host{i:04d}", **more)
        bucket.put(f"status/staging/host{i:04d}.json", json.dumps(body).encode())

    for i in range(n):
        put(i)

    def poll(cache: AckCache) -> dict[str, object]:
        sent.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        got = cache.read(bucket, "staging")
        return {"ms": 1000 * (time.perf_counter() - t0),
                "cpu_ms": 1000 * (time.process_time() - c0), "acks": len(got),
                "lists": sent.get("ListObjectsV2", 0), "gets": sent.get("GetObject", 0)}

    first, steady, moved = [], [], []
    for r in range(runs):
        cache = AckCache()
        first.append(poll(cache))  # a fresh cache: every ack read
        steady.append(poll(cache))
        for i in range(changed):
            put(i, last_seen=f"run {r}")
        moved.append(poll(cache))
    return {"hosts": n, "changed": changed, "first": first, "steady": steady,
            "moved": moved}


def part_b(rows: int, agents: int, rollbacks: int, ack_hosts: int) -> dict[str, object]:
    with weed_fleet("fleet-bench-", "bench") as (fleet, server):
        poll_s = 1.0
        hosts = [fleet.host(f"app{i}", poll_s=poll_s) for i in range(agents)]
        base = rebuilt(candidate(rows, 1))
        new = updated(base)
        first = fleet.push(base, note="base")
        for h in hosts:
            h.start_agent()
        fleet.wait_all(hosts, "applied", first["seq"], timeout=600)
        load_b = load()
        t0 = time.perf_counter()
        second = fleet.push(new, note="1 % updated")
        pushed_s = time.perf_counter() - t0
        acks = fleet.wait_all(hosts, "applied", second["seq"], timeout=600)
        push_s = time.perf_counter() - t0
        per_agent = sorted(a["bytes_downloaded"] for a in acks.values())
        template = next(iter(acks.values()))
        trials = []
        for i in range(rollbacks):
            time.sleep(2)  # agents back to idle polling
            trials.append(rollback_trial(fleet, hosts))
            if i + 1 < rollbacks:  # forward again (held locally: no download)
                time.sleep(2)
                fwd = fleet.push(new, note=f"forward {i}")
                fleet.wait_all(hosts, "applied", fwd["seq"], timeout=120)
        fleet.stop_all()
        switch = local_switch_ms(hosts[0])
        cost = ack_read_cost(server, template, ack_hosts)
        local_host = fleet.host("local-publish")
        local_host.run("init")
        t0 = time.perf_counter()
        local_host.run("publish", str(new))
        publish_s = time.perf_counter() - t0
        return {"rows": rows, "agents": agents, "poll_s": poll_s, "raw": new.stat().st_size,
                "compressed": second["compressed_size"], "deltas": second["deltas"],
                "bytes_per_agent": per_agent, "push_cmd_s": pushed_s,
                "push_to_all_s": push_s, "local_publish_s": publish_s,
                "rollbacks": trials, "local_switch_ms": switch, "ack_read": cost,
                "load": load_b, "load_after": load()}


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    return ys[len(ys) // 2] if len(ys) % 2 else (ys[len(ys) // 2 - 1] + ys[len(ys) // 2]) / 2


def print_b(b: dict[str, object]) -> bool:
    print(f"\n== {b['agents']} agents, {b['rows']} rows ({int(b['raw']) / 1e6:.1f} MB raw, "  # type: ignore[call-overload]
          f"{int(b['compressed']) / 1e6:.2f} MB compressed), poll_s {b['poll_s']:g} "  # type: ignore[call-overload]
          f"(load {b['load']}) ==")
    per = b["bytes_per_agent"]
    print(f"bytes per agent for the 1 % update: {per[0]}..{per[-1]} "  # type: ignore[index]
          f"({100 * per[-1] / int(b['raw']):.2f} % of raw; full file {b['compressed']})")  # type: ignore[index,operator,call-overload]
    print(f"push -> last of {b['agents']} agents applied: {b['push_to_all_s']:.1f} s "
          f"(the push command itself {b['push_cmd_s']:.1f} s)   one local publish of the "
          f"same file: {b['local_publish_s']:.1f} s   ratio "
          f"{float(b['push_to_all_s']) / float(b['local_publish_s']):.1f}x")  # type: ignore[arg-type]
    target = float(b["poll_s"]) + 2  # type: ignore[arg-type]
    trials: list[dict[str, float]] = b["rollbacks"]  # type: ignore[assignment]
    lives = [t["last_live_s"] for t in trials]
    acks = [t["acks_s"] for t in trials]
    zero = all(t["bytes"] == 0 for t in trials) and all(t["all_live"] for t in trials)
    ok = _median(lives) <= target and zero
    print(f"fleet rollback -> last agent live on the previous release: median "
          f"{_median(lives):.2f} s, max {max(lives):.2f} s of {len(lives)}; last ack seen: "
          f"median {_median(acks):.2f} s; bytes {sum(t['bytes'] for t in trials)}   "
          f"target <= {target:g} s, 0 bytes   {'OK' if ok else 'MISSED'}")
    sw = b["local_switch_ms"]
    print(f"  where it goes (medians): the command {_median([t['cmd_s'] for t in trials]):.2f}"
          f" s; pointer -> first agent live "
          f"{_median([t['first_live_s'] - t['cmd_s'] for t in trials]):.2f} s, -> last "
          f"{_median([t['last_live_s'] - t['cmd_s'] for t in trials]):.2f} s (a poll "
          f"comes every {0.8 * float(b['poll_s']):g}-{1.2 * float(b['poll_s']):g} s); "  # type: ignore[arg-type]
          f"the local switch alone {_median(sw):.0f} ms; last live -> last ack seen "  # type: ignore[arg-type]
          f"{_median([t['acks_s'] - t['last_live_s'] for t in trials]):.2f} s")
    ok = print_gating(b["ack_read"]) and ok  # type: ignore[arg-type]
    return ok


def print_gating(c: dict) -> bool:
    n = c["hosts"]
    floor = {"lists": -(-n // 1000), "gets": 0}  # one LIST page per 1,000 keys, no GET
    steady_ok = all(p["lists"] == floor["lists"] and p["gets"] == 0 for p in c["steady"])
    moved_ok = all(p["gets"] == c["changed"] for p in c["moved"])
    print(f"wave gating, one waiting agent's ack read per poll with {n} hosts "
          f"(median of {len(c['first'])}; requests; wall ms; client CPU ms):")
    for label, key in (("first poll (every ack, as `fleet status`)", "first"),
                       ("steady state (bake, nothing changed)", "steady"),
                       (f"after {c['changed']} acks changed", "moved")):
        ps = c[key]
        print(f"  {label}: {ps[0]['lists']} LIST + {ps[0]['gets']} GET, "
              f"{_median([p['ms'] for p in ps]):.0f} ms (min {min(p['ms'] for p in ps):.0f}),"
              f" CPU {_median([p['cpu_ms'] for p in ps]):.0f} ms")
    first = c["first"][0]["lists"] + c["first"][0]["gets"]
    ms = _median([p["ms"] for p in c["first"]]) / _median([p["ms"] for p in c["steady"]])
    print(f"  steady state vs first poll (same run): {first} -> "
          f"{c['steady'][0]['lists'] + c['steady'][0]['gets']} requests, {ms:.0f}x less "
          f"wall time   floor: {floor['lists']} LIST + 0 GET, {c['changed']} GET after "
          f"{c['changed']} changed   {'OK' if steady_ok and moved_ok else 'MISSED'}")
    return steady_ok and moved_ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8_000_000, help="part A database")
    ap.add_argument("--agent-rows", type=int, default=140_000, help="part B database")
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--rollbacks", type=int, default=3)
    ap.add_argument("--ack-hosts", type=int, default=200)
    ap.add_argument("--whole", action="store_true", help="also one whole-file patch (~3 GB)")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--agent-large", action="store_true",
                    help="also one real agent taking the large build as a delta")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    results: dict[str, object] = {}
    ok = True
    if not args.skip_a:
        results["delta"] = a = part_a(args.rows, args.whole)
        ok = print_a(a) and ok
    if not args.skip_b:
        results["fleet"] = b = part_b(args.agent_rows, args.agents, args.rollbacks,
                                      args.ack_hosts)
        ok = print_b(b) and ok
    if args.agent_large:
        results["agent_large"] = c = part_c(args.rows)
        ok = print_c(c) and ok
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for name in (f"fleet-{stamp}.json", "fleet-latest.json"):
        (OUT / name).write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
