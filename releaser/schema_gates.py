"""The schema gates: compatibility with the live release, page size, probe plans.

They run only on a file the structural gates found sound, and read it (and the
live release) on read-only connections with the query time limit. A contract
change fails unless allowed ([schema] allow_contract or --allow-contract); a
page-size change and a plan that fully scans a big table are warnings.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from . import gates
from .config import Config
from .db import QueryTimeout, ReadOnlyDB
from .gates import ERROR, FAIL, PASS, GateResult
from .gates import WARN as GATE_WARN
from .plans import plan_results, probe_index_usage
from .schema import read_schema
from .schema_compat import CONTRACT, EXPAND, WARN, SchemaChange, compare


def compat_results(changes: list[SchemaChange], allow_contract: bool, how: str
                   ) -> list[GateResult]:
    """One GateResult per contract or warn change; a single pass when there are none.

    how: what allowed contract changes ("[schema] allow_contract" or "--allow-contract").
    """
    out = []
    for ch in changes:
        if ch.category == CONTRACT:
            if allow_contract:
                out.append(GateResult(ch.name, "schema_compat", PASS, observed=ch.category,
                                      detail=f"{ch.reason} (contract allowed by {how})"))
            else:
                out.append(GateResult(
                    ch.name, "schema_compat", FAIL, observed=ch.category,
                    threshold="expand-only changes",
                    detail=f"{ch.reason} (a contract change: the live app may still use "
                           "it; publish with --allow-contract once it does not)"))
        elif ch.category == WARN:
            out.append(GateResult(ch.name, "schema_compat", GATE_WARN, observed=ch.category,
                                  detail=ch.reason))
    if not out:
        expands = sum(1 for ch in changes if ch.category == EXPAND)
        out.append(GateResult("schema", "schema_compat", PASS,
                              observed=f"{expands} expand" if expands else "unchanged",
                              threshold="expand-only changes"))
    return out


def page_size_result(live: int, candidate: int) -> GateResult:
    """A page size change is legal SQLite, but it changes the file size and every probe's
    I/O pattern: a warning, so `--strict` refuses it and a reviewer sees it."""
    r = GateResult("page_size", "file", PASS, observed=candidate,
                   threshold=f"= {live} (the live release's)")
    if candidate != live:
        r.outcome = GATE_WARN
        r.detail = (f"page size {candidate} differs from the live release's {live}: file "
                    "size and probe I/O change; publish with --strict to refuse such builds")
    return r


def schema_gates(candidate: Path, live: Path | None, config: Config, *,
                 allow_contract: bool = False) -> list[GateResult]:
    """Schema compatibility against the live release (when there is one), then plans."""
    timeout = config.gates.query_timeout_ms
    heap = config.gates.sqlite_heap_limit_mb
    allowed = allow_contract or config.schema.allow_contract
    how = "--allow-contract" if allow_contract else "[schema] allow_contract"
    out: list[GateResult] = []
    try:
        with ReadOnlyDB(candidate, timeout, heap_limit_mb=heap) as cand:
            if live is not None and live.exists():
                with ReadOnlyDB(live, timeout, heap_limit_mb=heap) as old:
                    before = read_schema(old)
                    used = probe_index_usage(old, config.probes)
                    old_page = old.scalar("PRAGMA page_size")
                changes = compare(before, read_schema(cand), used)
                out.extend(compat_results(changes, allowed, how))
                out.append(page_size_result(old_page, cand.scalar("PRAGMA page_size")))
            out.extend(plan_results(cand, config.probes, config.schema.scan_rows_max))
    except (sqlite3.DatabaseError, QueryTimeout) as exc:
        out.append(GateResult("schema", "schema_compat", ERROR,
                              detail=f"cannot read the schema: {exc}"))
    return out


def add_schema_gates(report: gates.GateReport, path: Path, live: Path | None, config: Config,
                      allow_contract: bool) -> None:
    """Schema compatibility with the live release and probe plans (issue 6), once the
    file is known to be a sound SQLite database."""
    if gates.structural_ok(report):
        report.results.extend(schema_gates(path, live, config,
                                           allow_contract=allow_contract))
