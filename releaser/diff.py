"""What changes between two databases: schema, row counts, checks, categories, probes.

`diff_files(new, old, ...)` compares NEW (a candidate, or the release you would
switch to) with OLD (the base: normally the live release). Every "change" is NEW
minus OLD, so `+` means NEW has more: it reads as "what publishing NEW over OLD
would do", like git diff and sqldiff reading old then new. The result is a plain
dict with "old" and "new" keys (for --json); `render` turns it into a table.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import gates, plans, schema, schema_compat
from .config import Config
from .db import QueryTimeout, ReadOnlyDB
from .errors import UsageError

# per-category rows shown for one group_by column; the rest are summed as "(other values)".
# Each side reads only its MAX_GROUPS most frequent values (GROUP BY ... LIMIT), so the
# diff's memory does not grow with the number of distinct values.
MAX_GROUPS = 50


@dataclass(frozen=True)
class Side:
    """One of the two files `releaser diff` compares."""

    path: Path
    label: str  # "release 3 (live)" or a file path
    release_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "path": str(self.path), "release_id": self.release_id}


def _open(side: Side, config: Config) -> ReadOnlyDB:
    r = gates.check_file(side.path)
    if r.outcome != gates.PASS:
        raise UsageError(f"{side.path}: cannot diff {side.label}: {r.detail}")
    try:
        return ReadOnlyDB(side.path, config.gates.query_timeout_ms,
                          heap_limit_mb=config.gates.sqlite_heap_limit_mb)
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"{side.path}: cannot open {side.label}: {exc}") from None


def _change(a: Any, b: Any) -> dict[str, Any]:
    """A minus B, and the percentage of B, when both are numbers."""
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)):
        return {"change": None, "change_pct": None}
    delta = a - b
    pct = round(delta / abs(b) * 100, 3) if b else None
    return {"change": round(delta, 6) if isinstance(delta, float) else delta, "change_pct": pct}


def _scalar(db: ReadOnlyDB, sql: str) -> tuple[Any, str | None]:
    try:
        return db.scalar(sql), None
    except (sqlite3.DatabaseError, QueryTimeout) as exc:
        return None, str(exc)


def _tables(sa: schema.Schema, sb: schema.Schema, da: ReadOnlyDB, db_: ReadOnlyDB,
            timeout_ms: int) -> list[dict[str, Any]]:
    """Rows per table (full counts: under the integrity time limit, not the query one)."""
    out = []
    for key in sorted(sa.tables.keys() | sb.tables.keys()):
        ta, tb = sa.tables.get(key), sb.tables.get(key)
        a = plans.row_count(da, ta.name, timeout_ms=timeout_ms) if ta else None
        b = plans.row_count(db_, tb.name, timeout_ms=timeout_ms) if tb else None
        out.append({"table": (ta or tb).name, "new": a, "old": b,  # type: ignore[union-attr]
                    **_change(a, b)})
    return out


def _checks(config: Config, da: ReadOnlyDB, db_: ReadOnlyDB) -> list[dict[str, Any]]:
    out = []
    for check in config.checks:
        a, err_a = _scalar(da, check.sql)
        b, err_b = _scalar(db_, check.sql)
        row = {"name": check.name, "new": a, "old": b, **_change(a, b)}
        if err_a or err_b:
            row["error"] = "; ".join(f"{s}: {e}" for s, e in (("NEW", err_a), ("OLD", err_b)) if e)
        out.append(row)
    return out


def _group_targets(spec: str, sa: schema.Schema, sb: schema.Schema) -> list[tuple[str, str]]:
    """`table.column` names one column; a bare `column` means every table that has it."""
    tables = {**sb.tables, **sa.tables}  # keyed by lower-cased name
    if "." in spec:
        table, column = spec.split(".", 1)
        t = tables.get(table.lower())
        return [(t.name, column)] if t is not None else []
    return [(tables[k].name, spec) for k in sorted(tables) if tables[k].column(spec) is not None]


def _column(s: schema.Schema, table: str, column: str) -> tuple[str, str] | None:
    """(table, column) as this database spells them, or None when it lacks them."""
    t = s.tables.get(table.lower())
    c = t.column(column) if t is not None else None
    return (t.name, c.name) if t is not None and c is not None else None


def _top(db: ReadOnlyDB, where: tuple[str, str], timeout_ms: int) -> dict[Any, int]:
    """The MAX_GROUPS most frequent values (memory stays bounded however many there are)."""
    q = schema.quote_ident
    table, column = where
    return {v: n for v, n in db.all(
        f"SELECT {q(column)}, COUNT(*) FROM {q(table)} GROUP BY 1 ORDER BY 2 DESC, 1 "
        f"LIMIT {MAX_GROUPS}", timeout_ms=timeout_ms)}


def _exact(db: ReadOnlyDB, where: tuple[str, str], values: list[Any], timeout_ms: int
           ) -> dict[Any, int]:
    """Counts of these values (at most 2 * MAX_GROUPS of them)."""
    q = schema.quote_ident
    table, column = where
    known = [v for v in values if v is not None]
    cond = [f"{q(column)} IN ({', '.join('?' * len(known))})"] if known else []
    if len(known) < len(values):
        cond.append(f"{q(column)} IS NULL")
    if not cond:
        return {}
    return {v: n for v, n in db.all(
        f"SELECT {q(column)}, COUNT(*) FROM {q(table)} WHERE {' OR '.join(cond)} GROUP BY 1",
        known, timeout_ms=timeout_ms)}


def _groups(config: Config, sa: schema.Schema, sb: schema.Schema, da: ReadOnlyDB,
            db_: ReadOnlyDB, totals: dict[str, tuple[int | None, int | None]]
            ) -> list[dict[str, Any]]:
    """Rows per value of each [diff] group_by column: the MAX_GROUPS most frequent values
    of A and of B (each counted on both sides), then one "(other values)" row."""
    timeout = config.gates.integrity_timeout_ms
    out: list[dict[str, Any]] = []
    for spec in config.diff.group_by:
        targets = _group_targets(spec, sa, sb)
        if not targets:
            out.append({"column": spec, "rows": [], "error": f"no table has column {spec}"})
        for table, column in targets:
            wa, wb = _column(sa, table, column), _column(sb, table, column)
            a = _top(da, wa, timeout) if wa else None
            b = _top(db_, wb, timeout) if wb else None
            values = list((a or {}).keys() | (b or {}).keys())
            # a side that returned MAX_GROUPS rows may have more values: count the others'
            for side, db, w in ((a, da, wa), (b, db_, wb)):
                if side is not None and w is not None and len(side) >= MAX_GROUPS:
                    side.update(_exact(db, w, [v for v in values if v not in side], timeout))
            values.sort(key=lambda v: (-max((a or {}).get(v, 0), (b or {}).get(v, 0)), str(v)))
            rows = []
            for v in values[:MAX_GROUPS]:
                na = None if a is None else a.get(v, 0)
                nb = None if b is None else b.get(v, 0)
                rows.append({"value": v, "new": na, "old": nb, **_change(na, nb)})
            total_a, total_b = totals.get(table.lower(), (None, None))
            shown = values[:MAX_GROUPS]
            na = None if a is None or total_a is None else total_a - sum(
                a.get(v, 0) for v in shown)
            nb = None if b is None or total_b is None else total_b - sum(
                b.get(v, 0) for v in shown)
            if na or nb:
                rows.append({"value": "(other values)", "new": na, "old": nb, **_change(na, nb)})
            out.append({"column": f"{table}.{column}", "rows": rows})
    return out


def _probes(config: Config, da: ReadOnlyDB, db_: ReadOnlyDB) -> list[dict[str, Any]]:
    out = []
    for probe in config.probes:
        ra = gates.run_probe(da, probe, config.gates.probe_runs)
        rb = gates.run_probe(db_, probe, config.gates.probe_runs)
        a = ra.observed if ra.outcome != gates.ERROR else None
        b = rb.observed if rb.outcome != gates.ERROR else None
        row = {"name": probe.name, "new": a, "old": b, "budget_ms": probe.budget_ms,
               **_change(a, b)}
        errors = [f"{s}: {r.detail}" for s, r in (("NEW", ra), ("OLD", rb)) if r.outcome == "error"]
        if errors:
            row["error"] = "; ".join(errors)
        out.append(row)
    return out


def diff_files(a: Side, b: Side, config: Config) -> dict[str, Any]:
    """Compare a (NEW) with b (OLD, the base); see the module docstring."""
    da = _open(a, config)
    try:
        db_ = _open(b, config)
    except BaseException:
        da.close()
        raise
    with da, db_:
        try:
            sa, sb = schema.read_schema(da), schema.read_schema(db_)
            changes = schema_compat.compare(sb, sa, plans.probe_index_usage(db_, config.probes))
            tables = _tables(sa, sb, da, db_, config.gates.integrity_timeout_ms)
            totals = {t["table"].lower(): (t["new"], t["old"]) for t in tables}
            return {
                "new": a.as_dict(),
                "old": b.as_dict(),
                "schema": [c.as_dict() for c in changes],
                "tables": tables,
                "checks": _checks(config, da, db_),
                "groups": _groups(config, sa, sb, da, db_, totals),
                "probes_p95_ms": _probes(config, da, db_),
            }
        except (sqlite3.DatabaseError, QueryTimeout) as exc:
            raise UsageError(f"{a.path} vs {b.path}: cannot compare: {exc}") from None


# -- human table ---------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _fmt_change(row: dict[str, Any]) -> str:
    c = row.get("change")
    if c is None:
        return "" if row.get("new") == row.get("old") else "n/a"
    if c == 0:
        return "="
    text = f"{'+' if c > 0 else ''}{_fmt(c)}"
    if row.get("change_pct") is not None:
        text += f" ({'+' if row['change_pct'] > 0 else ''}{row['change_pct']:.2f}%)"
    return text


def render(doc: dict[str, Any]) -> list[str]:
    """The diff as aligned text lines: OLD first, then NEW, then the change (NEW - OLD)."""
    old, new = doc["old"]["label"], doc["new"]["label"]
    lines = [f"diff: OLD = {old}", f"      NEW = {new}", "", "schema (OLD -> NEW):"]
    if not doc["schema"]:
        lines.append("  no schema changes")
    for ch in doc["schema"]:
        lines.append(f"  {ch['category']:<9} {ch['reason']}")

    def table(title: str, key: str, rows: list[dict[str, Any]]) -> None:
        lines.append("")
        lines.append(f"{title:<34} {'OLD':>14} {'NEW':>14}  change (+: NEW has more)")
        for row in rows:
            name = str(row[key]) if row[key] is not None else "(null)"
            line = (f"  {name[:32]:<32} {_fmt(row['old']):>14} {_fmt(row['new']):>14}  "
                    f"{_fmt_change(row)}")
            if row.get("error"):
                line += f"  error: {row['error']}"
            lines.append(line.rstrip())

    table("rows per table", "table", doc["tables"])
    if doc["checks"]:
        table("checks", "name", doc["checks"])
    for group in doc["groups"]:
        if group.get("error"):
            lines += ["", f"rows by {group['column']}: {group['error']}"]
        else:
            table(f"rows by {group['column']}", "value", group["rows"])
    if doc["probes_p95_ms"]:
        table("probes (p95 ms)", "name", doc["probes_p95_ms"])
    return lines


__all__ = ["MAX_GROUPS", "Side", "diff_files", "render"]
