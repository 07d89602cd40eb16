"""Fleet benchmark (issue 15): delta bytes, fleet rollback time, push-to-10-agents time.

    .venv/bin/python bench/fleet_bench.py [--rows N] [--agent-rows N] [--agents 10]

Part A, on the bench's large database (bench/bench.py's cached tags-ROWS.db, ~1 GB at
8M rows), rebuilt (VACUUM INTO), and a rebuild of it with 1 % of rows updated (ids
stable, VACUUMed), then
  delta = `zstd -3 --long=W --patch-from=BASE` (what releaser/fleet/delta.py runs)
  full  = the release file as `fleet push` uploads it (python-zstandard, transfer.LEVEL)
  raw   = the database
  -> delta / raw                          target <= 5 %
  peak RSS of zstd making and applying the patch (wait4), next to the base's size.
Part B, with a real SeaweedFS and --agents real `releaser agent` processes (poll_s 1) on
a smaller database (--agent-rows; every agent holds its own store):
  push of the 1 %-updated build until the last agent acked it, next to one local
  `releaser publish` of the same file; bytes downloaded per agent (the delta);
  `fleet rollback` until the last agent is live on the previous release
                                          target <= poll_s + 2 s, 0 bytes.
Prints each figure next to its floor/target; writes bench-results/fleet-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench import OUT, candidate  # noqa: E402
from releaser.fleet import delta, transfer  # noqa: E402


def rebuilt(src: Path) -> Path:
    """src as a rebuild writes it (VACUUM INTO: packed, in rowid order), cached."""
    dst = src.with_name(src.stem + "-rebuilt.db")
    if not dst.exists():
        print(f"making {dst.name} (VACUUM INTO)...", flush=True)
        tmp = dst.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(src)
        conn.execute("VACUUM INTO ?", (str(tmp),))
        conn.close()
        os.replace(tmp, dst)
    return dst


def updated(src: Path, pct: float = 1.0) -> Path:
    dst = src.with_name(src.stem + f"-upd{pct:g}.db")
    if not dst.exists():
        print(f"making {dst.name} ({pct:g} % of rows updated, ids stable)...", flush=True)
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(src, tmp)
        conn = sqlite3.connect(tmp)
        conn.execute("UPDATE tags_final SET post_count = post_count + 7 WHERE id % ? = 0",
                     (int(100 / pct),))
        conn.commit()
        conn.execute("VACUUM")
        conn.close()
        os.replace(tmp, dst)
    return dst


def child(argv: list[str], stdout=subprocess.DEVNULL) -> tuple[float, int]:  # noqa: ANN001
    """Wall seconds and peak RSS (KiB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE)
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:3]}: {err.decode()[-500:]}")
    return time.perf_counter() - t0, usage.ru_maxrss


def part_a(rows: int) -> dict[str, object]:
    base = rebuilt(candidate(rows, 1))
    new = updated(base)
    raw = new.stat().st_size
    zstd = delta.zstd_binary()
    assert zstd, "apt-get install zstd"
    wlog = delta.window_log(base.stat().st_size, raw)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        patch, out = Path(tmp) / "p.zst", Path(tmp) / "out.db"
        make_s, make_rss = child([zstd, "-q", "-f", f"-{delta.LEVEL}", f"--long={wlog}",
                                  f"--patch-from={base}", str(new), "-o", str(patch)])
        with open(out, "wb") as fh:
            apply_s, apply_rss = child([zstd, "-q", "-d", "-c", f"--long={wlog}",
                                        f"--patch-from={base}", str(patch)], stdout=fh)
        same = transfer.snapshot(out, Path(tmp)).sha256 == transfer.snapshot(
            new, Path(tmp)).sha256
        dsize = patch.stat().st_size
    full = transfer.Compressed()
    t0 = time.perf_counter()
    for _ in transfer.compress_chunks(new, full):
        pass
    return {"rows": rows, "raw": raw, "base": base.stat().st_size, "full": full.size,
            "full_s": time.perf_counter() - t0, "delta": dsize, "window_log": wlog,
            "make_s": make_s, "make_rss_kib": make_rss, "apply_s": apply_s,
            "apply_rss_kib": apply_rss, "rebuilt_identical": same}


def part_b(rows: int, agents: int) -> dict[str, object]:
    from releaser.fleet.bucket import Bucket
    from tests.fleet.fleetenv import Fleet
    from tests.s3server import CREDENTIALS, WeedServer

    for k, v in CREDENTIALS.items():
        os.environ.setdefault(k, v)
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-", dir=OUT))
    server = WeedServer(work / "weed")
    server.start()
    try:
        url = "s3://releases/bench"
        fleet = Fleet(tmp=work, url=url, endpoint=server.endpoint_url,
                      bucket=Bucket(url, endpoint_url=server.endpoint_url,
                                    region="us-east-1"),
                      key=work / "fleet.key", pub=work / "fleet.pub")
        poll_s = 1.0
        hosts = [fleet.host(f"app{i}", poll_s=poll_s) for i in range(agents)]
        base = rebuilt(candidate(rows, 1))
        new = updated(base)
        first = fleet.push(base, note="base")
        for h in hosts:
            h.start_agent()
        fleet.wait_all(hosts, "applied", first["seq"], timeout=600)
        t0 = time.perf_counter()
        second = fleet.push(new, note="1 % updated")
        acks = fleet.wait_all(hosts, "applied", second["seq"], timeout=600)
        push_s = time.perf_counter() - t0
        per_agent = sorted(a["bytes_downloaded"] for a in acks.values())
        t0 = time.perf_counter()
        back = fleet.fleet_json("rollback", "--channel", "staging")
        acks = fleet.wait_all(hosts, "applied", back["seq"], timeout=120)
        rollback_s = time.perf_counter() - t0
        rollback_bytes = sum(a["bytes_downloaded"] for a in acks.values())
        fleet.stop_all()
        local = fleet.host("local-publish")
        local.run("init")
        t0 = time.perf_counter()
        local.run("publish", str(new))
        publish_s = time.perf_counter() - t0
        return {"rows": rows, "agents": agents, "poll_s": poll_s, "raw": new.stat().st_size,
                "compressed": second["compressed_size"], "deltas": second["deltas"],
                "bytes_per_agent": per_agent, "push_to_all_s": push_s,
                "local_publish_s": publish_s, "rollback_s": rollback_s,
                "rollback_bytes": rollback_bytes}
    finally:
        server.stop(graceful=False)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8_000_000, help="part A database")
    ap.add_argument("--agent-rows", type=int, default=140_000, help="part B database")
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--skip-a", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    results: dict[str, object] = {}
    ok = True
    if not args.skip_a:
        a = part_a(args.rows)
        results["delta"] = a
        pct = 100 * a["delta"] / a["raw"]  # type: ignore[operator]
        print(f"\n== delta transfer, {a['rows']} rows, 1 % updated ==")
        print(f"raw {a['raw'] / 1e6:9.1f} MB   full compressed {a['full'] / 1e6:8.1f} MB "
              f"({100 * a['full'] / a['raw']:.1f} %)   delta {a['delta'] / 1e6:7.2f} MB "
              f"= {pct:.2f} % of raw   target <= 5 %   {'OK' if pct <= 5 else 'MISSED'}")
        print(f"zstd make: {a['make_s']:.1f} s, peak RSS {a['make_rss_kib'] / 1024:.0f} MiB;"
              f" apply: {a['apply_s']:.1f} s, peak RSS {a['apply_rss_kib'] / 1024:.0f} MiB "
              f"(base {a['base'] / 2**20:.0f} MiB, --long={a['window_log']}; RSS counts "
              f"the mmapped base's pages); rebuilt identical: {a['rebuilt_identical']}")
        ok = ok and pct <= 5 and bool(a["rebuilt_identical"])
    b = part_b(args.agent_rows, args.agents)
    results["fleet"] = b
    print(f"\n== {b['agents']} agents, {b['rows']} rows ({b['raw'] / 1e6:.1f} MB raw, "
          f"{b['compressed'] / 1e6:.2f} MB compressed), poll_s {b['poll_s']:g} ==")
    per = b["bytes_per_agent"]
    print(f"bytes per agent for the 1 % update: {per[0]}..{per[-1]} "  # type: ignore[index]
          f"({100 * per[-1] / b['raw']:.2f} % of raw; full file {b['compressed']})")  # type: ignore[index,operator]
    print(f"push -> last of {b['agents']} agents applied: {b['push_to_all_s']:.1f} s   "
          f"one local publish of the same file: {b['local_publish_s']:.1f} s")
    target = b["poll_s"] + 2  # type: ignore[operator]
    rb_ok = b["rollback_s"] <= target and b["rollback_bytes"] == 0  # type: ignore[operator]
    print(f"fleet rollback -> last agent live on previous: {b['rollback_s']:.1f} s, "
          f"{b['rollback_bytes']} bytes   target <= {target:g} s, 0 bytes   "
          f"{'OK' if rb_ok else 'MISSED'}")
    ok = ok and rb_ok
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for name in (f"fleet-{stamp}.json", "fleet-latest.json"):
        (OUT / name).write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
