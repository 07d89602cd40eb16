"""Putting the store right: init (create; adopt a file already at live_path) and reconcile.

reconcile runs first under every lock. It removes staging leftovers, aborts a
publish interrupted before its swap, checks and records (or swaps back from) one
killed after its swap, records a rollback killed after its swap, and leaves one
release file per slot. Afterwards the symlink, the slots and state.db agree.
The caller of reconcile holds the store lock; init takes it itself.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import access, gates, statefile
from .config import Config
from .db import read_header
from .errors import UsageError
from .postswap import SWAPPING
from .preflight import hot_journal
from .session import Context, file_of, open_store
from .state import Release
from .store import SLOTS, STAGING_PREFIX, FileIdentity

log = logging.getLogger("releaser.recover")


def init(config: Config, *, actor: str) -> dict[str, Any]:
    """Create the store; adopt an existing regular file at live_path as release 1.

    Adoption hard-links the file into a slot (same inode, so a running app is
    undisturbed) and then replaces live_path by a symlink in one rename.
    """
    live = config.live_path
    if live.is_symlink() or not live.exists():
        pass
    elif live.is_dir():
        raise UsageError(f"{live}: live_path is a folder; it must be a file or not exist")
    with ExitStack() as stack:
        try:
            ctx = stack.enter_context(open_store(config, create=True))
        except statefile.StateBusy:
            raise
        except statefile.StateUnusable as exc:
            # never a new, empty record over releases that exist: it would reuse their ids
            raise UsageError(f"{exc.message} (init does not rebuild a lost record; "
                             "rollback and status work meanwhile)") from None
        stack.enter_context(ctx.store.lock("init"))
        reconcile(ctx, actor=actor)
        store, state = ctx.store, ctx.state
        if live.is_symlink():
            rid = store.live_release_id()
            if rid is None or state.release(rid) is None:
                raise UsageError(
                    f"{live}: is a symlink to {os.readlink(live)}, which releaser does not "
                    "manage; move it away or point live_path elsewhere")
            return {"outcome": "already-initialised", "release_id": rid,
                    "root": str(config.root), "live_path": str(live)}
        if not live.exists():
            return {"outcome": "initialised", "release_id": None,
                    "root": str(config.root), "live_path": str(live)}
        return _adopt(ctx, actor)


def _adopt(ctx: Context, actor: str) -> dict[str, Any]:
    store, state, config = ctx.store, ctx.state, ctx.config
    live = config.live_path
    wal = Path(f"{live}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise UsageError(
            f"{live}: has a pending write-ahead log ({wal}); stop its writer or run "
            f"`sqlite3 {live} 'PRAGMA wal_checkpoint(TRUNCATE)'`, then run init again")
    hot = hot_journal(live)
    if hot:
        raise UsageError(hot.replace("publish again", "run init again"))
    header = read_header(live)
    report = gates.run_gates(live, config)
    slot = SLOTS[0]
    # a WAL-mode file gets a converted copy (rollback-journal mode, like every release);
    # any other file keeps its inode
    staged = None
    if (header is not None and not header.wal_mode
            and os.stat(live).st_dev == os.stat(store.slot_dir(slot)).st_dev):
        # same filesystem: a hard link keeps the app's inode, no copy needed
        staged_path = store.slot_dir(slot) / f"{STAGING_PREFIX}adopt-{os.getpid()}.db"
        try:
            os.link(live, staged_path)
        except PermissionError:
            pass  # another user's file (fs.protected_hardlinks): copy it instead
        else:
            from .staging import Staged, sha256_file  # adopting (init) only

            staged = Staged(path=staged_path, slot=slot, sha256=sha256_file(live),
                            size=live.stat().st_size, method="hardlink")
    if staged is None:
        staged = store.stage(live, slot)
    with state.transaction():
        rid = state.add_release(
            sha256=staged.sha256, size=staged.size, source=str(live), note="adopted by init",
            status="good", report=report.as_dict())
    final = store.place(staged, rid)
    access.set_mode(final, access.RELEASE_MODE)
    ident = FileIdentity.of(final)
    store.swap(final)
    with state.transaction():
        state.set_file_identity(rid, ident.inode, ident.mtime_ns)
        state.mark_published(rid)
        state.add_event("init", actor=actor, outcome="ok", release_id=rid,
                        reason=f"adopted existing {live}")
    return {"outcome": "adopted", "release_id": rid, "root": str(config.root),
            "live_path": str(live), "sha256": staged.sha256,
            "warnings": [r.reason() for r in report.blocking()]}


def reconcile(ctx: Context, *, actor: str) -> list[str]:
    """Put right what an interrupted operation left. Caller holds the lock.

    Degraded (state.db unusable) only leftovers are removed: the rest decides from the
    record, and a record rebuilt from a journal that may be cut short must not
    abort or swap anything; `fsck --repair` runs the whole of it once state.db is back."""
    store, state = ctx.store, ctx.state
    notes = [f"removed leftover {p}" for p in store.cleanup_leftovers()]
    if ctx.degraded:
        for note in notes:
            log.warning("reconcile: %s", note)
        return notes
    # journal lines written while state.db was unusable come first, in their order
    notes += statefile.sync(state, store)
    live_id = store.live_release_id()
    for rel in state.unpublished_good():
        if rel.id == live_id:
            notes.append(_recover_unrecorded_publish(ctx, rel, actor=actor))
        else:
            if rel.status_reason == SWAPPING:
                # it may have been live: its undo swapped back but could not record it
                live_text = f"release {live_id}" if live_id is not None else "nothing"
                why = ("publish was interrupted during or after its swap, before its "
                       f"record; it is not live now (live is {live_text})")
            else:
                why = "publish was interrupted before the swap; live unchanged"
            with state.transaction():
                state.set_status(rel.id, "aborted", why)
                state.add_event("publish", actor=actor, outcome="interrupted", release_id=rel.id,
                                reason=why)
            store.remove_release_files(rel.id)
            notes.append(f"aborted interrupted publish of release {rel.id}")
    transitions = state.live_transitions(limit=1)
    if live_id is not None and transitions and transitions[0].release_id != live_id:
        # a rollback (or auto-revert) swapped but was killed before writing its event:
        # record it, so history and the next rollback target agree with the symlink
        rel = state.release(live_id)
        if rel is not None and rel.published_at is not None:
            before = state.release(transitions[0].release_id or 0)
            action = "auto-revert" if before is not None and before.status == "bad" else (
                "rollback")
            with state.transaction():
                state.add_event(action, actor=actor, outcome="recovered", release_id=live_id,
                                from_release_id=transitions[0].release_id,
                                reason=f"{action} was interrupted after the swap; recorded now")
            notes.append(f"recorded interrupted {action} to release {live_id}")
    notes.extend(_explain_bad_live(ctx, store.live_release_id(), actor=actor))
    for slot in SLOTS:
        files = store.slot_files(slot)
        if len(files) > 1:
            # the live one, else the newest good published one (an aborted file that
            # came back after a power loss must not push out the previous idle release)
            good = [rid for rid in files
                    if (r := state.release(rid)) and r.status == "good" and r.published_at]
            keep = live_id if live_id in files else max(good or files)
            for rid in files:
                if rid in good and rid != keep:
                    store.move_release(rid, store.archive_dir)
                elif rid != keep:  # never published: nothing to keep
                    store.remove_release_files(rid)
    for note in notes:
        log.warning("reconcile: %s", note)
    return notes


def _recover_unrecorded_publish(ctx: Context, rel: Release, *, actor: str) -> str:
    """A publish killed (SIGKILL, power loss) after its swap, before the record.

    The symlink is the truth, but the release was never checked through it: run the
    O(1) post-swap check now; keep and record it if it passes, else swap back.
    """
    store, state = ctx.store, ctx.state
    previous = next(iter(state.live_transitions(limit=1)), None)
    post = gates.quick_structural_check(store.live_path, ctx.config)
    if post.passed():
        with state.transaction():
            state.mark_published(rel.id)
            state.add_event(
                "publish", actor=actor, outcome="recovered", release_id=rel.id,
                from_release_id=previous.release_id if previous else None,
                reason="publish was killed after the swap; its post-swap check passes now, "
                       "so it stays live (no verify window ran); recorded now")
        return f"recorded interrupted publish of release {rel.id}"
    reasons = "; ".join(r.reason() for r in post.blocking())
    back = previous.release_id if previous else None
    back_file = file_of(store, back) if back is not None else None
    if back_file is not None and store.slot_of(back_file) is None:
        back_file = store.restore_from_archive(back, store.idle_slot())
    store.swap_back(back_file)
    with state.transaction():
        state.set_status(rel.id, "bad", reasons[:2000])
        state.add_event("publish", actor=actor, outcome="reverted", release_id=rel.id,
                        from_release_id=back,
                        reason=f"publish was killed after the swap and fails its post-swap "
                               f"check: {reasons}"[:2000])
    return f"swapped back from interrupted, failing release {rel.id}"


def _explain_bad_live(ctx: Context, live_id: int | None, *, actor: str) -> list[str]:
    """The live release marked bad with no auto-revert event from it: a revert marked it
    and then failed to swap (releases before issue 11 did, in that order). Nothing was
    reverted, so it is good again as far as the record goes; the monitor decides anew."""
    state = ctx.state
    rel = state.release(live_id) if live_id is not None else None
    if rel is None or rel.status != "bad" or state.auto_reverted_from(rel.id):
        return []
    why = (f"release {rel.id} is live but was marked bad ({rel.status_reason or 'no reason'}) "
           "with no revert recorded: the revert never swapped; marked good again")
    with state.transaction():
        state.set_status(rel.id, "good", None)
        # no from_release_id: this is not an attempt, the monitor may still revert it
        state.add_event("auto-revert", actor=actor, outcome="failed", release_id=rel.id,
                        reason=why[:2000])
    return [why]
