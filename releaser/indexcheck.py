"""Index-vs-table check: does every index hold the entries its table's rows imply?

PRAGMA quick_check verifies each b-tree but never compares an index with its table,
so a file whose index is stale (entries for values the rows no longer have) passes
it, and every query using that index returns rows the table does not hold. PRAGMA
integrity_check compares them with one index seek per row and index: many times the
cost of quick_check.

This check compares aggregates instead, in sequential passes: one scan of each
table (NOT INDEXED) computes, for each of its indexes, the entry count and a sum
over the key columns; one covering scan of each index (INDEXED BY) computes the same
from the index's own entries. An entry missing or extra, or holding another value
than its row, changes an aggregate. What is summed is kept cheap (one SQLite step per
column, no per-row string walk): integers modulo a prime, REAL values with total(),
text by its first character, NULL as its own value; so a text change that keeps the
first character, or equal values swapped between rows, goes unseen (integrity_check
sees those). REAL sums depend on the order of addition and compare within 1e-9.

Not covered, and listed in the result: expression and partial indexes (their keys
are not plain columns) and WITHOUT ROWID tables.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

PRIME = 1000003  # integer values are summed modulo this: no overflow in sum()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _affinity(declared: str) -> str:
    """SQLite's affinity rules (datatype3 section 3.1), folded to int / real / text."""
    d = (declared or "").upper()
    if "INT" in d:
        return "int"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d or "BLOB" in d or not d:
        return "text"
    return "real"


@dataclass
class IndexPlan:
    table: str
    index: str
    columns: list[tuple[str, str]]  # (name, int | real | text)

    def terms(self) -> list[str]:
        """count, one exact integer sum over the int/text columns, total() of the reals."""
        exact = []
        reals = []
        for i, (col, kind) in enumerate(self.columns):
            q = _quote(col)
            weight = (1031 ** i) % PRIME or 1
            if kind == "int":
                exact.append(f"{weight} * ifnull({q} % {PRIME}, 7)")
            elif kind == "text":
                exact.append(f"{weight} * ifnull(unicode({q}), 7)")
            else:
                reals.append(f"total({q})")
        out = ["count(*)"]
        if exact:
            out.append(f"sum({' + '.join(exact)})")
        return out + reals


@dataclass
class Plan:
    indexes: list[IndexPlan] = field(default_factory=list)
    not_covered: list[str] = field(default_factory=list)

    def by_table(self) -> dict[str, list[IndexPlan]]:
        out: dict[str, list[IndexPlan]] = {}
        for ip in self.indexes:
            out.setdefault(ip.table, []).append(ip)
        return out


def plan(conn: sqlite3.Connection) -> Plan:
    """Which indexes to compare, from the schema (reads sqlite_schema only)."""
    p = Plan()
    tables = conn.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name").fetchall()
    for table, sql in tables:
        text = (sql or "").upper()
        if text.lstrip().startswith("CREATE VIRTUAL"):
            continue
        indexes = conn.execute(
            "SELECT name, partial FROM pragma_index_list(?) ORDER BY name", (table,)).fetchall()
        if "WITHOUT ROWID" in text.replace("\n", " ").replace("  ", " "):
            p.not_covered += [name for name, _ in indexes]
            continue
        declared = {row[0]: row[1] for row in conn.execute(
            "SELECT name, type FROM pragma_table_xinfo(?)", (table,))}
        for index, partial in indexes:
            keys = conn.execute(
                "SELECT cid, name FROM pragma_index_xinfo(?) WHERE key = 1 ORDER BY seqno",
                (index,)).fetchall()
            if partial or not keys or any(cid is None or cid < 0 for cid, _ in keys):
                p.not_covered.append(index)
                continue
            p.indexes.append(IndexPlan(table, index, [
                (name, _affinity(declared.get(name, ""))) for _, name in keys]))
    return p


def table_sql(table: str, ips: list[IndexPlan]) -> str:
    terms = [t for ip in ips for t in ip.terms()]
    return f"SELECT {', '.join(terms)} FROM {_quote(table)} NOT INDEXED"


def index_sql(ip: IndexPlan) -> str:
    return f"SELECT {', '.join(ip.terms())} FROM {_quote(ip.table)} INDEXED BY {_quote(ip.index)}"


def compare(ip: IndexPlan, from_index: tuple, from_table: tuple) -> str | None:
    """None when they agree, else one line saying how the index differs."""
    for i, (a, b) in enumerate(zip(from_index, from_table, strict=True)):
        if isinstance(a, float) or isinstance(b, float):
            x, y = float(a or 0), float(b or 0)
            if abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y)):
                continue
        elif a == b:
            continue
        what = ("entries" if i == 0 else
                f"values of {', '.join(c for c, _ in ip.columns)}")
        return (f"index {ip.index} disagrees with table {ip.table}: {what} differ "
                f"(index {a}, table {b}); the file was written inconsistently, rebuild it "
                f"(or REINDEX {ip.index})")
    return None


def run(conn: sqlite3.Connection, p: Plan) -> list[str]:
    """Every disagreement found (empty: the indexes match their tables)."""
    problems = []
    for table, ips in p.by_table().items():
        row = conn.execute(table_sql(table, ips)).fetchone()
        offset = 0
        for ip in ips:
            n = len(ip.terms())
            got = conn.execute(index_sql(ip)).fetchone()
            problem = compare(ip, tuple(got), tuple(row[offset:offset + n]))
            if problem:
                problems.append(problem)
            offset += n
    return problems
