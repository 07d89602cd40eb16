"""Benchmark: `releaser rollback` when state.db is unusable (issue 12), target < 1 s.

    .venv/bin/python bench/degraded_rollback.py [--rows N] [--history N]   (make bench)

For each way state.db is lost (a few pages overwritten, deleted, truncated to 0,
held by another process in a write transaction) a fresh store gets two
releases plus --history extra publish/rollback events, state.db is damaged, and
the wall time of the `releaser rollback` subprocess (start to exit, Python start
included) is measured, next to a healthy rollback on the same store and the
1 s target. Then `releaser fsck --repair` rebuilds state.db and the run checks
that history came back whole. Prints a table; writes bench-results/degraded-rollback.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.sample import write_sample  # noqa: E402

RELEASER = Path(sys.executable).parent / "releaser"
OUT = REPO / "bench-results"
TARGET_S = 1.0
HOLDER = ("import sqlite3,sys; c=sqlite3.connect(sys.argv[1],isolation_level=None); "
          "c.execute('BEGIN IMMEDIATE'); c.execute(\"INSERT INTO counters VALUES('held',1)\"); "
          "print('holding',flush=True); sys.stdin.read()")


def releaser(cfg: Path, *args: str, ok: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    wall, _, proc = timed(cfg, *args)
    if ok and proc.returncode != 0:
        raise SystemExit(f"releaser {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
    return wall, proc


def timed(cfg: Path | None, *args: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall seconds, CPU seconds (user+sys of that child alone, wait4), the result."""
    argv = [str(RELEASER), *(["--config", str(cfg)] if cfg else []), *args]
    t0 = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    child.returncode = code
    return wall, usage.ru_utime + usage.ru_stime, subprocess.CompletedProcess(argv, code, out,
                                                                              err)


def make_store(work: Path, builds: list[Path], history: int) -> Path:
    text = (REPO / "config" / "releaser.toml").read_text()
    text = re.sub(r'(?m)^live_path = .*$', f'live_path = "{work / "app" / "tags.db"}"', text)
    text = re.sub(r'(?m)^root = .*$', f'root = "{work / "store"}"', text)
    cfg = work / "releaser.toml"
    cfg.write_text(text)
    releaser(cfg, "init")
    releaser(cfg, "publish", str(builds[0]))
    releaser(cfg, "publish", str(builds[1]))
    for _ in range(history // 2):  # back and forth: two live transitions each
        releaser(cfg, "rollback", "--to", "1")
        releaser(cfg, "rollback", "--to", "2")
    releaser(cfg, "publish", str(builds[2]))  # live 3; a plain rollback goes to 2
    return cfg


def damage(root: Path, how: str) -> subprocess.Popen | None:
    db = root / "state.db"
    if how == "corrupt":
        rng = random.Random(1)
        pages = db.stat().st_size // 4096
        with open(db, "r+b") as fh:
            for n in [1, 2, *rng.sample(range(3, pages), min(3, max(0, pages - 3)))]:
                fh.seek(n * 4096)
                fh.write(rng.randbytes(4096))
    elif how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    elif how == "emptied":
        os.truncate(db, 0)
    elif how == "locked":
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        return holder
    return None


def events(cfg: Path) -> list[tuple]:
    _, proc = releaser(cfg, "history", "--limit", "100000", "--json")
    return [(e["at"], e["action"], e["outcome"], e["release_id"]) for e in json.loads(proc.stdout)["data"]]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000, help="rows per build (~10 MB at 100k)")
    ap.add_argument("--history", type=int, default=20, help="extra live transitions")
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    work_root = Path(tempfile.mkdtemp(prefix="releaser-degraded-"))
    try:
        builds = [write_sample(work_root / f"b{s}.db", rows=args.rows, seed=s) for s in (1, 2, 3)]
        rows = []
        start = [timed(None, "--version")[:2] for _ in range(args.trials)]
        rows.append({"state_db": "(start-up: releaser --version)",
                     "rollback_wall_s": [w for w, _ in start],
                     "median_s": sorted(w for w, _ in start)[len(start) // 2],
                     "cpu_s": sorted(c for _, c in start)[len(start) // 2],
                     "history_restored": None})
        for how in ("healthy", "corrupt", "deleted", "emptied", "locked"):
            times, cpus, repaired = [], [], True
            for trial in range(args.trials):
                work = work_root / f"{how}-{trial}"
                work.mkdir()
                cfg = make_store(work, builds, args.history)
                before = events(cfg)
                holder = damage(work / "store", how) if how != "healthy" else None
                try:
                    wall, cpu, proc = timed(cfg, "rollback", "--reason", "bench")
                finally:
                    if holder is not None:
                        holder.communicate("")
                if proc.returncode != 0:
                    raise SystemExit(f"rollback ({how}): exit {proc.returncode}: {proc.stderr}")
                times.append(wall)
                cpus.append(cpu)
                if how != "healthy":
                    releaser(cfg, "fsck", "--repair")
                    after = events(cfg)
                    repaired &= after[1:] == before and after[0][1:] == ("rollback", "ok", 2)
                shutil.rmtree(work)
            rows.append({"state_db": how, "rollback_wall_s": times,
                         "median_s": sorted(times)[len(times) // 2],
                         "cpu_s": sorted(cpus)[len(cpus) // 2],
                         "history_restored": repaired if how != "healthy" else None})
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    print(f"degraded rollback ({args.rows} rows/build, {args.history} extra transitions, "
          f"median of {args.trials}): the whole `releaser rollback` process, wall and CPU "
          f"(user+sys), next to the start-up floor measured in the same run")
    print(f"{'state.db':<31} {'wall s':>7} {'cpu s':>6} {'target s':>9}  met  "
          "fsck --repair restored history")
    ok = True
    for r in rows:
        met = r["median_s"] < TARGET_S
        ok &= met and r["history_restored"] is not False
        restored = "-" if r["history_restored"] is None else r["history_restored"]
        print(f"{r['state_db']:<31} {r['median_s']:>7.3f} {r['cpu_s']:>6.3f} {TARGET_S:>9.1f}  "
              f"{'yes' if met else 'NO ':<4} {restored}")
    OUT.mkdir(exist_ok=True)
    (OUT / "degraded-rollback.json").write_text(json.dumps(
        {"rows": args.rows, "history": args.history, "results": rows}, indent=2))
    _ = sqlite3  # the holder uses sqlite3 in its own process
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
