"""Index-vs-table check: does every index hold the entries its table's rows imply?

PRAGMA quick_check verifies each b-tree but never compares an index with its table,
so a file whose index is stale (entries for values the rows no longer have) passes
it, and every query using that index returns rows the table does not hold. PRAGMA
integrity_check compares them with one index seek per row and index: many times the
cost of quick_check.

This check compares aggregates instead, in sequential passes: one scan of each
table (NOT INDEXED) computes the row count and, once per column any index keys on,
a sum over that column; one covering scan of each index (INDEXED BY, verified
covering with EXPLAIN QUERY PLAN) computes the same from the index's own entries.
An entry missing or extra, or holding another value than its row, changes a count or
a sum. What is summed is kept cheap (one SQLite step per column, no per-row string
walk): integers modulo a prime, REAL values with total(), text by its first
character, NULL as 7; so a text change that keeps the first character, or equal
values swapped between rows, goes unseen (integrity_check sees those). REAL sums
depend on the order of addition and compare within 1e-9.

The passes are independent reads of an immutable file: run() spreads them over the
connections it is given, one thread each (sqlite3 releases the GIL while a statement
steps), largest first (the table scans), so they share the cores with quick_check.

Not covered, and listed in the result: expression and partial indexes (their keys
are not plain columns), WITHOUT ROWID tables, and any index SQLite would not scan
as a covering index (its values would be read from the table, comparing it with
itself).
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .db import ReadOnlyDB

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


def _term(column: str, kind: str) -> str:
    """One aggregate over a column, the same whether read from the table or an index."""
    q = _quote(column)
    if kind == "int":
        return f"sum(ifnull({q} % {PRIME}, 7))"
    if kind == "text":
        return f"sum(ifnull(unicode({q}), 7))"
    return f"total({q})"


@dataclass
class IndexPlan:
    """One index to compare with its table."""

    table: str
    index: str
    columns: list[tuple[str, str]]  # (name, int | real | text)


@dataclass
class Plan:
    """The indexes index_check compares, and those it cannot."""

    indexes: list[IndexPlan] = field(default_factory=list)
    not_covered: list[str] = field(default_factory=list)

    def by_table(self) -> dict[str, list[IndexPlan]]:
        out: dict[str, list[IndexPlan]] = {}
        for ip in self.indexes:
            out.setdefault(ip.table, []).append(ip)
        return out

    def queries(self) -> list[tuple[str, str]]:
        """(key, SQL) of every pass, table scans first: "t:<table>" or "i:<index>"."""
        tables = [(f"t:{t}", table_sql(t, ips)) for t, ips in self.by_table().items()]
        return tables + [(f"i:{ip.index}", index_sql(ip)) for ip in self.indexes]


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
        if "WITHOUT ROWID" in " ".join(text.split()):
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
            ip = IndexPlan(table, index, [
                (name, _affinity(declared.get(name, ""))) for _, name in keys])
            if _covering(conn, ip):
                p.indexes.append(ip)
            else:
                p.not_covered.append(index)
    return p


def _covering(conn: sqlite3.Connection, ip: IndexPlan) -> bool:
    """Would SQLite read the index scan's values from the index alone?"""
    steps = conn.execute(f"EXPLAIN QUERY PLAN {index_sql(ip)}").fetchall()
    return any("COVERING INDEX" in str(row[-1]) for row in steps)


def _columns(ips: list[IndexPlan]) -> list[tuple[str, str]]:
    """The distinct key columns of a table's indexes, in first-seen order."""
    return list(dict.fromkeys(c for ip in ips for c in ip.columns))


def table_sql(table: str, ips: list[IndexPlan]) -> str:
    terms = ["count(*)"] + [_term(c, k) for c, k in _columns(ips)]
    return f"SELECT {', '.join(terms)} FROM {_quote(table)} NOT INDEXED"


def index_sql(ip: IndexPlan) -> str:
    terms = ["count(*)"] + [_term(c, k) for c, k in ip.columns]
    return f"SELECT {', '.join(terms)} FROM {_quote(ip.table)} INDEXED BY {_quote(ip.index)}"


def _differ(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        x, y = float(a or 0), float(b or 0)  # type: ignore[arg-type]
        return abs(x - y) > 1e-9 * max(1.0, abs(x), abs(y))
    return a != b


def compare(ip: IndexPlan, from_index: tuple, table_cols: list[tuple[str, str]],
            from_table: tuple) -> str | None:
    """None when they agree, else one line saying how the index differs.

    from_index: count then one sum per key column; from_table: count then one sum
    per column of table_cols (every indexed column of the table)."""
    pairs = [("entries", from_index[0], from_table[0])]
    for i, col in enumerate(ip.columns):
        pairs.append((f"values of {col[0]}", from_index[1 + i],
                      from_table[1 + table_cols.index(col)]))
    for what, a, b in pairs:
        if _differ(a, b):
            return (f"index {ip.index} disagrees with table {ip.table}: {what} differ "
                    f"(index {a}, table {b}); the file was written inconsistently, rebuild "
                    f"it (or REINDEX {ip.index})")
    return None


def problems(p: Plan, results: dict[str, tuple]) -> list[str]:
    """Every disagreement between the passes' results (empty: indexes match tables)."""
    out = []
    for table, ips in p.by_table().items():
        cols = _columns(ips)
        for ip in ips:
            problem = compare(ip, results[f"i:{ip.index}"], cols, results[f"t:{table}"])
            if problem:
                out.append(problem)
    return out


def run(dbs: Sequence[ReadOnlyDB], p: Plan, timeout_ms: int) -> list[str]:
    """Run every pass, spread over dbs (one thread each), within timeout_ms overall.

    The first error (QueryTimeout, sqlite3.DatabaseError...) interrupts the other
    connections and is raised once all have stopped."""
    queue = deque(p.queries())
    results: dict[str, tuple] = {}
    errors: list[BaseException] = []

    def work(db: ReadOnlyDB) -> None:
        try:
            with db.deadline(timeout_ms):
                while not errors:
                    try:
                        key, sql = queue.popleft()
                    except IndexError:
                        return
                    results[key] = tuple(db.conn.execute(sql).fetchone())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)
            for other in dbs:
                if other is not db:
                    other.cancel()

    threads = [threading.Thread(target=work, args=(db,), name="releaser-indexcheck")
               for db in dbs[1:]]
    for t in threads:
        t.start()
    try:
        work(dbs[0])
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return problems(p, results)
