"""Benchmark: command cost against history size, 10 vs 10,000 releases.

    make bench            # or: .venv/bin/python bench/history.py [--big N] [--runs N]

For each history size a store is made with the real pipeline, then its state.db is
grown with N old releases (each with the recorded gate report of a real one, about
4 KB, and its publish event; their files long pruned, as keep_releases does), and two
real releases are published on top. Each command then runs in-process through the CLI
(click's runner, no interpreter start-up in the figure), the two sizes taking turns
call by call (so both see the same machine load), and the figure is the minimum over
--runs (3 calls per run for the read-only ones): wall time, the least disturbed by
other processes, with CPU time beside it:
  publish (a 3,000-row build), rollback, status, releases, history, check.
`releases` and `history` show one page of --page rows at both sizes (checked), so the
ratio compares the same work.
Target: each command's time at 10,000 releases <= 1.3 x its time at 10.
Prints the table with the load average; writes bench-results/history-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
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
READ_REPS = 3  # calls per run of each read-only command (they change nothing)


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


def _time(fn: object) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0, time.process_time() - c0


def _rows(config: Path, command: str, page: int) -> int:
    out = json.loads(_cli(config, command, "--json", "--limit", str(page)))
    rows = out["data"] if isinstance(out, dict) and "data" in out else out
    return len(rows)


def _calls(config: Path, b: Path, page: int) -> dict[str, tuple[object, int]]:
    """command -> (the call, how many times per run). a is live: publish b, then roll
    back to a (once each); the read-only ones change nothing, so READ_REPS calls."""
    page_s = str(page)
    return {
        "publish": (lambda: _cli(config, "publish", str(b), "--no-wait"), 1),
        "rollback": (lambda: _cli(config, "rollback"), 1),
        "status": (lambda: _cli(config, "status", "--json"), READ_REPS),
        "releases": (lambda: _cli(config, "releases", "--json", "--limit", page_s), READ_REPS),
        "history": (lambda: _cli(config, "history", "--json", "--limit", page_s), READ_REPS),
        "check": (lambda: _cli(config, "check", "--no-integrity"), READ_REPS),
    }


def measure(base: Path, sizes: dict[str, int], runs: int, page: int
            ) -> dict[str, dict[str, tuple[float, float]]]:
    """{size name: {command: (min wall, min CPU)}}. The sizes take turns call by call
    (which goes first alternates per run), so both see the same machine load."""
    stores = {name: _store(base / name, n) for name, n in sizes.items()}
    for name, (config, _, _) in stores.items():
        for command in ("releases", "history"):
            shown = _rows(config, command, page)
            if shown != page:
                raise SystemExit(f"{name}: `{command} --limit {page}` shows {shown} rows, "
                                 f"not {page}: the sizes would not compare the same work")
    calls = {name: _calls(config, b, page) for name, (config, _, b) in stores.items()}
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {c: [] for c in COMMANDS} for name in sizes}
    for run in range(runs):
        order = list(sizes) if run % 2 == 0 else list(reversed(sizes))
        for c in COMMANDS:
            for _ in range(calls[order[0]][c][1]):
                for name in order:
                    samples[name][c].append(_time(calls[name][c][0]))
    return {name: {c: (min(w for w, _ in v), min(u for _, u in v)) for c, v in got.items()}
            for name, got in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=10)
    ap.add_argument("--big", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--page", type=int, default=10,
                    help="rows `releases` and `history` show at both sizes")
    ap.add_argument("--basis", choices=("auto", "wall", "cpu"), default="auto",
                    help="which ratio meets the target: auto is wall time, or CPU time "
                         "when the load average exceeded the CPUs during the run")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="releaser-history-bench-"))
    load_before = os.getloadavg()
    try:
        t0 = time.perf_counter()
        got = measure(base, {"small": max(args.small - 3, 0), "big": max(args.big - 3, 0)},
                      args.runs, args.page)
        elapsed = time.perf_counter() - t0
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load_after = os.getloadavg()
    small, big = got["small"], got["big"]
    print(f"\nhistory size: {args.small} vs {args.big} releases in state.db (min of "
          f"{args.runs} runs, sizes taking turns, in-process CLI; `releases`/`history`: "
          f"{args.page} rows at both)")
    cpus = os.cpu_count() or 1
    loaded = max(load_before[0], load_after[0]) > cpus
    basis = args.basis if args.basis != "auto" else ("cpu" if loaded else "wall")
    print(f"load average {load_before[0]:.1f} at start, {load_after[0]:.1f} at end "
          f"({cpus} CPUs): target judged on {basis} time"
          + (" (the machine is oversubscribed: wall times carry other processes' waits)"
             if loaded and basis == "cpu" else ""))
    print(f"{'command':<10} {f'wall {args.small}':>12} {args.big:>9}  ratio "
          f"{f'cpu {args.small}':>14} {args.big:>9}  ratio   floor")
    ok = True
    rows = {}
    for c in COMMANDS:
        ratio = big[c][0] / small[c][0] if small[c][0] else float("inf")
        cpu_ratio = big[c][1] / small[c][1] if small[c][1] else float("inf")
        good = (cpu_ratio if basis == "cpu" else ratio) <= TARGET
        ok &= good
        rows[c] = {"small_s": small[c][0], "big_s": big[c][0], "ratio": ratio,
                   "small_cpu_s": small[c][1], "big_cpu_s": big[c][1], "cpu_ratio": cpu_ratio}
        print(f"{c:<10} {small[c][0] * 1000:>10.1f}ms {big[c][0] * 1000:>7.1f}ms  {ratio:5.2f}"
              f" {small[c][1] * 1000:>12.1f}ms {big[c][1] * 1000:>7.1f}ms  {cpu_ratio:5.2f}"
              f"   <= {TARGET} {'ok' if good else 'MISSED'}")
    print(f"({elapsed:.0f} s)")
    out = REPO / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "history-latest.json").write_text(json.dumps(
        {"small": args.small, "big": args.big, "runs": args.runs, "page": args.page,
         "statistic": "min", "load_average": [load_before[0], load_after[0]],
         "basis": basis,
         "commands": rows, "target": TARGET, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
