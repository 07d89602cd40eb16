"""[[checks]] and [[probes]]: one configured query run on an open candidate and judged.

A check returns one number, judged against its fail/warn bounds and, given the live
release's value, its allowed change; a probe is timed over several runs (p95 against
its budget) with its rows counted while streamed, never kept. Query errors and time
limits are an error outcome, never an exception.
"""

from __future__ import annotations

import math
import sqlite3
import time

from .config_gates import Check, Probe
from .db import QueryTimeout, ReadOnlyDB
from .gate_result import ERROR, FAIL, PASS, WARN, GateResult, fmt, timed


def run_check(db: ReadOnlyDB, check: Check, baseline: float | None) -> GateResult:
    parts = []
    if not check.fail.empty:
        parts.append(f"fail outside {check.fail.describe()}")
    if not check.warn.empty:
        parts.append(f"warn outside {check.warn.describe()}")
    if baseline is not None and not check.change.empty:  # judged only against a live value
        parts.append(f"vs live: {check.change.describe()}")
    r = GateResult(check.name, "check", PASS, threshold="; ".join(parts) or None)
    with timed(r):
        try:
            value = db.single(check.sql)
        except (sqlite3.DatabaseError, QueryTimeout) as exc:
            r.outcome, r.detail = ERROR, f"query failed: {exc}"
            return r
    r.observed = value
    if value is None:
        r.outcome, r.detail = FAIL, "query returned NULL (no rows, or only NULL values)"
        return r
    if isinstance(value, bool) or not isinstance(value, int | float):
        r.outcome, r.detail = ERROR, f"query returned {value!r}, not a number"
        return r
    if not check.fail.contains(value):
        r.outcome = FAIL
        r.detail = f"observed {fmt(value)}, expected {check.fail.describe()}"
        return r
    if baseline is not None and not check.change.empty:
        problem = _change_problem(check, float(value), float(baseline))
        if problem:
            r.outcome, r.detail = FAIL, problem
            return r
    if not check.warn.contains(value):
        r.outcome = WARN
        r.detail = f"observed {fmt(value)}, warn outside {check.warn.describe()}"
    return r


def _change_problem(check: Check, value: float, base: float) -> str | None:
    c = check.change
    live = f"live release has {fmt(base)}, candidate {fmt(value)}"
    if base != 0 and c.max_drop_pct is not None:
        drop = (base - value) / abs(base) * 100
        if drop > c.max_drop_pct:
            return f"dropped {drop:.2f}% (max {c.max_drop_pct:g}%): {live}"
    if base != 0 and c.max_growth_pct is not None:
        growth = (value - base) / abs(base) * 100
        if growth > c.max_growth_pct:
            return f"grew {growth:.2f}% (max {c.max_growth_pct:g}%): {live}"
    if c.max_delta is not None and abs(value - base) > c.max_delta:
        return f"changed by {abs(value - base):.6g} (max {c.max_delta:g}): {live}"
    return None


def p95(durations: list[float]) -> float:
    ordered = sorted(durations)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def run_probe(db: ReadOnlyDB, probe: Probe, runs: int, *, slow_warns: bool = False
              ) -> GateResult:
    """Rows and p95 over `runs` runs against the probe's budget. slow_warns: the O(1)
    checks (rollback target, post-swap, monitor) run a probe once, which is no
    percentile: one slow run on a busy host is a warning there, never a reason to
    refuse a rollback or revert; its rows, errors and the query time limit still
    decide (the publish gate judged the p95 over probe_runs)."""
    threshold = f"p95 <= {probe.budget_ms:g} ms" + (
        f", >= {probe.min_rows} rows" if probe.min_rows else "")
    r = GateResult(probe.name, "probe", PASS, threshold=threshold)
    durations: list[float] = []
    rows = 0
    with timed(r):
        try:
            for i in range(runs):
                t0 = time.perf_counter()
                got = db.count_rows(probe.sql, probe.params)  # streamed: memory stays flat
                durations.append((time.perf_counter() - t0) * 1000)
                if i == 0:
                    rows = got
        except (sqlite3.DatabaseError, QueryTimeout) as exc:
            r.outcome, r.detail = ERROR, f"query failed: {exc}"
            return r
    q = p95(durations)
    r.observed = round(q, 3)
    if rows < probe.min_rows:
        r.outcome, r.detail = FAIL, f"returned {rows} row(s), expected at least {probe.min_rows}"
    elif q > probe.budget_ms and slow_warns:
        r.outcome, r.detail = WARN, (
            f"one run took {q:.1f} ms, over the {probe.budget_ms:g} ms budget "
            f"(a single run on a busy host; the publish gate judges the p95)")
    elif q > probe.budget_ms:
        r.outcome, r.detail = FAIL, (
            f"p95 {q:.1f} ms over {runs} runs exceeds the {probe.budget_ms:g} ms budget")
    return r
