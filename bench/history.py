"""Benchmark: command cost against history size, 10 vs 10,000 releases.

    make bench            # or: .venv/bin/python bench/history.py [--big N] [--runs N]

For each history size a store is made with the real pipeline, then its state.db is
grown with N old releases (each with the recorded gate report of a real one, about
4 KB, and its publish event; their files long pruned, as keep_releases does), and two
real releases are published on top. Each command then runs in-process through the CLI
(click's runner, no interpreter start-up in the figure), median of --runs:
  publish (a 3,000-row build), rollback, status, releases, history, check.
Target: each command's time at 10,000 releases <= 1.3 x its time at 10.
Prints the table; writes bench-results/history-latest.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from click.testing import CliRunner  # noqa: E402

from releaser.cli import cli  # noqa: E402
from tests.sample import write_sample  # noqa: E402

TARGET = 1.3
COMMANDS = ("publish", "rollback", "status", "releases", "history", "check")


def _cli(config: Path, *args: str) -> str:
    res = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    if res.exit_code != 0:
        raise SystemExit(f"releaser {' '.join(args)}: exit {res.exit_code}: {res.output}")
    return res.output


def _grow(state: Path, n: int) -> None:
    """n old releases (good, published, files pruned) with a real report and event each."""
    conn = sqlite3.connect(state)
    report, sha, size = conn.execute(
        "SELECT report, sha256, size FROM releases WHERE report IS NOT NULL ORDER BY id"
        " LIMIT 1").fetchone()
    with conn:
        for i in range(n):
            at = f"2025-01-01T00:00:{i % 60:02d}.000Z"
            cur = conn.execute(
                "INSERT INTO releases (sha256, size, source, note, created_at, published_at,"
                " status, report) VALUES (?,?,?,?,?,?, 'good', ?)",
                (sha, size, "/srv/builds/tags.db", f"old build {i}", at, at, report))
            conn.execute(
                "INSERT INTO events (at, action, release_id, actor, outcome)"
                " VALUES (?, 'publish', ?, 'bench', 'published')", (at, cur.lastrowid))
    conn.close()


def _store(work: Path, n_old: int) -> tuple[Path, Path, Path]:
    from tests.conftest import config_text  # the documented default config, repointed
    work.mkdir(parents=True)
    config = work / "releaser.toml"
    config.write_text(config_text(work / "app" / "tags.db", work / "store"))
    a, b = work / "a.db", work / "b.db"
    write_sample(a, rows=3000, seed=1)
    write_sample(b, rows=3000, seed=2)
    _cli(config, "init")
    _cli(config, "publish", str(a))  # a real report to copy
    _grow(work / "store" / "state.db", n_old)
    _cli(config, "publish", str(b))
    _cli(config, "publish", str(a))
    return config, a, b


def _time(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def measure(work: Path, n_old: int, runs: int) -> dict[str, float]:
    config, a, b = _store(work, n_old)
    times: dict[str, list[float]] = {c: [] for c in COMMANDS}
    for _ in range(runs):
        # a is live: publish b, then roll back to a
        times["publish"].append(_time(lambda: _cli(config, "publish", str(b), "--no-wait")))
        times["rollback"].append(_time(lambda: _cli(config, "rollback")))
        times["status"].append(_time(lambda: _cli(config, "status", "--json")))
        times["releases"].append(_time(lambda: _cli(config, "releases", "--json")))
        times["history"].append(_time(lambda: _cli(config, "history", "--json")))
        times["check"].append(_time(lambda: _cli(config, "check", "--no-integrity")))
    return {c: statistics.median(v) for c, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--big", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="releaser-history-bench-"))
    try:
        t0 = time.perf_counter()
        small = measure(base / "small", max(args.small - 3, 0), args.runs)
        big = measure(base / "big", max(args.big - 3, 0), args.runs)
        elapsed = time.perf_counter() - t0
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nhistory size: {args.small} vs {args.big} releases in state.db "
          f"(median of {args.runs}, in-process CLI)")
    print(f"{'command':<10} {args.small:>9} {args.big:>9}   ratio  target")
    ok = True
    rows = {}
    for c in COMMANDS:
        ratio = big[c] / small[c] if small[c] else float("inf")
        good = ratio <= TARGET
        ok &= good
        rows[c] = {"small_s": small[c], "big_s": big[c], "ratio": ratio}
        print(f"{c:<10} {small[c] * 1000:>7.1f}ms {big[c] * 1000:>7.1f}ms  {ratio:5.2f}"
              f"  <= {TARGET} {'ok' if good else 'MISSED'}")
    print(f"({elapsed:.0f} s)")
    out = REPO / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "history-latest.json").write_text(json.dumps(
        {"small": args.small, "big": args.big, "runs": args.runs, "commands": rows,
         "target": TARGET, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
