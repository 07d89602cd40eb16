"""Schema compatibility: classify the changes from one schema (schema.py) to another.

(Reading a schema is schema.py; query plans are plans.py; the gates built on
all three are schema_gates.py.)

Expand then contract: a release may add tables, columns, indexes and views
(expand) but must not take away what the running app may use (contract) unless
the operator says so (`[schema] allow_contract` or `publish --allow-contract`).

Classification of a change from the live release (old) to the candidate (new):
  contract  table/view/column removed (a rename looks the same), a narrowed
            column type, NOT NULL added without a default (also on a new
            column of an existing table), a primary key changed, an index a
            probe uses (per EXPLAIN QUERY PLAN on the live release) removed
            or changed, a view losing columns, a rowid table made WITHOUT ROWID
            (`SELECT rowid` fails)
  warn      any other index removed or changed, a trigger removed or changed,
            a table made STRICT (SQLite before 3.37 cannot read the schema, and
            writes of a mistyped value fail), a column renamed in case only
            (result column names change for `SELECT *`)
  expand    everything else: new tables/columns/indexes/views/triggers,
            NOT NULL dropped, a widened or same-affinity type, a WITHOUT ROWID
            or STRICT table made an ordinary one, a table renamed in case only

Names compare case-insensitively, as SQLite resolves them: `Tags` and `tags`
are the same table. Schema dicts are keyed by the lower-cased name; the
objects keep the name as written.

Types compare by SQLite affinity (INTEGER, TEXT, BLOB, REAL, NUMERIC).
Widening (expand): INTEGER <-> NUMERIC (SQLite stores values the same way),
INTEGER/NUMERIC -> REAL, anything -> BLOB (no affinity: values kept as
written; `ANY` in a STRICT table counts as BLOB, elsewhere it is NUMERIC). Anything -> TEXT is narrowing (contract): numbers come back as
strings and compare and sort as text ('10' < '9'), which breaks queries such
as `post_count > 1000000`. Everything else (REAL -> INTEGER, TEXT -> INTEGER...)
is narrowing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .schema import Index, Schema, Table

EXPAND, CONTRACT, WARN = "expand", "contract", "warn"


@dataclass(frozen=True)
class SchemaChange:
    """One difference between the live schema and the candidate's."""

    category: str  # expand | contract | warn
    object: str  # table | column | index | view | trigger
    name: str  # e.g. "tags_final.sub_category"
    change: str  # added | removed | changed
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- type affinity ---------------------------------------------------------


def affinity(declared: str, strict: bool = False) -> str:
    """SQLite's rules (datatype3.html, 3.1), in order; ANY in a STRICT table has none."""
    t = declared.upper()
    if strict and t.strip() == "ANY":
        return "BLOB"
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


def type_change(old: str, new: str, old_strict: bool = False, new_strict: bool = False
                ) -> tuple[str, str]:
    """(category, reason) for a declared type change (strict: the table is STRICT)."""
    a, b = affinity(old, old_strict), affinity(new, new_strict)
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
    used: dict[str, list[str]] = {}
    for iname, probes in (probe_indexes or {}).items():
        used.setdefault(iname.lower(), []).extend(probes)
    out = _removed_and_added("table", old.tables, new.tables, CONTRACT, "removed or renamed")
    for key in sorted(old.tables.keys() & new.tables.keys()):
        out.extend(_compare_table(old.tables[key], new.tables[key]))
    out.extend(_compare_indexes(old, new, used))
    out.extend(_compare_views(old, new))
    out.extend(_removed_and_added("trigger", old.triggers, new.triggers, WARN, "removed"))
    for key in sorted(old.triggers.keys() & new.triggers.keys()):
        if old.triggers[key].sql != new.triggers[key].sql:
            name = new.triggers[key].name
            out.append(SchemaChange(WARN, "trigger", name, "changed",
                                    f"trigger {name} definition changed"))
    return out


def _compare_table_options(old: Table, new: Table) -> list[SchemaChange]:
    out: list[SchemaChange] = []
    t = new.name
    if old.name != new.name:
        out.append(SchemaChange(EXPAND, "table", t, "changed",
                                f"table {old.name} renamed to {t} (case only: SQLite names "
                                "are case-insensitive)"))
    if new.without_rowid and not old.without_rowid:
        out.append(SchemaChange(CONTRACT, "table", t, "changed",
                                f"table {t} made WITHOUT ROWID (queries using rowid fail)"))
    elif old.without_rowid and not new.without_rowid:
        out.append(SchemaChange(EXPAND, "table", t, "changed",
                                f"table {t} no longer WITHOUT ROWID"))
    if new.strict and not old.strict:
        out.append(SchemaChange(WARN, "table", t, "changed",
                                f"table {t} made STRICT (SQLite before 3.37 cannot read it; "
                                "writes of a mistyped value fail)"))
    elif old.strict and not new.strict:
        out.append(SchemaChange(EXPAND, "table", t, "changed", f"table {t} no longer STRICT"))
    return out


def _compare_table(old: Table, new: Table) -> list[SchemaChange]:
    out: list[SchemaChange] = _compare_table_options(old, new)
    t = new.name
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
        name = f"{t}.{nc.name}"
        if nc.name != col.name:
            out.append(SchemaChange(WARN, "column", name, "changed",
                                    f"column {t}.{col.name} renamed to {nc.name} (case only: "
                                    "queries still work, result column names change)"))
        if nc.type != col.type or (affinity(col.type, old.strict)
                                   != affinity(nc.type, new.strict)):
            category, reason = type_change(col.type, nc.type, old.strict, new.strict)
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


def _index_key(ix: Index) -> tuple[Any, ...]:
    """What an index does; table and column names compare case-insensitively."""
    return (ix.unique, ix.table.lower(), tuple(c.lower() for c in ix.columns), ix.partial,
            ix.where)


def _compare_indexes(old: Schema, new: Schema, used: dict[str, list[str]]
                     ) -> list[SchemaChange]:
    out: list[SchemaChange] = []
    for key in sorted(old.indexes.keys() - new.indexes.keys()):
        ix = old.indexes[key]
        name = ix.name
        if ix.table.lower() not in new.tables:
            continue  # reported with its table
        probes = used.get(key)
        if probes:
            out.append(SchemaChange(
                CONTRACT, "index", name, "removed",
                f"index {name} on {_index_shape(ix)} removed; probe {', '.join(probes)} "
                "uses it on the live release"))
        else:
            out.append(SchemaChange(WARN, "index", name, "removed",
                                    f"index {name} on {_index_shape(ix)} removed"))
    for key in sorted(new.indexes.keys() - old.indexes.keys()):
        ix = new.indexes[key]
        out.append(SchemaChange(EXPAND, "index", ix.name, "added",
                                f"index {ix.name} on {_index_shape(ix)} added"))
    for key in sorted(old.indexes.keys() & new.indexes.keys()):
        a, b = old.indexes[key], new.indexes[key]
        name = b.name
        if _index_key(a) == _index_key(b):
            continue
        what = f"index {name} changed from {_index_shape(a)} to {_index_shape(b)}"
        probes = used.get(key)
        if probes:
            out.append(SchemaChange(CONTRACT, "index", name, "changed",
                                    f"{what}; probe {', '.join(probes)} uses it"))
        elif a.unique and not b.unique:
            out.append(SchemaChange(WARN, "index", name, "changed",
                                    f"{what}: no longer unique"))
        else:
            out.append(SchemaChange(WARN, "index", name, "changed", what))
    return out


def _removed_and_added(kind: str, old: dict[str, Any], new: dict[str, Any],
                       removed_category: str, removed_words: str) -> list[SchemaChange]:
    """Objects (keyed by lower-cased name) only in old, then only in new (expand)."""
    out = [SchemaChange(removed_category, kind, old[k].name, "removed",
                        f"{kind} {old[k].name} {removed_words}")
           for k in sorted(old.keys() - new.keys())]
    out += [SchemaChange(EXPAND, kind, new[k].name, "added", f"{kind} {new[k].name} added")
            for k in sorted(new.keys() - old.keys())]
    return out


def _compare_views(old: Schema, new: Schema) -> list[SchemaChange]:
    out = _removed_and_added("view", old.views, new.views, CONTRACT, "removed or renamed")
    for key in sorted(old.views.keys() & new.views.keys()):
        a, b = old.views[key], new.views[key]
        name = b.name
        have = {c.lower() for c in b.columns or ()}
        lost = [c for c in (a.columns or ()) if b.columns is not None and c.lower() not in have]
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
