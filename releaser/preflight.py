"""Checks on a candidate's path before anything is read or copied.

Each refuses with one clear line (what file, what is wrong, what to do) and
changes nothing. The gates then check the content of the staged copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import access
from .errors import UsageError
from .store import Store

if TYPE_CHECKING:
    from .gate_result import GateResult


def check_source_path(source: Path) -> None:
    """Path-level checks on a database to read (exit 2): the gates check the content.

    A build this user cannot read is exit 2 whatever the reason (the file's mode, or
    a folder on the way it may not enter, such as another user's 0700 home)."""
    problem = access.source_problem(source)
    if problem:
        raise UsageError(problem)
    if source.is_symlink() and not source.exists():
        raise UsageError(f"{source}: is a dangling symlink (points to {os.readlink(source)})")
    if not source.exists():
        raise UsageError(f"{source}: no such file; pass the path of the built database")
    if source.is_dir():
        raise UsageError(f"{source}: is a folder; pass the database file inside it")
    if not source.is_file():
        raise UsageError(f"{source}: is not a regular file")


def preflight_source(store: Store, source: Path) -> Path:
    """check_source_path, and the candidate must not be the live release or in the store."""
    check_source_path(source)
    if source.absolute() == store.live_path.absolute() or (
            store.live_path.exists() and source.resolve() == store.live_path.resolve()):
        raise UsageError(f"{source}: is the live release itself; publish a new build instead")
    if store.is_inside(source):
        raise UsageError(
            f"{source}: is inside the releaser store ({store.root}); publish a build from "
            "outside it, or use `releaser rollback --to ID` for an earlier release")
    return source


def hot_journal(source: Path) -> str | None:
    journal = Path(f"{source}-journal")
    try:
        size = journal.stat().st_size
    except OSError:
        return None
    if size > 0:
        return (f"{source}: has a hot rollback journal ({journal}, {size} bytes): a writer is "
                "mid-transaction or crashed; let it finish, or open the file once with sqlite3 "
                "to recover it, then publish again")
    return None


def source_sidecar_warnings(source: Path) -> list[GateResult]:
    """An empty -wal beside the source: nothing is pending (the copy is whole), but
    SQLite deletes it when the last connection closes, so something may still have
    the build open. A warning: `--strict` refuses it."""
    wal = Path(f"{source}-wal")
    if not wal.exists() or wal.stat().st_size > 0:
        return []
    from .gate_result import WARN, GateResult  # publish only (status imports this module)

    return [GateResult(
        "source_wal", "file", WARN, observed=0, threshold="no -wal beside the source",
        detail=f"{wal} exists (0 bytes): a connection may still have the build open; "
               "publish once the build has closed it, or without --strict")]
