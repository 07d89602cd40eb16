"""Query plans: which indexes a probe uses, which tables it scans in full.

Everything here compiles probes with EXPLAIN QUERY PLAN (they are not run) on a
read-only connection; counting rows stops at a limit, so no check costs more than
that limit's worth of rows.
"""

from __future__ import annotations

import re
import sqlite3

from .config_gates import Probe
from .db import QueryTimeout, ReadOnlyDB
from .gates import ERROR, PASS, GateResult
from .gates import WARN as GATE_WARN
from .schema import quote_ident, read_schema

_SCAN_RE = re.compile(r"^SCAN (?:TABLE )?(.*)$")


_INDEX_RE = re.compile(r"USING (?:COVERING )?INDEX ")


_IDENT = r"(?:\"(?:[^\"]|\"\")+\"|`[^`]+`|\[[^\]]+\]|\w+)"


_ALIAS_RE = re.compile(
    rf"\b(?:FROM|JOIN)\s+(?:{_IDENT}\s*\.\s*)?({_IDENT})\s+(?:AS\s+)?({_IDENT})", re.IGNORECASE)


_NOT_ALIAS = {"WHERE", "JOIN", "LEFT", "RIGHT", "INNER", "CROSS", "NATURAL", "FULL", "OUTER",
              "ON", "USING", "GROUP", "ORDER", "LIMIT", "UNION", "EXCEPT", "INTERSECT",
              "WINDOW", "HAVING", "INDEXED", "NOT"}


def _unquote(ident: str) -> str:
    if ident[:1] == '"':
        return ident[1:-1].replace('""', '"')
    if ident[:1] in "`[":
        return ident[1:-1]
    return ident


def _match_name(text: str, names: dict[str, str]) -> tuple[str, str] | None:
    """(canonical name, rest of text) for the longest of names (lower-cased key ->
    canonical) that text starts with, as a whole word, ignoring case."""
    low = text.lower()
    for key in sorted(names, key=len, reverse=True):
        if low.startswith(key) and (len(low) == len(key) or low[len(key)] == " "):
            return names[key], text[len(key):]
    return None


def query_plan(db: ReadOnlyDB, probe: Probe) -> list[str]:
    """EXPLAIN QUERY PLAN detail lines (the probe is compiled, not run)."""
    return [str(r[3]) for r in db.all(f"EXPLAIN QUERY PLAN {probe.sql}", probe.params)]


def indexes_used(plan: list[str], names: set[str] | None = None) -> set[str]:
    """Named indexes a plan uses (automatic indexes excluded: they are built per query).

    names: the database's index names; a plan prints them unquoted, so without them a
    name with a space in it cannot be told from what follows it.
    """
    known = {n.lower(): n for n in names or ()}
    out = set()
    for line in plan:
        if "AUTOMATIC" in line:
            continue
        for m in _INDEX_RE.finditer(line):
            rest = line[m.end():]
            hit = _match_name(rest, known)
            out.add(hit[0] if hit else rest.split(" ", 1)[0])
    return out


def _aliases(sql: str) -> dict[str, str]:
    out = {}
    for table, alias in _ALIAS_RE.findall(sql):
        if alias.upper() not in _NOT_ALIAS:
            out[_unquote(alias)] = _unquote(table)
    return out


def full_scans(plan: list[str], sql: str, tables: set[str]) -> list[tuple[str, str]]:
    """(table, plan line) for each full table scan: `SCAN t` without an index.

    Names match case-insensitively (`FROM TAGS` plans as `SCAN TAGS`), may hold spaces
    (`SCAN my tags`), may carry a schema prefix (`SCAN main.tags`) or be an alias.
    """
    canonical = {t.lower(): t for t in tables}
    names = dict(canonical)
    for alias, table in _aliases(sql).items():  # the plan prints the alias when there is one
        if table.lower() in canonical:
            names[alias.lower()] = canonical[table.lower()]
    out = []
    for line in plan:
        m = _SCAN_RE.match(line)
        if not m:
            continue
        hit = _match_name(m.group(1), names)
        prefix = re.match(r"\w+\.", m.group(1))  # main.tags, temp.t, aux.t
        if hit is None and prefix:
            hit = _match_name(m.group(1)[prefix.end():], names)
        if hit is None or "INDEX" in hit[1] or "VIRTUAL TABLE" in hit[1]:
            continue
        out.append((hit[0], line))
    return out


def probe_index_usage(db: ReadOnlyDB, probes: tuple[Probe, ...]) -> dict[str, list[str]]:
    """index name -> probes whose plan on this database uses it (probes that fail to
    compile here are skipped: the probe gate reports them)."""
    used: dict[str, list[str]] = {}
    names = {str(r[0]) for r in db.all("SELECT name FROM sqlite_schema WHERE type = 'index'")}
    for probe in probes:
        try:
            plan = query_plan(db, probe)
        except (sqlite3.DatabaseError, QueryTimeout):
            continue
        for name in sorted(indexes_used(plan, names)):
            used.setdefault(name, []).append(probe.name)
    return used


def row_count(db: ReadOnlyDB, table: str, *, timeout_ms: int | None = None,
              limit: int | None = None) -> int:
    """COUNT(*) of table; with limit, stops counting at limit (so costs at most that)."""
    source = quote_ident(table)
    if limit is not None:
        source = f"(SELECT 1 FROM {source} LIMIT {int(limit)})"
    return int(db.scalar(f"SELECT COUNT(*) FROM {source}", timeout_ms=timeout_ms))


def plan_results(db: ReadOnlyDB, probes: tuple[Probe, ...], scan_rows_max: int
                 ) -> list[GateResult]:
    """A warn for each probe whose plan fully scans a table above scan_rows_max rows.

    Rows are counted only up to scan_rows_max + 1 (that is all the check needs); a count
    that still runs out of time means a big table: a warn, not an error.
    """
    tables = {t.name for t in read_schema(db).tables.values()}
    counts: dict[str, int | None] = {}  # None: the count timed out
    out = []
    for probe in probes:
        r = GateResult(probe.name, "query_plan", PASS,
                       threshold=f"no full scan of a table over {scan_rows_max} rows")
        try:
            plan = query_plan(db, probe)
            big = []
            for table, line in full_scans(plan, probe.sql, tables):
                if table not in counts:
                    try:
                        counts[table] = row_count(db, table, limit=scan_rows_max + 1)
                    except QueryTimeout:
                        counts[table] = None
                n = counts[table]
                if n is None:
                    big.append(f"{line} (row count timed out after {db.timeout_ms} ms)")
                elif n > scan_rows_max:
                    big.append(line)
        except (sqlite3.DatabaseError, QueryTimeout) as exc:
            r.outcome, r.detail = ERROR, f"EXPLAIN QUERY PLAN failed: {exc}"
            out.append(r)
            continue
        # observed stays short for the report table; the whole plan goes in detail
        r.observed, r.detail = "no big scan", "plan: " + "; ".join(plan)
        if big:
            r.outcome, r.observed = GATE_WARN, "full scan"
            r.detail = (f"full table scan: {'; '.join(big)}: over [schema] scan_rows_max "
                        f"{scan_rows_max} rows; add an index for this query")
        out.append(r)
    return out
