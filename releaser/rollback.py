"""rollback and auto-revert: lock -> reconcile -> pick the target -> O(1) check -> swap
-> record.

The cost depends on neither the release's size nor history's length: the target is
put in a slot by rename (from the archive if needed; whoever owns the file) and checked by identity
(inode, mtime; one hash only if they moved), header, schema and probes, never a
full read. A target failing its check is refused and recorded; live stays.
revert_live (the monitor) never reverts twice away from the same bad release, nor
away from a release its failed check did not see (expect_live).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import gates, health, hooks, signals, statefile
from .announce import announce, hook_env
from .config import Config
from .errors import (
    EXIT_LOCKED,
    GateFailed,
    Interrupted,
    NothingToRollback,
    ReleaserError,
    StoreIOError,
    UsageError,
)
from .recover import reconcile
from .results import RollbackResult
from .session import (
    Context,
    ensure_live_is_ours,
    file_of,
    open_store,
    previous_release,
    require_store,
    rollback_candidates,
)
from .state import Release

log = logging.getLogger("releaser.rollback")


def rollback(
    config: Config,
    *,
    actor: str,
    to: int | None = None,
    reason: str | None = None,
    wait_s: float = 0.0,
    expect_live: int | None = None,
) -> RollbackResult:
    """expect_live: roll back only if this release is live once the lock is held. With
    wait_s > 0 and no expect_live, the release live now is expected: whoever asked to
    roll back meant the release they saw, not one a publish made live while they waited.
    Works degraded when state.db is unusable (_locked_with_fallback)."""
    seen = require_store(config).live_release_id()
    if expect_live is None and wait_s > 0:
        expect_live = seen

    def body(ctx: Context) -> RollbackResult:
        reconcile(ctx, actor=actor)
        ensure_live_is_ours(ctx.store)
        live_id = ctx.store.live_release_id()
        if expect_live is not None and live_id != expect_live:
            if seen == expect_live:
                raise LiveChanged(
                    f"{config.live_path}: live changed from release {expect_live} to "
                    f"{_name(live_id)} while waiting for the lock; nothing rolled back "
                    "(check `releaser status`, then roll back again if still needed)")
            raise LiveChanged(
                f"{config.live_path}: live is {_name(live_id)}, not release "
                f"{expect_live} (--expect-live); nothing rolled back")
        return _rollback_locked(ctx, actor=actor, to=to, reason=reason, action="rollback")

    return _locked_with_fallback(config, "rollback", wait_s, body)


T = TypeVar("T")


def _locked_with_fallback(config: Config, command: str, wait_s: float,
                          body: Callable[[Context], T]) -> T:
    """Run body under the store lock on state.db, or degraded on its rebuild from the
    journal and the manifests when state.db is unusable: busy past ROLLBACK_BUSY_S,
    missing, empty or damaged (damage found part-way switches over too: body changes
    nothing before its swap that a retry would repeat, and after it records through
    _record, which never raises for state.db)."""
    store = require_store(config)
    with store.lock(command, wait_s):
        try:
            with open_store(config, write=True, busy_s=statefile.ROLLBACK_BUSY_S,
                            degraded_ok=True) as ctx:
                return body(ctx)
        except sqlite3.DatabaseError as exc:
            if not statefile.is_damage(exc):
                raise
            why = statefile.StateUnusable(store.state_path, "damaged",
                                          f"state.db is damaged ({exc})")
            with open_store(config, degraded=why) as ctx:
                return body(ctx)


def _record(ctx: Context, action: str, *, mark_bad: int | None = None, **event: Any) -> None:
    """Record a swap already made (and the bad mark of the release it left): in state.db,
    else in the journal and the manifests alone (state.db failed after the probe)."""
    try:
        with ctx.state.transaction():
            if mark_bad is not None:
                ctx.state.set_status(mark_bad, "bad", event.get("reason"))
            ctx.state.add_event(action, **event)
    except sqlite3.Error:
        statefile.journal_only_event(ctx.store, action, mark_bad=mark_bad, **event)


def _name(release_id: int | None) -> str:
    return f"release {release_id}" if release_id is not None else "no release"


class LiveChanged(ReleaserError):
    """Live is not the release the caller expected (another operation changed it)."""

    exit_code = EXIT_LOCKED


def revert_live(config: Config, *, actor: str, reasons: list[str],
                wait_s: float = 0.0, expect_live: int | None = None,
                detail: dict[str, Any] | None = None) -> RollbackResult | None:
    """Auto-revert (the monitor): mark the live release bad, go back to the previous good one.

    Returns None, leaving the live release in place, when no good release passes its
    check; never reverts twice away from the same bad release. expect_live: the release
    the failed checks saw; if a publish or rollback replaced it meanwhile, raise
    LiveChanged instead of reverting a release nobody checked. detail goes into the
    event (e.g. the analysis: queries, observed values, thresholds).
    """
    def body(ctx: Context) -> RollbackResult | None:
        reconcile(ctx, actor=actor)
        live_id = ctx.store.live_release_id()
        if expect_live is not None and live_id != expect_live:
            raise LiveChanged(f"live changed from release {expect_live} to {live_id} "
                              "since the failed check; not reverting")
        if live_id is None:
            return None
        rel = ctx.state.release(live_id)
        reason = "; ".join(reasons)[:2000]
        mark_bad = rel is not None and rel.status == "good"
        try:
            # marked bad in the same transaction as the event, once the swap happened
            return _rollback_locked(ctx, actor=actor, to=None, reason=reason,
                                    action="auto-revert", mark_bad=mark_bad,
                                    detail=detail)
        except (NothingToRollback, GateFailed) as exc:
            with ctx.state.transaction():
                if mark_bad:
                    ctx.state.set_status(live_id, "bad", reason)
                ctx.state.add_event("auto-revert", actor=actor, outcome="no-target",
                                    release_id=None, from_release_id=live_id,
                                    reason=f"{reason}; kept live: {exc.message}"[:2000],
                                    detail=detail)
            announce(ctx, "auto-revert", "no-target", release_id=live_id,
                      reasons=[*reasons, f"kept live: {exc.message}"])
            return None

    return _locked_with_fallback(config, "auto-revert", wait_s, body)


def record_failed_revert(config: Config, *, actor: str, from_release_id: int,
                         reasons: list[str], error: str) -> bool:
    """Record (and announce) an auto-revert that failed: nothing was swapped.

    An `auto-revert`/`failed` event, from_release_id set, with the check's reasons and
    the error; not a settled attempt (state.auto_reverted_from ignores it), so the
    monitor tries again. Without the store lock: it is only an event, like a health
    check, and the lock may be what failed. False when it cannot be written.
    """
    reason = f"{'; '.join(reasons)}; the revert failed: {error}"[:2000]
    try:
        with open_store(config) as ctx:
            with ctx.state.transaction():
                ctx.state.add_event("auto-revert", actor=actor, outcome="failed",
                                    release_id=None, from_release_id=from_release_id,
                                    reason=reason)
            announce(ctx, "auto-revert", "failed", release_id=from_release_id,
                     from_release_id=from_release_id,
                     reasons=[*reasons, f"the revert failed: {error}"])
    except Exception as exc:  # noqa: BLE001 - the caller logs the failure either way
        log.warning("cannot record the failed auto-revert in state.db: %s", exc)
        return False
    return True


def _rollback_locked(ctx: Context, *, actor: str, to: int | None, reason: str | None,
                     action: str, mark_bad: bool = False,
                     detail: dict[str, Any] | None = None) -> RollbackResult:
    t0 = time.perf_counter()
    store, state = ctx.store, ctx.state
    live_id = store.live_release_id()
    skipped: list[str] = []
    if to is None:
        target = previous_release(ctx, live_id, skipped)
        for line in skipped:
            log.warning("%s: %s", action, line)
        if target is None:
            raise _nothing_older(ctx, live_id)
    else:
        target = state.release(to)
        if target is None:
            raise UsageError(f"{state.path}: no release {to}; see `releaser releases`")
        if target.status != "good":
            raise UsageError(f"release {to} is {target.status}"
                             + (f" ({target.status_reason})" if target.status_reason else "")
                             + "; choose a good release")
        if target.id == live_id:
            raise UsageError(f"release {to} is already live")
        if target.published_at is None:
            raise UsageError(f"release {to} was never published")
    source = file_of(store, target.id)
    if source is None:
        raise NothingToRollback(
            f"release {target.id} is no longer archived (keep_releases = "
            f"{ctx.config.keep_releases}); publish its build again instead")
    problem = _target_problem(ctx, target, source)
    if problem:
        with state.transaction():
            state.add_event(action, actor=actor, outcome="refused", release_id=target.id,
                            from_release_id=live_id, reason=problem[:2000])
        announce(ctx, action, "refused", release_id=target.id, sha256=target.sha256,
                  from_release_id=live_id, reasons=[problem])
        raise GateFailed(f"{source}: release {target.id} fails its check, not rolling back: "
                         f"{problem}")
    slot = store.slot_of(source)
    if slot is None:
        # renamed in beside the idle release, which stays until the swap succeeded
        slot = store.idle_slot()
        source = store.restore_from_archive(target.id, slot)
    signal_name = None
    try:
        # a signal during the swap or its record is raised once both are whole
        with signals.deferred():
            try:
                store.swap(source)
            except StoreIOError as exc:
                if not store.points_at(source):
                    raise  # the rename never happened: live untouched
                # renamed, only the folder fsync failed: it is live, record it
                log.warning("%s; release %s is live", exc.message, target.id)
            _record(ctx, action, mark_bad=live_id if mark_bad else None, actor=actor,
                    outcome="ok", release_id=target.id, from_release_id=live_id,
                    reason=reason, detail=detail)
    except KeyboardInterrupt as exc:
        signal_name = exc.args[0] if exc.args else "SIGINT"
    if store.points_at(source):
        try:  # the previous idle release leaves the slot only now the swap succeeded
            store.clear_slot(slot, keep=target.id)
        except StoreIOError as exc:  # done; reconcile retries under the next lock
            log.warning("%s", exc.message)
    # an auto-revert is logged once, at warning, by the monitor that decided it
    log.log(logging.INFO if action == "rollback" else logging.DEBUG,
            "%s: release %s -> %s (%s)", action, live_id, target.id, reason or "no reason")
    try:
        # the app hears of the swap even when a signal came during it
        hooks.run_hooks("after_rollback", ctx.config.hooks.after_rollback, hook_env(
            ctx, action, release_id=target.id, sha256=target.sha256, slot=slot,
            previous=live_id, reason=reason))
        announce(ctx, action, "ok", release_id=target.id, sha256=target.sha256, slot=slot,
                 source=target.source, from_release_id=live_id,
                 reasons=[reason] if reason else [])
    except KeyboardInterrupt as exc:
        signal_name = exc.args[0] if exc.args else "SIGINT"
    if signal_name is not None:
        raise Interrupted(f"{ctx.config.live_path}: interrupted ({signal_name}) after the "
                          f"swap: release {target.id} is live, recorded in history")
    return RollbackResult(action=action, release_id=target.id, from_release_id=live_id,
                          slot=slot, sha256=target.sha256, reason=reason,
                          duration_ms=round((time.perf_counter() - t0) * 1000, 3),
                          skipped=skipped)


def _nothing_older(ctx: Context, live_id: int | None) -> NothingToRollback:
    """Exit 4, naming what `rollback --to` accepts instead (the CLI adds the command)."""
    accepted = rollback_candidates(ctx, live_id)
    idle = set(ctx.store.slot_files(ctx.store.idle_slot()))
    message = (f"{ctx.config.root}: nothing older to roll back to: every earlier release is "
               "bad, no longer on disk, or was rolled back from"
               + (f" (live is release {live_id})" if live_id else " (nothing is live)"))
    if accepted:
        message += "; `rollback --to` accepts " + ", ".join(
            f"release {r.id} (published {r.published_at}, {'idle' if r.id in idle else 'archived'}"
            f", {r.status})" for r in accepted)
    err = NothingToRollback(message)
    err.accepted = [r.id for r in accepted]
    return err


def _target_problem(ctx: Context, target: Release, path: Path) -> str | None:
    """O(1) structural check: same file as recorded, whole header, schema, probes once.

    (A file whose inode/mtime moved, as after a restore from backup, costs one hash.)"""
    problem = health.identity_problem(path, target, ctx.state)
    if problem:
        return f"not the file that was released ({problem})"
    report = gates.quick_structural_check(path, ctx.config)
    if not report.passed():
        return "; ".join(r.reason() for r in report.blocking())
    return None
