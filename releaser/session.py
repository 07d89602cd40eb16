"""The session every verb runs in: one store, its state.db, and what they agree on.

Context binds a Config to its Store (the files) and StateDB (the record). open_store
creates nothing unless asked (`init`); every other verb needs an existing store.
The questions answered here only read: which file holds a release (its slot, else
the archive), which release a rollback would put back, whether live_path is a
symlink this store manages, what a release id the user typed means.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import access, statefile
from .config import Config
from .errors import StoreIOError, UsageError
from .journal import Journal
from .state import Release, StateDB
from .store import SLOTS, Store, release_id_of


@dataclass
class Context:
    """An open store session: the config, the store and its state.db."""

    config: Config
    store: Store
    state: StateDB

    def close(self) -> None:
        self.state.close()

    @property
    def degraded(self) -> str | None:
        """Why state.db is unusable when this session works from the journal instead."""
        return self.state.degraded


def state_hooks(store: Store) -> dict[str, Any]:
    """What ties a StateDB to its store: the journal, manifests, the release id floor."""
    return {"journal": Journal(store.root), "on_release": store.write_manifest,
            "id_floor": lambda: statefile.highest_file_id(store)}


@contextmanager
def open_store(config: Config, *, create: bool = False, degraded_ok: bool = False,
               write: bool = False, busy_s: float = statefile.BUSY_TIMEOUT_S,
               degraded: statefile.StateUnusable | None = None,
               readonly: bool = False) -> Iterator[Context]:
    """degraded_ok: when state.db is unusable, work on a rebuild from the journal and
    the manifests (statefile.py) instead of failing; `degraded` forces that.
    write: make sure state.db's write lock can be had within busy_s.
    readonly: state.db opened mode=ro (status, history, releases, diff, check,
    validate), so anyone who can read the store can run them."""
    store = require_store(config, create=create)
    hooks = state_hooks(store)
    if degraded is not None:
        state = statefile.open_degraded(store, degraded, **hooks)
    else:
        try:
            state = statefile.open_state(store, write=write, busy_s=busy_s,
                                         readonly=readonly, **hooks)
        except statefile.StateUnusable as exc:
            if not degraded_ok:
                raise
            state = statefile.open_degraded(store, exc, **hooks)
    store.manifest_source = state.manifest_doc
    ctx = Context(config, store, state)
    try:
        yield ctx
    finally:
        ctx.close()


def require_store(config: Config, *, create: bool = False) -> Store:
    """The store at config.root (made when create); exit 2 when there is none."""
    store = Store(config.root, config.live_path)
    if create:
        try:
            store.create()
        except OSError as exc:
            if access.is_permission_error(exc):
                raise UsageError(
                    f"{exc.filename}: permission denied: user {access.user_name()} cannot "
                    f"create the store there ({access.GUIDE})") from None
            raise StoreIOError(f"{exc.filename}: cannot create the store: {exc.strerror}"
                               ) from None
    elif not store.exists():
        if store.root.exists() and not os.access(store.root, os.R_OK | os.X_OK):
            raise UsageError(
                f"{config.root}: permission denied: user {access.user_name()} cannot read "
                f"the store ({access.GUIDE})")
        raise UsageError(
            f"{config.root}: no releaser store here; run `releaser init` first"
            + (f" (config: {config.source})" if config.source else ""))
    return store


def file_of(store: Store, release_id: int) -> Path | None:
    for slot in SLOTS:
        path = store.slot_files(slot).get(release_id)
        if path is not None:
            return path
    archived = store.archive_file(release_id)
    return archived if archived.exists() else None


def previous_release(ctx: Context, live_id: int | None,
                     skipped: list[str] | None = None) -> Release | None:
    """The release live before the current one: newest first, skipping bad ones,
    ones no longer on disk, and ones that were themselves rolled back from.

    skipped: gets one line per good release passed over because its file is gone
    (the caller says so: the user expected that one).

    Cost does not grow with history: only a release on disk can be the answer, so
    the walk stops once every on-disk release some live transition names has been
    met (taken or passed over); releases not on disk are judged by status alone."""
    store = ctx.store
    on_disk = on_disk_ids(store)
    pending = ctx.state.named_by_live_transitions(on_disk - {live_id})
    rolled_back: set[int] = set()
    seen: set[int] = set()
    for event in ctx.state.iter_live_transitions():
        if not pending:
            break
        if event.action in ("rollback", "auto-revert") and event.from_release_id is not None:
            rolled_back.add(event.from_release_id)
            pending.discard(event.from_release_id)
        rid = event.release_id
        if rid is None or rid == live_id or rid in seen or rid in rolled_back:
            continue
        seen.add(rid)
        pending.discard(rid)
        if rid in on_disk:
            rel = ctx.state.release(rid)
            if rel is not None and rel.status == "good" and file_of(store, rid) is not None:
                return rel
        elif skipped is not None and ctx.state.release_status(rid) == "good":
            skipped.append(f"skipped release {rid}: its file is no longer in the store "
                           "(slots or archive)")
    return None


def on_disk_ids(store: Store) -> set[int]:
    """Every release with a file in a slot or the archive (keep_releases of them)."""
    return {rid for s in SLOTS for rid in store.slot_files(s)} | store.archived_ids()


def rollback_candidates(ctx: Context, live_id: int | None, limit: int = 5) -> list[Release]:
    """What `rollback --to` accepts, newest first: good, published, on disk, not live."""
    out: list[Release] = []
    # from the files on disk (keep_releases of them), not the whole history
    on_disk = on_disk_ids(ctx.store)
    for rid in sorted(on_disk - {live_id}, reverse=True):
        rel = ctx.state.release(rid)
        if rel is not None and rel.status == "good" and rel.published_at:
            out.append(rel)
            if len(out) >= limit:
                break
    return out


def ensure_live_is_ours(store: Store) -> None:
    live = store.live_path
    if live.is_symlink():
        if store.slot_of(store.live_target()) is None:
            raise UsageError(f"{live}: points outside the store ({os.readlink(live)}); "
                             "run `releaser init` after moving it away")
    elif live.exists():
        raise UsageError(f"{live}: is a regular file, not a releaser symlink; run "
                         "`releaser init` to adopt it as the first release")


def parse_release_id(text: str) -> int:
    """Accept `7`, `r7` or a release file name."""
    t = text.strip()
    rid = release_id_of(t)
    if rid is not None:
        return rid
    if t[:1] in ("r", "R"):
        t = t[1:]
    if not t.isdigit():
        raise UsageError(f"{text!r} is not a release id; see `releaser releases`")
    return int(t)


T = TypeVar("T")


def read_view(config: Config, view: Callable[[Context], T]) -> T:
    """A read-only view (status, history, releases) on state.db, or on its rebuild from
    the journal and the manifests when state.db is unusable or found damaged part-way."""
    try:
        with open_store(config, degraded_ok=True, readonly=True) as ctx:
            return view(ctx)
    except sqlite3.DatabaseError as exc:
        if not statefile.is_damage(exc):
            raise
        why = statefile.StateUnusable(Path(config.root) / "state.db", "damaged",
                                      f"state.db is damaged ({exc})")
        with open_store(config, degraded=why) as ctx:
            return view(ctx)
