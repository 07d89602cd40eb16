"""What a database's schema is: tables, columns, indexes, views, triggers, read read-only.

read_schema reads everything the app can see, from sqlite_schema and the
table/index pragmas, on a ReadOnlyDB (the candidate's read-only, time-limited
connection): it runs SELECTs only. Names compare case-insensitively, as SQLite
resolves them: the Schema dicts are keyed by the lower-cased name, the objects
keep the name as written. Hidden columns of virtual tables are left out;
generated columns are kept. How two schemas differ is schema_compat.py's,
query plans are plans.py's, the gates built on both schema_gates.py's.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from .db import ReadOnlyDB


@dataclass(frozen=True)
class Column:
    """A table column as PRAGMA table_xinfo reports it."""

    name: str
    type: str
    notnull: bool
    default: str | None
    pk: int  # position in the primary key, 0 when not part of it


@dataclass(frozen=True)
class Index:
    """An index: its table and the columns it covers."""

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
    """A table and its columns."""

    name: str
    columns: tuple[Column, ...]
    without_rowid: bool = False
    strict: bool = False

    def column(self, name: str) -> Column | None:
        key = name.lower()
        return next((c for c in self.columns if c.name.lower() == key), None)


@dataclass(frozen=True)
class View:
    """A view and the columns it returns."""

    name: str
    sql: str
    columns: tuple[str, ...] | None  # None: the view does not compile


@dataclass(frozen=True)
class Trigger:
    """A trigger and the table it is on."""

    name: str
    table: str
    sql: str


@dataclass
class Schema:
    """The tables, indexes, views and triggers of a database."""

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


def _norm_sql(sql: str | None) -> str:
    return re.sub(r"\s+", " ", sql or "").strip()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_options(db: ReadOnlyDB, rows: list[tuple[Any, ...]]) -> dict[str, tuple[bool, bool]]:
    """lower-cased table name -> (without_rowid, strict)."""
    try:  # SQLite 3.37+
        return {str(name).lower(): (bool(wr), bool(strict)) for name, wr, strict in db.all(
            "SELECT name, wr, strict FROM pragma_table_list WHERE schema = 'main' "
            "AND type = 'table'")}
    except sqlite3.OperationalError:  # older SQLite: read the options after the last ")"
        out = {}
        for kind, name, _tbl, sql in rows:
            if kind == "table" and sql:
                tail = _norm_sql(sql).rsplit(")", 1)[-1].upper()
                out[name.lower()] = (bool(re.search(r"\bWITHOUT\s+ROWID\b", tail)),
                                     bool(re.search(r"\bSTRICT\b", tail)))
        return out


def read_schema(db: ReadOnlyDB) -> Schema:
    """Everything the app can see, from sqlite_schema and the table/index pragmas."""
    schema = Schema()
    rows = db.all("SELECT type, name, tbl_name, sql FROM sqlite_schema "
                  "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name")
    options = _table_options(db, rows)
    for kind, name, tbl, sql in rows:
        key = name.lower()
        if kind == "table":
            try:
                cols = db.all("SELECT name, type, \"notnull\", dflt_value, pk, hidden "
                              "FROM pragma_table_xinfo(?)", (name,))
            except sqlite3.OperationalError:
                cols = []  # a virtual table whose module this SQLite lacks: no columns seen
            schema.tables[key] = Table(name, tuple(
                Column(c[0], (c[1] or "").upper(), bool(c[2]), c[3], int(c[4]))
                for c in cols if c[5] in (0, 2, 3)),  # 1 = hidden column of a virtual table
                *options.get(key, (False, False)))
        elif kind == "view":
            try:
                vcols: tuple[str, ...] | None = tuple(
                    r[0] for r in db.all("SELECT name FROM pragma_table_xinfo(?)", (name,)))
            except sqlite3.DatabaseError:
                vcols = None
            schema.views[key] = View(name, _norm_sql(sql), vcols)
        elif kind == "trigger":
            schema.triggers[key] = Trigger(name, tbl, _norm_sql(sql))
    for table in [t.name for t in schema.tables.values()]:
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
            schema.indexes[iname.lower()] = Index(iname, table, cols, bool(unique), bool(partial),
                                          origin, where)
    return schema
