"""Gates: the checks and probes run on one open candidate database.

Order: is it SQLite; integrity (quick_check plus the index-vs-table check of
indexcheck.py, or integrity_check); foreign keys; required schema and virtual table
modules; [[checks]]; [[probes]]. The first ones are structural: the first failure
stops the run, since nothing after it would mean anything. The result types live in
gate_result.py, the [[checks]] and [[probes]] runners in checks.py.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from . import indexcheck
from .checks import p95, run_check, run_probe
from .config import Config
from .db import QueryTimeout, ReadOnlyDB, read_header
from .gate_result import ERROR, FAIL, PASS, STRUCTURAL, WARN, GateReport, GateResult, timed
from .progress import phase

# names other modules use as gates.X
__all__ = ["ERROR", "FAIL", "PASS", "STRUCTURAL", "WARN", "GateReport", "GateResult", "p95",
           "run_check", "run_probe"]

# the index check's table and index scans run on this many connections (threads)
# beside quick_check: two cores busy on a 2-core machine, each scan largest-first
INDEX_CHECK_CONNECTIONS = 2
# their time limit is checked every this many SQLite steps, not every 1,000: the
# Python callback under the GIL cost ~25% of a scan, and 100,000 steps of these
# plain aggregates take about a millisecond
SCAN_PROGRESS_OPS = 100_000


# -- structural gates ------------------------------------------------------


def check_file(path: Path) -> GateResult:
    """Is it a whole SQLite file? Header magic, page size, and size against the header."""
    r = GateResult("sqlite_file", "file", PASS, threshold="a SQLite 3 database")
    with timed(r):
        try:
            size = os.path.getsize(path)
            header = read_header(path)
        except OSError as exc:
            r.outcome, r.detail = ERROR, f"cannot read: {exc.strerror}"
            return r
        r.observed = size
        if size == 0:
            r.outcome, r.detail = FAIL, "empty file (0 bytes)"
        elif header is None:
            r.outcome, r.detail = FAIL, "not a SQLite database (no SQLite header)"
        elif size % header.page_size:
            r.outcome, r.detail = FAIL, (
                f"truncated: {size} bytes is not a whole number of {header.page_size}-byte pages")
        elif (expected := header.expected_size()) is not None and expected != size:
            r.outcome, r.detail = FAIL, (
                f"truncated or padded: the header says {header.page_count} pages "
                f"({expected} bytes), the file has {size} bytes")
    return r


@contextmanager
def _integrity_outcome(r: GateResult) -> Iterator[None]:
    """An integrity pass that ran out of time could not tell (error); one that SQLite
    could not read through found the file broken (fail). Either ends the block."""
    try:
        yield
    except QueryTimeout as exc:
        r.outcome, r.detail = ERROR, str(exc)
    except sqlite3.DatabaseError as exc:
        r.outcome, r.detail = FAIL, f"SQLite error: {exc}"


def check_integrity(db: ReadOnlyDB, mode: str, timeout_ms: int) -> GateResult:
    pragma = "quick_check" if mode == "quick" else "integrity_check"
    r = GateResult(pragma, "integrity", PASS, threshold="ok")
    with timed(r), _integrity_outcome(r):
        rows = db.all(f"PRAGMA {pragma}(20)", timeout_ms=timeout_ms)
        messages = [str(row[0]) for row in rows]
        r.observed = messages[0] if len(messages) == 1 else f"{len(messages)} problems"
        if messages != ["ok"]:
            r.outcome, r.detail = FAIL, "; ".join(messages[:3])
    return r


def check_indexes(dbs: Sequence[ReadOnlyDB], timeout_ms: int) -> GateResult:
    """Every plain-column index against its table (indexcheck.py): quick_check's gap.

    dbs: connections to the same file; the table and index scans are spread over them."""
    r = GateResult("index_check", "integrity", PASS, threshold="indexes agree with tables")
    with timed(r), _integrity_outcome(r):
        with dbs[0].deadline(timeout_ms):
            plan = indexcheck.plan(dbs[0].conn)
        problems = indexcheck.run(dbs, plan, timeout_ms)
        r.observed = f"{len(plan.indexes)} indexes"
        if problems:
            r.outcome, r.detail = FAIL, "; ".join(problems[:3])
        elif plan.not_covered:
            r.detail = f"not compared (integrity = \"full\" does): {', '.join(plan.not_covered)}"
    return r


def check_virtual_tables(db: ReadOnlyDB) -> GateResult:
    """A table USING a module this SQLite lacks cannot be opened by any reader like it."""
    r = GateResult("virtual_tables", "schema", PASS, threshold="every module available")
    with timed(r):
        try:
            tables = db.all("SELECT name, sql FROM sqlite_schema WHERE type = 'table' "
                            "AND sql LIKE 'CREATE VIRTUAL TABLE%'")
            modules = {str(m).lower() for (m,) in db.all("SELECT name FROM pragma_module_list")}
        except (sqlite3.DatabaseError, QueryTimeout) as exc:
            r.outcome, r.detail = ERROR, str(exc)
            return r
        missing = []
        for name, sql in tables:
            m = re.search(r"\bUSING\s+\"?(\w+)", sql or "", re.IGNORECASE)
            if m and m.group(1).lower() not in modules:
                missing.append(f"table {name} uses module {m.group(1)}")
        r.observed = f"{len(tables)} virtual"
        if missing:
            r.outcome, r.detail = FAIL, ("; ".join(missing) + ", which SQLite here does not "
                                         "have: no reader can open it")
    return r


def check_foreign_keys(db: ReadOnlyDB) -> GateResult:
    r = GateResult("foreign_key_check", "foreign_keys", PASS, observed=0, threshold="0 violations")
    with timed(r):
        try:
            rows = db.all("PRAGMA foreign_key_check")
        except (sqlite3.DatabaseError, QueryTimeout) as exc:
            r.outcome, r.detail = ERROR, str(exc)
            return r
        r.observed = len(rows)
        if rows:
            first = rows[0]
            r.outcome, r.detail = FAIL, (
                f"{len(rows)} violation(s), first in table {first[0]} rowid {first[1]} "
                f"-> {first[2]}")
    return r


def check_required_schema(db: ReadOnlyDB, required: dict[str, tuple[str, ...]]) -> GateResult:
    r = GateResult("required_schema", "schema", PASS,
                   threshold=", ".join(f"{t}({', '.join(c)})" for t, c in required.items()) or None)
    with timed(r):
        problems = []
        try:
            for table, columns in required.items():
                present = {row[0] for row in db.all(
                    "SELECT name FROM pragma_table_xinfo(?)", (table,))}
                if not present:
                    problems.append(f"missing table {table}")
                    continue
                missing = [c for c in columns if c not in present]
                if missing:
                    problems.append(f"table {table} lacks column(s) {', '.join(missing)}")
        except (sqlite3.DatabaseError, QueryTimeout) as exc:
            r.outcome, r.detail = ERROR, str(exc)
            return r
        r.observed = "ok" if not problems else f"{len(problems)} problem(s)"
        if problems:
            r.outcome, r.detail = FAIL, "; ".join(problems)
    return r


# -- pipelines -------------------------------------------------------------


def open_candidate(path: Path, config: Config, progress_ops: int | None = None) -> ReadOnlyDB:
    return ReadOnlyDB(path, config.gates.query_timeout_ms, progress_ops=progress_ops,
                      heap_limit_mb=config.gates.sqlite_heap_limit_mb)


def _structural(path: Path, config: Config, report: GateReport,
                steps: list[Callable[[ReadOnlyDB], GateResult]]) -> ReadOnlyDB | None:
    """File check, then each step on an open DB; None (and closed) on the first failure."""
    first = check_file(path)
    report.results.append(first)
    if first.outcome != PASS:
        return None
    try:
        db = open_candidate(path, config)
    except sqlite3.DatabaseError as exc:
        report.results.append(GateResult("open", "file", FAIL, detail=f"cannot open: {exc}"))
        return None
    for step in steps:
        result = step(db)
        report.results.append(result)
        if result.outcome != PASS:
            db.close()
            return None
    return db


def run_gates(path: Path, config: Config, baseline: dict[str, float] | None = None) -> GateReport:
    """All gates on one file (the staged copy). baseline: the live release's check values.

    The [[checks]] usually scan the whole table, as the integrity pass does; both only
    read the same immutable file, so the checks run on a second connection in a
    thread while the structural gates run (sqlite3 releases the GIL while a statement
    steps), using a second core. Their results count only once the structural gates
    pass; on a structural failure they are interrupted and dropped. Probes run last,
    alone, so their timings are not inflated by the scans.
    """
    report = GateReport(path=str(path))
    gates = config.gates
    checks_db = _open_for_checks(path, config, bool(config.checks))
    # quick_check does not compare indexes with tables: indexcheck does, beside it,
    # its table and index scans spread over connections of their own
    index_dbs = [db for _ in range(INDEX_CHECK_CONNECTIONS)
                 if (db := _open_for_checks(path, config, gates.integrity == "quick",
                                            progress_ops=SCAN_PROGRESS_OPS))]
    sides = [d for d in (checks_db, *index_dbs) if d is not None]
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="releaser-checks")
    checks: Future[list[GateResult]] | None = None
    indexes: Future[GateResult] | None = None
    if checks_db is not None:
        checks = pool.submit(_run_checks, checks_db, config, baseline)
    if index_dbs:
        indexes = pool.submit(check_indexes, index_dbs, gates.integrity_timeout_ms)
    finished = False
    try:
        steps = [lambda d: check_integrity(d, gates.integrity, gates.integrity_timeout_ms)]
        if indexes is not None:
            steps.append(lambda d: indexes.result())
        with phase("integrity"):
            db = _structural(path, config, report, [
                *steps,
                check_foreign_keys,
                lambda d: check_required_schema(d, gates.required),
                check_virtual_tables,
            ])
        if db is None:
            return report
        with db:
            with phase("checks"):
                if checks is not None:
                    report.results.extend(checks.result())
                else:
                    report.results.extend(_run_checks(db, config, baseline))
            with phase("probes", total=len(config.probes)) as advance:
                for probe in config.probes:
                    report.results.append(run_probe(db, probe, gates.probe_runs))
                    advance(1)
        finished = True
        return report
    finally:
        if not finished:
            # a structural failure or an exception (Ctrl-C...): stop the scans now
            # instead of waiting for them to read the whole file
            for side in sides:
                side.cancel()
        pool.shutdown(wait=True)
        for side in sides:
            side.close()


def _open_for_checks(path: Path, config: Config, wanted: bool,
                     progress_ops: int | None = None) -> ReadOnlyDB | None:
    if not wanted or check_file(path).outcome != PASS:
        return None
    try:
        return open_candidate(path, config, progress_ops)
    except sqlite3.DatabaseError:
        return None  # the structural gates will say why


def _run_checks(db: ReadOnlyDB, config: Config,
                baseline: dict[str, float] | None) -> list[GateResult]:
    return [run_check(db, c, (baseline or {}).get(c.name)) for c in config.checks]


def quick_structural_check(path: Path, config: Config) -> GateReport:
    """A check whose cost does not grow with the file: header, size, schema, probes once.

    Used before a rollback and after a swap, where a full integrity pass would make
    the time depend on the database size.
    """
    report = GateReport(path=str(path))
    db = _structural(path, config, report, [
        lambda d: check_required_schema(d, config.gates.required),
        check_virtual_tables,
    ])
    if db is None:
        return report
    with db:
        for probe in config.probes:
            report.results.append(run_probe(db, probe, 1, slow_warns=True))
    return report


def structural_ok(report: GateReport) -> bool:
    return not any(r.outcome in (FAIL, ERROR)
                   for r in report.results if r.kind in STRUCTURAL)
