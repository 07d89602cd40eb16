"""Schema compatibility: read a database's schema, compare two, check probe plans.

Expand then contract: a release may add tables, columns, indexes and views
(expand) but must not take away what the running app may use (contract) unless
the operator says so (`[schema] allow_contract` or `publish --allow-contract`).

Classification of a change from the live release (old) to the candidate (new):
  contract  table/view/column removed (a rename looks the same), a narrowed
            column type, NOT NULL added without a default (also on a new
            column of an existing table), a primary key changed, an index a
            probe uses (per EXPLAIN QUERY PLAN on the live release) removed
            or changed, a view losing columns
  warn      any other index removed or changed, a trigger removed or changed
  expand    everything else: new tables/columns/indexes/views/triggers,
            NOT NULL dropped, a widened or same-affinity type

Types compare by SQLite affinity (INTEGER, TEXT, BLOB, REAL, NUMERIC).
Widening (expand): INTEGER <-> NUMERIC (SQLite stores values the same way),
INTEGER/NUMERIC -> REAL, anything -> BLOB (no affinity: values kept as
written). Anything -> TEXT is narrowing (contract): numbers come back as
strings and compare and sort as text ('10' < '9'), which breaks queries such
as `post_count > 1000000`. Everything else (REAL -> INTEGER, TEXT -> INTEGER...)
is narrowing.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, Probe
from .db import QueryTimeout, ReadOnlyDB
from .gates import ERROR, FAIL, PASS, GateResult
from .gates import WARN as GATE_WARN

EXPAND, CONTRACT, WARN = "expand", "contract", "warn"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    notnull: bool
    default: str | None
    pk: int  # position in the primary key, 0 when not part of it


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: tuple[str, ...]
    unique: bool
    partial: bool
    # "c" CREATE INDEX, "u" UNIQUE constraint, "pk" PRIMARY KEY constraint
    origin: str
    where: str | None = None


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class View:
    name: str
    sql: str
    columns: tuple[str, ...] | None  # None: the view does not compile


@dataclass(frozen=True)
class Trigger:
    name: str
    table: str
    sql: str


@dataclass
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)
    indexes: dict[str, Index] = field(default_factory=dict)
    views: dict[str, View] = field(default_factory=dict)
    triggers: dict[str, Trigger] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tables": {n: asdict(t) for n, t in self.tables.items()},
            "indexes": {n: asdict(i) for n, i in self.indexes.items()},
            "views": {n: asdict(v) for n, v in self.views.items()},
            "triggers": {n: asdict(t) for n, t in self.triggers.items()},
        }


@dataclass(frozen=True)
class SchemaChange:
    category: str  # expand | contract | warn
    object: str  # table | column | index | view | trigger
    name: str  # e.g. "tags_final.sub_category"
    change: str  # added | removed | changed
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _norm_sql(sql: str | None) -> str:
    return re.sub(r"\s+", " ", sql or "").strip()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_schema(db: ReadOnlyDB) -> Schema:
    """Everything the app can see, from sqlite_schema and the table/index pragmas."""
    schema = Schema()
    rows = db.all("SELECT type, name, tbl_name, sql FROM sqlite_schema "
                  "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name")
    for kind, name, tbl, sql in rows:
        if kind == "table":
            try:
                cols = db.all("SELECT name, type, \"notnull\", dflt_value, pk, hidden "
                              "FROM pragma_table_xinfo(?)", (name,))
            except sqlite3.OperationalError:
                cols = []  # a virtual table whose module this SQLite lacks: no columns seen
            schema.tables[name] = Table(name, tuple(
                Column(c[0], (c[1] or "").upper(), bool(c[2]), c[3], int(c[4]))
                for c in cols if c[5] in (0, 2, 3)))  # 1 = hidden column of a virtual table
        elif kind == "view":
            try:
                vcols: tuple[str, ...] | None = tuple(
                    r[0] for r in db.all("SELECT name FROM pragma_table_xinfo(?)", (name,)))
            except sqlite3.DatabaseError:
                vcols = None
            schema.views[name] = View(name, _norm_sql(sql), vcols)
        elif kind == "trigger":
            schema.triggers[name] = Trigger(name, tbl, _norm_sql(sql))
    for table in list(schema.tables):
        for _seq, iname, unique, origin, partial in db.all(
                "SELECT seq, name, \"unique\", origin, partial FROM pragma_index_list(?)",
                (table,)):
            cols = tuple(r[0] if r[0] is not None else "<expr>" for r in db.all(
                "SELECT name FROM pragma_index_info(?) ORDER BY seqno", (iname,)))
            sql = db.scalar("SELECT sql FROM sqlite_schema WHERE type='index' AND name=?",
                            (iname,))
            where = None
            if partial and sql:
                m = re.search(r"\bWHERE\b(.*)$", _norm_sql(sql), re.IGNORECASE)
                where = m.group(1).strip() if m else None
            schema.indexes[iname] = Index(iname, table, cols, bool(unique), bool(partial),
                                          origin, where)
    return schema


# -- type affinity ---------------------------------------------------------


def affinity(declared: str) -> str:
    """SQLite's rules (datatype3.html, 3.1), in order."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if any(s in t for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


_WIDENING = {("INTEGER", "NUMERIC"), ("NUMERIC", "INTEGER"), ("INTEGER", "REAL"),
             ("NUMERIC", "REAL")}


def type_change(old: str, new: str) -> tuple[str, str]:
    """(category, reason) for a declared type change."""
    a, b = affinity(old), affinity(new)
    what = f"type {old or '(none)'} -> {new or '(none)'}"
    if a == b:
        return EXPAND, f"{what} (same {a} affinity)"
    if b == "BLOB" or (a, b) in _WIDENING:
        return EXPAND, f"{what} widens {a} to {b}"
    return CONTRACT, f"{what} narrows {a} to {b}"


# -- compare -----------------------------------------------------------------


def compare(old: Schema, new: Schema, probe_indexes: dict[str, list[str]] | None = None
            ) -> list[SchemaChange]:
    """Changes from old (live) to new (candidate). probe_indexes: index -> probes using it."""
    used = probe_indexes or {}
    out: list[SchemaChange] = []
    for name in sorted(old.tables.keys() - new.tables.keys()):
        out.append(SchemaChange(CONTRACT, "table", name, "removed",
                                f"table {name} removed or renamed"))
    for name in sorted(new.tables.keys() - old.tables.keys()):
        out.append(SchemaChange(EXPAND, "table", name, "added", f"table {name} added"))
    for name in sorted(old.tables.keys() & new.tables.keys()):
        out.extend(_compare_table(old.tables[name], new.tables[name]))
    out.extend(_compare_indexes(old, new, used))
    out.extend(_compare_views(old, new))
    for name in sorted(old.triggers.keys() - new.triggers.keys()):
        out.append(SchemaChange(WARN, "trigger", name, "removed", f"trigger {name} removed"))
    for name in sorted(new.triggers.keys() - old.triggers.keys()):
        out.append(SchemaChange(EXPAND, "trigger", name, "added", f"trigger {name} added"))
    for name in sorted(old.triggers.keys() & new.triggers.keys()):
        if old.triggers[name].sql != new.triggers[name].sql:
            out.append(SchemaChange(WARN, "trigger", name, "changed",
                                    f"trigger {name} definition changed"))
    return out


def _compare_table(old: Table, new: Table) -> list[SchemaChange]:
    out: list[SchemaChange] = []
    t = old.name
    for col in old.columns:
        if new.column(col.name) is None:
            out.append(SchemaChange(CONTRACT, "column", f"{t}.{col.name}", "removed",
                                    f"column {t}.{col.name} removed or renamed"))
    for col in new.columns:
        if old.column(col.name) is None:
            if col.notnull and col.default is None and not col.pk:
                out.append(SchemaChange(
                    CONTRACT, "column", f"{t}.{col.name}", "added",
                    f"column {t}.{col.name} added NOT NULL without a default "
                    "(writers that do not know it fail)"))
            else:
                out.append(SchemaChange(EXPAND, "column", f"{t}.{col.name}", "added",
                                        f"column {t}.{col.name} {col.type or ''} added".replace(
                                            "  ", " ")))
    for col in old.columns:
        nc = new.column(col.name)
        if nc is None:
            continue
        name = f"{t}.{col.name}"
        if nc.type != col.type:
            category, reason = type_change(col.type, nc.type)
            out.append(SchemaChange(category, "column", name, "changed",
                                    f"column {name}: {reason}"))
        if nc.notnull and not col.notnull:
            if nc.default is None:
                out.append(SchemaChange(CONTRACT, "column", name, "changed",
                                        f"column {name}: NOT NULL added without a default"))
            else:
                out.append(SchemaChange(EXPAND, "column", name, "changed",
                                        f"column {name}: NOT NULL added with default "
                                        f"{nc.default}"))
        elif col.notnull and not nc.notnull:
            out.append(SchemaChange(EXPAND, "column", name, "changed",
                                    f"column {name}: NOT NULL dropped"))
        elif nc.notnull and nc.default is None and col.default is not None:
            out.append(SchemaChange(CONTRACT, "column", name, "changed",
                                    f"column {name}: NOT NULL column lost its default "
                                    f"{col.default}"))
        elif nc.default != col.default:
            out.append(SchemaChange(EXPAND, "column", name, "changed",
                                    f"column {name}: default {col.default} -> {nc.default}"))
        if nc.pk != col.pk:
            out.append(SchemaChange(CONTRACT, "column", name, "changed",
                                    f"column {name}: primary key position {col.pk} -> {nc.pk}"))
    return out


def _index_shape(ix: Index) -> str:
    text = f"{'UNIQUE ' if ix.unique else ''}{ix.table}({', '.join(ix.columns)})"
    return text + (f" WHERE {ix.where}" if ix.partial else "")


def _compare_indexes(old: Schema, new: Schema, used: dict[str, list[str]]
                     ) -> list[SchemaChange]:
    out: list[SchemaChange] = []
    for name in sorted(old.indexes.keys() - new.indexes.keys()):
        ix = old.indexes[name]
        if ix.table not in new.tables:
            continue  # reported with its table
        probes = used.get(name)
        if probes:
            out.append(SchemaChange(
                CONTRACT, "index", name, "removed",
                f"index {name} on {_index_shape(ix)} removed; probe {', '.join(probes)} "
                "uses it on the live release"))
        else:
            out.append(SchemaChange(WARN, "index", name, "removed",
                                    f"index {name} on {_index_shape(ix)} removed"))
    for name in sorted(new.indexes.keys() - old.indexes.keys()):
        out.append(SchemaChange(EXPAND, "index", name, "added",
                                f"index {name} on {_index_shape(new.indexes[name])} added"))
    for name in sorted(old.indexes.keys() & new.indexes.keys()):
        a, b = old.indexes[name], new.indexes[name]
        if _index_shape(a) == _index_shape(b):
            continue
        what = f"index {name} changed from {_index_shape(a)} to {_index_shape(b)}"
        probes = used.get(name)
        if probes:
            out.append(SchemaChange(CONTRACT, "index", name, "changed",
                                    f"{what}; probe {', '.join(probes)} uses it"))
        elif a.unique and not b.unique:
            out.append(SchemaChange(WARN, "index", name, "changed",
                                    f"{what}: no longer unique"))
        else:
            out.append(SchemaChange(WARN, "index", name, "changed", what))
    return out


def _compare_views(old: Schema, new: Schema) -> list[SchemaChange]:
    out: list[SchemaChange] = []
    for name in sorted(old.views.keys() - new.views.keys()):
        out.append(SchemaChange(CONTRACT, "view", name, "removed",
                                f"view {name} removed or renamed"))
    for name in sorted(new.views.keys() - old.views.keys()):
        out.append(SchemaChange(EXPAND, "view", name, "added", f"view {name} added"))
    for name in sorted(old.views.keys() & new.views.keys()):
        a, b = old.views[name], new.views[name]
        lost = [c for c in (a.columns or ()) if b.columns is not None and c not in b.columns]
        if b.columns is None and a.columns is not None:
            out.append(SchemaChange(CONTRACT, "view", name, "changed",
                                    f"view {name} no longer compiles"))
        elif lost:
            out.append(SchemaChange(CONTRACT, "view", name, "changed",
                                    f"view {name} lost column(s) {', '.join(lost)}"))
        elif a.sql != b.sql:
            out.append(SchemaChange(EXPAND, "view", name, "changed",
                                    f"view {name} definition changed (same columns)"))
    return out


# -- query plans -------------------------------------------------------------

_SCAN_RE = re.compile(r"^SCAN (?:TABLE )?(\S+)(?: AS (\S+))?(.*)$")
_INDEX_RE = re.compile(r"USING (?:COVERING )?INDEX (\S+)")
_ALIAS_RE = re.compile(
    r"\b(?:FROM|JOIN)\s+(\"[^\"]+\"|`[^`]+`|\[[^\]]+\]|[\w.]+)\s+(?:AS\s+)?(\w+)", re.IGNORECASE)
_NOT_ALIAS = {"WHERE", "JOIN", "LEFT", "RIGHT", "INNER", "CROSS", "NATURAL", "FULL", "OUTER",
              "ON", "USING", "GROUP", "ORDER", "LIMIT", "UNION", "EXCEPT", "INTERSECT",
              "WINDOW", "HAVING", "INDEXED", "NOT"}


def query_plan(db: ReadOnlyDB, probe: Probe) -> list[str]:
    """EXPLAIN QUERY PLAN detail lines (the probe is compiled, not run)."""
    return [str(r[3]) for r in db.all(f"EXPLAIN QUERY PLAN {probe.sql}", probe.params)]


def indexes_used(plan: list[str]) -> set[str]:
    """Named indexes a plan uses (automatic indexes excluded: they are built per query)."""
    return {m.group(1) for line in plan if "AUTOMATIC" not in line
            for m in _INDEX_RE.finditer(line)}


def _aliases(sql: str) -> dict[str, str]:
    out = {}
    for table, alias in _ALIAS_RE.findall(sql):
        if alias.upper() not in _NOT_ALIAS:
            out[alias] = table.strip('"`[]').split(".")[-1]
    return out


def full_scans(plan: list[str], sql: str, tables: set[str]) -> list[tuple[str, str]]:
    """(table, plan line) for each full table scan: `SCAN t` without an index."""
    aliases = _aliases(sql)
    out = []
    for line in plan:
        m = _SCAN_RE.match(line)
        if not m or "INDEX" in m.group(3) or "VIRTUAL TABLE" in m.group(3):
            continue
        name = m.group(1)
        table = name if name in tables else aliases.get(name)
        if table in tables:
            out.append((table, line))
    return out


def probe_index_usage(db: ReadOnlyDB, probes: tuple[Probe, ...]) -> dict[str, list[str]]:
    """index name -> probes whose plan on this database uses it (probes that fail to
    compile here are skipped: the probe gate reports them)."""
    used: dict[str, list[str]] = {}
    for probe in probes:
        try:
            plan = query_plan(db, probe)
        except (sqlite3.DatabaseError, QueryTimeout):
            continue
        for name in sorted(indexes_used(plan)):
            used.setdefault(name, []).append(probe.name)
    return used


def row_count(db: ReadOnlyDB, table: str) -> int:
    return int(db.scalar(f"SELECT COUNT(*) FROM {quote_ident(table)}"))


# -- gates -------------------------------------------------------------------


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


def plan_results(db: ReadOnlyDB, probes: tuple[Probe, ...], scan_rows_max: int
                 ) -> list[GateResult]:
    """A warn for each probe whose plan fully scans a table above scan_rows_max rows."""
    tables = set(read_schema(db).tables)
    counts: dict[str, int] = {}
    out = []
    for probe in probes:
        r = GateResult(probe.name, "query_plan", PASS,
                       threshold=f"no full scan of a table over {scan_rows_max} rows")
        try:
            plan = query_plan(db, probe)
            big = []
            for table, line in full_scans(plan, probe.sql, tables):
                if table not in counts:
                    counts[table] = row_count(db, table)
                if counts[table] > scan_rows_max:
                    big.append(f"{line} ({counts[table]} rows)")
        except (sqlite3.DatabaseError, QueryTimeout) as exc:
            r.outcome, r.detail = ERROR, f"EXPLAIN QUERY PLAN failed: {exc}"
            out.append(r)
            continue
        # observed stays short for the report table; the whole plan goes in detail
        r.observed, r.detail = "no big scan", "plan: " + "; ".join(plan)
        if big:
            r.outcome, r.observed = GATE_WARN, "full scan"
            r.detail = (f"full table scan: {'; '.join(big)} exceeds [schema] scan_rows_max "
                        f"{scan_rows_max}; add an index for this query")
        out.append(r)
    return out


def schema_gates(candidate: Path, live: Path | None, config: Config, *,
                 allow_contract: bool = False) -> list[GateResult]:
    """Schema compatibility against the live release (when there is one), then plans."""
    timeout = config.gates.query_timeout_ms
    allowed = allow_contract or config.schema.allow_contract
    how = "--allow-contract" if allow_contract else "[schema] allow_contract"
    out: list[GateResult] = []
    try:
        with ReadOnlyDB(candidate, timeout) as cand:
            if live is not None and live.exists():
                with ReadOnlyDB(live, timeout) as old:
                    before = read_schema(old)
                    used = probe_index_usage(old, config.probes)
                changes = compare(before, read_schema(cand), used)
                out.extend(compat_results(changes, allowed, how))
            out.extend(plan_results(cand, config.probes, config.schema.scan_rows_max))
    except (sqlite3.DatabaseError, QueryTimeout) as exc:
        out.append(GateResult("schema", "schema_compat", ERROR,
                              detail=f"cannot read the schema: {exc}"))
    return out


__all__ = [
    "CONTRACT", "EXPAND", "WARN", "Column", "Index", "Schema", "SchemaChange", "Table",
    "Trigger", "View", "affinity", "compare", "full_scans", "indexes_used", "probe_index_usage",
    "query_plan", "quote_ident", "read_schema", "row_count", "schema_gates", "type_change",
]
