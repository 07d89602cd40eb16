"""Publish and rollback: short pipelines over store, gates and state.

publish: preflight source -> lock -> reconcile -> stage into idle slot (copy+hash)
         -> gates on the staged copy -> record -> rename into place -> swap
         -> post-swap check through live_path (swap back on failure) -> record.
rollback: lock -> reconcile -> pick target -> O(1) structural check -> swap -> record.

Every mutating step holds the store lock. Anything interrupted (even by SIGKILL)
is put right by `reconcile`, which every locked operation runs first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import diff as diffing
from . import gates, health, hooks, notify, readers, schema, verify
from .config import Config
from .db import read_header
from .errors import (
    GateFailed,
    NothingToRollback,
    ReleaserError,
    StoreIOError,
    UsageError,
)
from .state import Release, StateDB, utcnow
from .store import (
    SLOTS,
    STAGING_PREFIX,
    FileIdentity,
    ProgressFn,
    SourceChanged,
    SourceUnreadable,
    Staged,
    Store,
    fsync_dir,
    release_id_of,
    sha256_file,
)

log = logging.getLogger("releaser.release")

TESTPOINT_ENV = "RELEASER_TEST_PAUSE_AT"


def testpoint(name: str) -> None:
    """Test-only: pause here when RELEASER_TEST_PAUSE_AT names this step.

    The crash-safety tests use it to SIGKILL the process at each named step.
    """
    if os.environ.get(TESTPOINT_ENV) == name:
        os.write(2, f"releaser-testpoint: {name}\n".encode())
        time.sleep(3600)


# -- context ---------------------------------------------------------------


@dataclass
class Context:
    config: Config
    store: Store
    state: StateDB

    def close(self) -> None:
        self.state.close()


@contextmanager
def open_store(config: Config, *, create: bool = False) -> Iterator[Context]:
    store = Store(config.root, config.live_path)
    if create:
        try:
            store.create()
        except OSError as exc:
            raise StoreIOError(f"{exc.filename}: cannot create the store: {exc.strerror}"
                               ) from None
    elif not store.exists():
        raise UsageError(
            f"{config.root}: no releaser store here; run `releaser init` first"
            + (f" (config: {config.source})" if config.source else ""))
    ctx = Context(config, store, StateDB(store.state_path))
    try:
        yield ctx
    finally:
        ctx.close()


# -- results ---------------------------------------------------------------


@dataclass
class PublishResult:
    outcome: str  # published | rejected | reverted | validated
    source: str
    release_id: int | None = None
    slot: str | None = None
    sha256: str | None = None
    size: int | None = None
    previous_release_id: int | None = None
    # what `releaser rollback` would put back now (None: nothing)
    rollback_target: int | None = None
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    report: gates.GateReport | None = None
    post_swap: gates.GateReport | None = None
    verification: verify.VerifyReport | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    # --dry-run: the candidate against the live release (diff.diff_files)
    diff: dict[str, Any] | None = None
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "dry_run": self.dry_run,
            "release_id": self.release_id,
            "slot": self.slot,
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
            "previous_release_id": self.previous_release_id,
            "rollback_target": self.rollback_target,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "checks": [r.as_dict() for r in self.report.results] if self.report else [],
            "post_swap_checks": (
                [r.as_dict() for r in self.post_swap.results] if self.post_swap else []),
            "verify": self.verification.as_dict() if self.verification else None,
            "timings_ms": self.timings_ms,
            "diff": self.diff,
        }


@dataclass
class RollbackResult:
    action: str
    release_id: int
    from_release_id: int | None
    slot: str
    sha256: str
    reason: str | None
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": "ok",
            "action": self.action,
            "release_id": self.release_id,
            "from_release_id": self.from_release_id,
            "slot": self.slot,
            "sha256": self.sha256,
            "reason": self.reason,
            "duration_ms": self.duration_ms,
        }


class _Timer:
    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = round((now - self._t) * 1000, 3)
        self._t = now


# -- init ------------------------------------------------------------------


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
    with open_store(config, create=True) as ctx, ctx.store.lock("init"):
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
    hot = _hot_journal(live)
    if hot:
        raise UsageError(hot.replace("publish again", "run init again"))
    header = read_header(live)
    report = gates.run_gates(live, config)
    slot = SLOTS[0]
    # a WAL-mode file gets a converted copy (rollback-journal mode, like every release);
    # any other file keeps its inode
    if (header is not None and not header.wal_mode
            and os.stat(live).st_dev == os.stat(store.slot_dir(slot)).st_dev):
        # same filesystem: a hard link keeps the app's inode, no copy needed
        staged_path = store.slot_dir(slot) / f"{STAGING_PREFIX}adopt-{os.getpid()}.db"
        os.link(live, staged_path)
        staged = Staged(path=staged_path, slot=slot, sha256=sha256_file(live),
                        size=live.stat().st_size, method="hardlink")
    else:
        staged = store.stage(live, slot)
    with state.transaction():
        rid = state.add_release(
            sha256=staged.sha256, size=staged.size, source=str(live), note="adopted by init",
            status="good", report=report.as_dict())
    final = store.place(staged, rid)
    os.chmod(final, 0o444)
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


# -- reconcile -------------------------------------------------------------


def reconcile(ctx: Context, *, actor: str) -> list[str]:
    """Put right what an interrupted operation left. Caller holds the lock."""
    store, state = ctx.store, ctx.state
    notes = [f"removed leftover {p}" for p in store.cleanup_leftovers()]
    live_id = store.live_release_id()
    for rel in state.releases(statuses=("good",)):
        if rel.published_at is not None:
            continue
        if rel.id == live_id:
            notes.append(_recover_unrecorded_publish(ctx, rel, actor=actor))
        else:
            with state.transaction():
                state.set_status(rel.id, "aborted", "publish interrupted before the swap")
                state.add_event("publish", actor=actor, outcome="interrupted", release_id=rel.id,
                                reason="publish was interrupted before the swap; live unchanged")
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
    for slot in SLOTS:
        files = store.slot_files(slot)
        if len(files) > 1:
            # the live one, else the newest good published one (an aborted file that
            # came back after a power loss must not push out the previous idle release)
            good = [rid for rid in files
                    if (r := state.release(rid)) and r.status == "good" and r.published_at]
            keep = live_id if live_id in files else max(good or files)
            store.clear_slot(slot, keep)
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
    back_file = _file_of(store, back) if back is not None else None
    if back_file is not None and store.slot_of(back_file) is None:
        back_file = store.restore_from_archive(back, store.idle_slot())
    _swap_back(store, back_file)
    with state.transaction():
        state.set_status(rel.id, "bad", reasons[:2000])
        state.add_event("publish", actor=actor, outcome="reverted", release_id=rel.id,
                        from_release_id=back,
                        reason=f"publish was killed after the swap and fails its post-swap "
                               f"check: {reasons}"[:2000])
    return f"swapped back from interrupted, failing release {rel.id}"


# -- publish ---------------------------------------------------------------


def check_source_path(source: Path) -> None:
    """Path-level checks on a database to read (exit 2): the gates check the content."""
    if source.is_symlink() and not source.exists():
        raise UsageError(f"{source}: is a dangling symlink (points to {os.readlink(source)})")
    if not source.exists():
        raise UsageError(f"{source}: no such file; pass the path of the built database")
    if source.is_dir():
        raise UsageError(f"{source}: is a folder; pass the database file inside it")
    if not os.access(source, os.R_OK):
        raise UsageError(f"{source}: permission denied; make it readable by this user")
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


def _hot_journal(source: Path) -> str | None:
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


def _ensure_live_is_ours(store: Store) -> None:
    live = store.live_path
    if live.is_symlink():
        if store.slot_of(store.live_target()) is None:
            raise UsageError(f"{live}: points outside the store ({os.readlink(live)}); "
                             "run `releaser init` after moving it away")
    elif live.exists():
        raise UsageError(f"{live}: is a regular file, not a releaser symlink; run "
                         "`releaser init` to adopt it as the first release")


def _reject(ctx: Context, result: PublishResult, reasons: list[str], *, actor: str,
            staged: Staged | None, report: gates.GateReport | None, outcome: str = "rejected",
            note: str | None = None) -> None:
    """Record a rejected candidate: a release row (status rejected) and one reject event.

    A --dry-run records nothing: it is a question, not an attempt."""
    result.outcome = "rejected"
    result.reasons = reasons
    if result.dry_run:
        return
    with ctx.state.transaction():
        rid = ctx.state.add_release(
            sha256=staged.sha256 if staged else "", size=staged.size if staged else 0,
            source=result.source, note=note, status="rejected", status_reason=reasons[0],
            report=report.as_dict() if report else None)
        ctx.state.add_event("reject", actor=actor, outcome=outcome, release_id=rid,
                            reason="; ".join(reasons)[:2000])
    result.release_id = rid
    log.info("rejected %s (release %s): %s", result.source, rid, "; ".join(reasons))
    _after_reject(ctx, result, outcome)


def _after_reject(ctx: Context, result: PublishResult, outcome: str) -> None:
    """on_reject hooks and the reject notification (neither changes the outcome)."""
    reason = "; ".join(result.reasons)
    hooks.run_hooks("on_reject", ctx.config.hooks.on_reject, _env(
        ctx, "reject", release_id=result.release_id, sha256=result.sha256, slot=result.slot,
        previous=result.previous_release_id, reason=reason))
    _announce(ctx, "reject", outcome, release_id=result.release_id, sha256=result.sha256,
              slot=result.slot, source=result.source, reasons=result.reasons)


# -- hooks and notifications --------------------------------------------------


def _env(ctx: Context, action: str, *, release_id: int | None, sha256: str | None,
         slot: str | None, previous: int | None = None,
         reason: str | None = None) -> dict[str, str]:
    return hooks.release_env(action=action, live_path=ctx.config.live_path,
                             release_id=release_id, sha256=sha256, slot=slot,
                             previous_release_id=previous, reason=reason)


def _announce(ctx: Context, action: str, outcome: str, *, release_id: int | None,
              sha256: str | None = None, slot: str | None = None, source: str | None = None,
              from_release_id: int | None = None, reasons: list[str] | None = None) -> None:
    """Webhook notification in the background; a failure is logged, never raised."""
    if not ctx.config.notify.webhook:
        return
    try:
        notify.send(ctx.config.notify, notify.payload(
            action, outcome, live_path=str(ctx.config.live_path), reasons=reasons or [],
            release={"id": release_id, "sha256": sha256, "slot": slot, "source": source,
                     "from_release_id": from_release_id},
            live_release_id=ctx.store.live_release_id()))
    except Exception:  # noqa: BLE001 - a notification never changes an outcome
        log.exception("could not send the %s notification", action)


def _before_swap(ctx: Context, result: PublishResult, rid: int, *, actor: str) -> None:
    """Run before_swap hooks; a failure stops the publish with nothing swapped."""
    if not ctx.config.hooks.before_swap:
        return
    env = _env(ctx, "publish", release_id=rid, sha256=result.sha256, slot=result.slot,
               previous=result.previous_release_id)
    failed = hooks.failures("before_swap", hooks.run_hooks(
        "before_swap", ctx.config.hooks.before_swap, env, stop_on_failure=True))
    if not failed:
        return
    # the slot still holds the previous idle release (cleared only after the hooks)
    ctx.store.remove_release_files(rid)
    with ctx.state.transaction():
        ctx.state.set_status(rid, "rejected", failed[0][:2000])
        ctx.state.add_event("reject", actor=actor, outcome="rejected", release_id=rid,
                            reason=failed[0][:2000])
    result.outcome, result.reasons = "rejected", failed
    log.info("rejected %s (release %s): %s", result.source, rid, failed[0])
    _after_reject(ctx, result, "rejected")
    raise GateFailed(f"{ctx.config.live_path}: publish stopped, nothing swapped: {failed[0]}",
                     report=result)


def publish(
    config: Config,
    source: Path,
    *,
    actor: str,
    note: str | None = None,
    dry_run: bool = False,
    strict: bool = False,
    wait_s: float = 0.0,
    progress: ProgressFn | None = None,
    wait_window: bool = True,
    allow_contract: bool = False,
) -> PublishResult:
    """wait_window=False (`--no-wait`): accept after the first good verify round.

    allow_contract (`--allow-contract`): let schema contract changes through."""
    with open_store(config) as ctx:
        source = preflight_source(ctx.store, source)
        result = PublishResult(outcome="rejected", source=str(source.absolute()),
                               dry_run=dry_run)
        with ctx.store.lock(f"publish {source}", wait_s):
            testpoint("locked")
            reconcile(ctx, actor=actor)
            _ensure_live_is_ours(ctx.store)
            _publish_locked(ctx, source, result, actor=actor, note=note, dry_run=dry_run,
                            strict=strict, progress=progress, wait_window=wait_window,
                            allow_contract=allow_contract)
        return result


def _publish_locked(ctx: Context, source: Path, result: PublishResult, *, actor: str,
                    note: str | None, dry_run: bool, strict: bool,
                    progress: ProgressFn | None, wait_window: bool = True,
                    allow_contract: bool = False) -> None:
    store, state, config = ctx.store, ctx.state, ctx.config
    timer = _Timer()
    result.timings_ms = timer.marks
    live_id = store.live_release_id()
    live_rel = state.release(live_id) if live_id is not None else None
    result.previous_release_id = live_id
    slot = store.idle_slot()
    result.slot = slot

    hot = _hot_journal(source)
    if hot:
        _reject(ctx, result, [hot], actor=actor, staged=None, report=None, note=note)
        raise GateFailed(hot, report=result)
    try:
        staged = store.stage(source, slot, progress)
    except (SourceChanged, SourceUnreadable) as exc:
        _reject(ctx, result, [exc.message], actor=actor, staged=None, report=None, note=note)
        failed = GateFailed(exc.message, report=result)
        failed.transient = isinstance(exc, SourceChanged)
        raise failed from None
    except StoreIOError as exc:
        _record_error(ctx, result, exc, actor=actor)
        raise
    timer.mark("stage")
    testpoint("staged")
    result.sha256, result.size = staged.sha256, staged.size
    try:
        if live_rel is not None and staged.sha256 == live_rel.sha256:
            reason = (f"{source}: is identical to the live release {live_rel.id} "
                      f"(sha256 {staged.sha256[:12]}…); nothing to publish")
            _reject(ctx, result, [reason], actor=actor, staged=staged, report=None, note=note)
            raise GateFailed(reason, report=result)
        baseline = live_rel.check_values() if live_rel else None
        report = gates.run_gates(staged.path, config, baseline)
        _add_schema_gates(report, staged.path, store.live_target(), config, allow_contract)
        report.results.extend(_source_sidecar_warnings(source))
        if dry_run and _structural_ok(report):
            result.diff = _diff_vs_live(staged.path, source, ctx, live_id)
        result.report = report
        result.warnings = [r.reason() for r in report.warnings()]
        timer.mark("gates")
        testpoint("gated")
        if not report.passed(strict):
            reasons = [r.reason() for r in report.blocking(strict)]
            _reject(ctx, result, reasons, actor=actor, staged=staged, report=report, note=note)
            raise GateFailed(f"{source}: rejected: {reasons[0]}"
                             + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""),
                             report=result)
        if dry_run:
            result.outcome = "validated"
            return
        with state.transaction():
            rid = state.add_release(
                sha256=staged.sha256, size=staged.size, source=result.source, note=note,
                status="good", report=report.as_dict())
        result.release_id = rid
        try:
            final = store.place(staged, rid)
            ident = FileIdentity.of(final)
            state.set_file_identity(rid, ident.inode, ident.mtime_ns)
        except (OSError, StoreIOError) as exc:
            _abort_placed(ctx, rid, actor=actor, error=exc)
            raise
        timer.mark("place")
        testpoint("placed")
    finally:
        store.discard(staged)  # no-op once renamed into place

    _before_swap(ctx, result, rid, actor=actor)
    try:
        store.clear_slot(slot, keep=rid)
    except (OSError, StoreIOError) as exc:
        _abort_placed(ctx, rid, actor=actor, error=exc)
        raise
    previous_target = store.live_target()
    try:
        store.swap(final)
    except StoreIOError as exc:
        if store.live_target() != final:  # the rename never happened: live is unchanged
            _abort_placed(ctx, rid, actor=actor, error=exc)
            raise
        log.warning("%s", exc.message)  # renamed, only the folder fsync failed: it is live
    timer.mark("swap")
    try:
        testpoint("swapped")
        _check_after_swap(ctx, result, rid, final, previous_target, actor=actor,
                          wait=wait_window)
        timer.mark("verify")
        with state.transaction():
            state.mark_published(rid)
            state.add_event("publish", actor=actor, outcome="published", release_id=rid,
                            from_release_id=live_id, reason=note)
    except GateFailed:
        raise  # the checks failed: already swapped back and recorded
    except BaseException as exc:
        # interrupted (Ctrl-C, SIGTERM, state.db locked...) before the release was
        # checked and recorded: it must not stay live unverified
        _undo_unverified_swap(ctx, rid, previous_target, exc, actor=actor)
        raise
    testpoint("recorded")
    result.outcome = "published"
    target = previous_release(ctx, rid)
    result.rollback_target = target.id if target else None
    log.info("published release %s (%s) to slot %s, sha256 %s", rid, result.source, slot,
             staged.sha256)
    _announce(ctx, "publish", "published", release_id=rid, sha256=staged.sha256, slot=slot,
              source=result.source, from_release_id=live_id, reasons=result.warnings)
    prune_archive(ctx)
    timer.mark("record")


def _check_after_swap(ctx: Context, result: PublishResult, rid: int, final: Path,
                      previous_target: Path | None, *, actor: str, wait: bool) -> None:
    """Post-swap check through live_path, then hooks and the verify window."""
    config = ctx.config
    live_id = result.previous_release_id
    post = _post_swap_check(ctx, final)
    result.post_swap = post
    if not post.passed():
        reasons = [r.reason() for r in post.blocking()]
        _revert_swap(ctx, result, rid, previous_target, "post-swap check failed", reasons,
                     actor=actor)
        log.error("release %s failed its post-swap check, swapped back: %s", rid,
                  "; ".join(reasons))
        _announce(ctx, "auto-revert", "reverted", release_id=rid, sha256=result.sha256,
                  slot=result.slot, source=result.source, from_release_id=live_id,
                  reasons=reasons)
        raise GateFailed(f"{config.live_path}: post-swap check failed, swapped back: "
                         f"{reasons[0]}", report=result)
    _verify_after_swap(ctx, result, rid, previous_target, actor=actor, wait=wait)


def _revert_swap(ctx: Context, result: PublishResult, rid: int, previous_target: Path | None,
                 why: str, reasons: list[str], *, actor: str) -> None:
    """A check after the swap failed: put the previous release back, mark this one bad."""
    _swap_back(ctx.store, previous_target)
    with ctx.state.transaction():
        ctx.state.set_status(rid, "bad", "; ".join(reasons)[:2000])
        ctx.state.add_event("publish", actor=actor, outcome="reverted", release_id=rid,
                            from_release_id=result.previous_release_id,
                            reason=f"{why}: " + "; ".join(reasons)[:2000])
    result.outcome, result.reasons = "reverted", reasons


def _undo_unverified_swap(ctx: Context, rid: int, previous_target: Path | None,
                          exc: BaseException, *, actor: str) -> None:
    """Best effort, on the way out: swap back and record why."""
    back = release_id_of(previous_target) if previous_target else None
    try:
        _swap_back(ctx.store, previous_target)
        with ctx.state.transaction():
            ctx.state.set_status(rid, "aborted", f"interrupted after the swap: {exc!r}"[:2000])
            ctx.state.add_event(
                "publish", actor=actor, outcome="interrupted", release_id=rid,
                from_release_id=back,
                reason=(f"interrupted after the swap, before its checks completed "
                        f"({type(exc).__name__}); swapped back to "
                        f"{'release ' + str(back) if back else 'no live release'}"))
    except BaseException:  # noqa: BLE001 - reconcile finishes the job under the next lock
        log.exception("could not undo the swap of release %s", rid)


def _source_sidecar_warnings(source: Path) -> list[gates.GateResult]:
    """An empty -wal beside the source: nothing is pending (the copy is whole), but
    SQLite deletes it when the last connection closes, so something may still have
    the build open. A warning: `--strict` refuses it."""
    wal = Path(f"{source}-wal")
    if not wal.exists() or wal.stat().st_size > 0:
        return []
    return [gates.GateResult(
        "source_wal", "file", gates.WARN, observed=0, threshold="no -wal beside the source",
        detail=f"{wal} exists (0 bytes): a connection may still have the build open; "
               "publish once the build has closed it, or without --strict")]


def _structural_ok(report: gates.GateReport) -> bool:
    return not any(r.outcome in (gates.FAIL, gates.ERROR)
                   for r in report.results if r.kind in gates.STRUCTURAL)


def _add_schema_gates(report: gates.GateReport, path: Path, live: Path | None, config: Config,
                      allow_contract: bool) -> None:
    """Schema compatibility with the live release and probe plans (issue 6), once the
    file is known to be a sound SQLite database."""
    if _structural_ok(report):
        report.results.extend(schema.schema_gates(path, live, config,
                                                  allow_contract=allow_contract))


def _diff_vs_live(staged: Path, source: Path, ctx: Context, live_id: int | None
                  ) -> dict[str, Any] | None:
    live = ctx.store.live_target()
    if live is None or live_id is None:
        return None
    try:
        return diffing.diff_files(diffing.Side(staged, str(source)),
                                  diffing.Side(live, f"release {live_id} (live)", live_id),
                                  ctx.config)
    except ReleaserError as exc:  # the gate report says why; the diff is only a view
        return {"error": exc.message}


def _verify_after_swap(ctx: Context, result: PublishResult, rid: int,
                       previous_target: Path | None, *, actor: str, wait: bool) -> None:
    """after_swap hooks, then the verify window; a failure swaps back (exit 1)."""
    store, state, config = ctx.store, ctx.state, ctx.config
    live_id = result.previous_release_id
    env = _env(ctx, "publish", release_id=rid, sha256=result.sha256, slot=result.slot,
               previous=live_id)
    result.warnings += hooks.failures("after_swap", hooks.run_hooks(
        "after_swap", config.hooks.after_swap, env))
    if not verify.enabled(config.verify):
        return
    report = verify.run_window(config.verify, env, wait=wait)
    result.verification = report
    if report.ok:
        log.info("release %s verified (%d rounds)", rid, report.rounds)
        return
    reasons = report.reasons
    _revert_swap(ctx, result, rid, previous_target, "verification failed", reasons,
                 actor=actor)
    # info: the CLI prints the one-line error, the watcher logs its own line
    log.info("release %s failed verification, swapped back to %s: %s", rid, live_id,
             "; ".join(reasons))
    # the app was told about the new file (after_swap): tell it about the old one again
    back = state.release(live_id) if live_id is not None else None
    hooks.run_hooks("after_rollback", config.hooks.after_rollback, _env(
        ctx, "auto-revert", release_id=live_id, sha256=back.sha256 if back else None,
        slot=store.live_slot(), previous=rid, reason="; ".join(reasons)))
    _announce(ctx, "auto-revert", "reverted", release_id=rid, sha256=result.sha256,
              slot=result.slot, source=result.source, from_release_id=live_id,
              reasons=reasons)
    raise GateFailed(f"{config.live_path}: verification failed, swapped back to "
                     f"{'release ' + str(live_id) if live_id else 'nothing'}: {reasons[0]}",
                     report=result)


def _post_swap_check(ctx: Context, expected: Path) -> gates.GateReport:
    """Open the release through live_path, as the app does, and check it is the new one."""
    live = ctx.config.live_path
    report = gates.GateReport(path=str(live))
    if Path(os.path.realpath(live)) != Path(os.path.realpath(expected)):
        report.results.append(gates.GateResult(
            "live_target", "file", gates.FAIL, observed=os.path.realpath(live),
            threshold=str(expected), detail=f"{live} does not resolve to {expected}"))
        return report
    return gates.quick_structural_check(live, ctx.config)


def _swap_back(store: Store, previous_target: Path | None) -> None:
    if previous_target is not None:
        store.swap(previous_target)
    else:
        # first release ever: there was no live_path before, so there is none after
        store.live_path.unlink(missing_ok=True)
        fsync_dir(store.live_path.parent)


def _abort_placed(ctx: Context, rid: int, *, actor: str, error: Exception) -> None:
    """Undo a release that failed between its record and the swap: live never saw it."""
    ctx.store.remove_release_files(rid)
    message = getattr(error, "message", None) or str(error)
    with ctx.state.transaction():
        ctx.state.set_status(rid, "aborted", message[:2000])
        ctx.state.add_event("reject", actor=actor, outcome="error", release_id=rid,
                            reason=message[:2000])
    _announce(ctx, "reject", "error", release_id=rid, reasons=[message])


def _record_error(ctx: Context, result: PublishResult, exc: ReleaserError, *,
                  actor: str) -> None:
    """Best effort: an I/O failure (disk full...) still leaves a reject event."""
    try:
        _reject(ctx, result, [exc.message], actor=actor, staged=None, report=None,
                outcome="error")
    except Exception:  # noqa: BLE001 - state.db may be on the same full disk
        pass


def prune_archive(ctx: Context) -> list[int]:
    """Keep the newest keep_releases good releases plus live and idle; bad ones use no place."""
    store, state = ctx.store, ctx.state
    keep = {rid for s in SLOTS for rid in store.slot_files(s)}
    good = [r.id for r in state.releases(statuses=("good",)) if r.published_at]
    keep.update(good[: ctx.config.keep_releases])
    return store.prune_archive(keep)


# -- rollback --------------------------------------------------------------


def previous_release(ctx: Context, live_id: int | None) -> Release | None:
    """The release live before the current one: newest first, skipping bad ones,
    ones no longer on disk, and ones that were themselves rolled back from."""
    rolled_back: set[int] = set()
    seen: set[int] = set()
    for event in ctx.state.live_transitions():
        if event.action in ("rollback", "auto-revert") and event.from_release_id is not None:
            rolled_back.add(event.from_release_id)
        rid = event.release_id
        if rid is None or rid == live_id or rid in seen or rid in rolled_back:
            continue
        seen.add(rid)
        rel = ctx.state.release(rid)
        if rel is not None and rel.status == "good" and _file_of(ctx.store, rid) is not None:
            return rel
    return None


def _file_of(store: Store, release_id: int) -> Path | None:
    for slot in SLOTS:
        path = store.slot_files(slot).get(release_id)
        if path is not None:
            return path
    archived = store.archive_file(release_id)
    return archived if archived.exists() else None


def rollback(
    config: Config,
    *,
    actor: str,
    to: int | None = None,
    reason: str | None = None,
    wait_s: float = 0.0,
) -> RollbackResult:
    with open_store(config) as ctx, ctx.store.lock("rollback", wait_s):
        testpoint("locked")
        reconcile(ctx, actor=actor)
        _ensure_live_is_ours(ctx.store)
        return _rollback_locked(ctx, actor=actor, to=to, reason=reason, action="rollback")


class LiveChanged(ReleaserError):
    """The live release changed between the failed check and taking the lock."""


def revert_live(config: Config, *, actor: str, reasons: list[str],
                wait_s: float = 0.0, expect_live: int | None = None) -> RollbackResult | None:
    """Auto-revert (the monitor): mark the live release bad, go back to the previous good one.

    Returns None, leaving the live release in place, when no good release passes its
    check; never reverts twice away from the same bad release. expect_live: the release
    the failed checks saw; if a publish or rollback replaced it meanwhile, raise
    LiveChanged instead of reverting a release nobody checked.
    """
    with open_store(config) as ctx, ctx.store.lock("auto-revert", wait_s):
        reconcile(ctx, actor=actor)
        live_id = ctx.store.live_release_id()
        if expect_live is not None and live_id != expect_live:
            raise LiveChanged(f"live changed from release {expect_live} to {live_id} "
                              "since the failed check; not reverting")
        if live_id is None:
            return None
        rel = ctx.state.release(live_id)
        reason = "; ".join(reasons)[:2000]
        if rel is not None and rel.status == "good":
            with ctx.state.transaction():
                ctx.state.set_status(live_id, "bad", reason)
        try:
            return _rollback_locked(ctx, actor=actor, to=None, reason=reason,
                                    action="auto-revert")
        except (NothingToRollback, GateFailed) as exc:
            with ctx.state.transaction():
                ctx.state.add_event("auto-revert", actor=actor, outcome="no-target",
                                    release_id=None, from_release_id=live_id,
                                    reason=f"{reason}; kept live: {exc.message}"[:2000])
            _announce(ctx, "auto-revert", "no-target", release_id=live_id,
                      reasons=[*reasons, f"kept live: {exc.message}"])
            return None


def _rollback_locked(ctx: Context, *, actor: str, to: int | None, reason: str | None,
                     action: str) -> RollbackResult:
    t0 = time.perf_counter()
    store, state = ctx.store, ctx.state
    live_id = store.live_release_id()
    if to is None:
        target = previous_release(ctx, live_id)
        if target is None:
            raise NothingToRollback(
                f"{ctx.config.root}: no earlier good release to roll back to"
                + (f" (live is release {live_id})" if live_id else " (nothing is live)"))
    else:
        target = state.release(to)
        if target is None:
            raise UsageError(f"{state.path}: no release {to}; see `releaser history`")
        if target.status != "good":
            raise UsageError(f"release {to} is {target.status}"
                             + (f" ({target.status_reason})" if target.status_reason else "")
                             + "; choose a good release")
        if target.id == live_id:
            raise UsageError(f"release {to} is already live")
        if target.published_at is None:
            raise UsageError(f"release {to} was never published")
    source = _file_of(store, target.id)
    if source is None:
        raise NothingToRollback(
            f"release {target.id} is no longer archived (keep_releases = "
            f"{ctx.config.keep_releases}); publish its build again instead")
    problem = _target_problem(ctx, target, source)
    if problem:
        with state.transaction():
            state.add_event(action, actor=actor, outcome="refused", release_id=target.id,
                            from_release_id=live_id, reason=problem[:2000])
        _announce(ctx, action, "refused", release_id=target.id, sha256=target.sha256,
                  from_release_id=live_id, reasons=[problem])
        raise GateFailed(f"{source}: release {target.id} fails its check, not rolling back: "
                         f"{problem}")
    slot = store.slot_of(source)
    if slot is None:
        slot = store.idle_slot()
        source = store.restore_from_archive(target.id, slot)
        store.clear_slot(slot, keep=target.id)
    testpoint("rollback_ready")
    store.swap(source)
    testpoint("rollback_swapped")
    with state.transaction():
        state.add_event(action, actor=actor, outcome="ok", release_id=target.id,
                        from_release_id=live_id, reason=reason)
    log.info("%s: release %s -> %s (%s)", action, live_id, target.id, reason or "no reason")
    hooks.run_hooks("after_rollback", ctx.config.hooks.after_rollback, _env(
        ctx, action, release_id=target.id, sha256=target.sha256, slot=slot, previous=live_id,
        reason=reason))
    _announce(ctx, action, "ok", release_id=target.id, sha256=target.sha256, slot=slot,
              source=target.source, from_release_id=live_id,
              reasons=[reason] if reason else [])
    return RollbackResult(action=action, release_id=target.id, from_release_id=live_id,
                          slot=slot, sha256=target.sha256, reason=reason,
                          duration_ms=round((time.perf_counter() - t0) * 1000, 3))


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


# -- validate, status, history, check ---------------------------------------


def validate(config: Config, source: Path) -> gates.GateReport:
    """Run the gates on a file without publishing (read-only; no lock needed)."""
    check_source_path(source)
    hot = _hot_journal(source)
    if hot:
        raise GateFailed(hot)
    baseline = None
    live: Path | None = None
    store = Store(config.root, config.live_path)
    if store.exists():
        with open_store(config) as ctx:
            live_id = store.live_release_id()
            live_rel = ctx.state.release(live_id) if live_id else None
            baseline = live_rel.check_values() if live_rel else None
            live = store.live_target() if live_id else None
    report = gates.run_gates(source, config, baseline)
    _add_schema_gates(report, source, live, config, allow_contract=False)
    return report


def _release_view(ctx: Context, rid: int | None, slot: str | None) -> dict[str, Any]:
    rel = ctx.state.release(rid) if rid is not None else None
    return {
        "slot": slot,
        "release_id": rid,
        "sha256": rel.sha256 if rel else None,
        "status": rel.status if rel else None,
        "published_at": rel.published_at if rel else None,
        "note": rel.note if rel else None,
    }


def status(config: Config) -> dict[str, Any]:
    with open_store(config) as ctx:
        store = ctx.store
        live_id = store.live_release_id()
        live_slot = store.live_slot()
        live = _release_view(ctx, live_id, live_slot)
        live["path"] = str(store.live_target()) if store.live_target() else None
        idle_slot = store.idle_slot()
        idle_files = store.slot_files(idle_slot)
        idle_id = max(idle_files) if idle_files else None
        idle = _release_view(ctx, idle_id, idle_slot)
        idle["path"] = str(idle_files[idle_id]) if idle_id is not None else None
        problems = []
        if store.live_path.exists() and not store.live_path.is_symlink():
            problems.append(f"{store.live_path} is a regular file: run `releaser init`")
        elif store.live_path.is_symlink() and live_id is None:
            problems.append(f"{store.live_path} points outside the store")
        elif store.live_path.is_symlink() and not store.live_path.exists():
            problems.append(f"{store.live_path} is a dangling symlink")
        previous = previous_release(ctx, live_id)
        return {
            "live_path": str(config.live_path),
            "root": str(config.root),
            "config": str(config.source) if config.source else None,
            "live": live,
            "idle": idle,
            "rollback_target": previous.id if previous else None,
            "last_check": ctx.state.last_health_check(),
            "lock": store.lock_holder(),
            "archived": sorted(store.archived_ids()),
            "problems": problems,
            # processes still reading a release other than the live one (did not reopen)
            "stale_readers": [r.as_dict() for r in readers.stale_readers(store)],
        }


def history(config: Config, limit: int | None = None) -> list[dict[str, Any]]:
    with open_store(config) as ctx:
        return [e.as_dict() for e in ctx.state.events(limit)]


# -- releases and diff (issue 6) -----------------------------------------------


def releases(config: Config) -> list[dict[str, Any]]:
    """Every recorded release, newest first; status is live/idle for the two slots."""
    with open_store(config) as ctx:
        store = ctx.store
        live_id = store.live_release_id()
        idle_ids = set(store.slot_files(store.idle_slot()))
        out = []
        for rel in ctx.state.releases():
            on_disk = _file_of(store, rel.id) is not None
            shown = "live" if rel.id == live_id else "idle" if rel.id in idle_ids else rel.status
            out.append({
                "release_id": rel.id,
                "status": shown,
                "recorded_status": rel.status,
                "published_at": rel.published_at,
                "created_at": rel.created_at,
                "sha256": rel.sha256 or None,
                "size": rel.size,
                "note": rel.note,
                "source": rel.source,
                "reason": rel.status_reason,
                "on_disk": on_disk,
                # what `rollback --to` accepts
                "rollback_ok": (rel.status == "good" and on_disk and rel.id != live_id
                                and rel.published_at is not None),
            })
        return out


def _side(ctx: Context | None, spec: str) -> diffing.Side:
    """A file path, else a release id (`3`, `r3`) looked up in the store."""
    path = Path(spec)
    if path.exists():
        if path.is_dir():
            raise UsageError(f"{spec}: is a folder; pass a database file or a release id")
        return diffing.Side(path, spec)
    try:
        rid = parse_release_id(spec)
    except UsageError:
        raise UsageError(f"{spec}: no such file, and not a release id (see `releaser "
                         "releases`)") from None
    if ctx is None:
        raise UsageError(f"{spec}: no such file (release ids need a store: run "
                         "`releaser init`)")
    rel = ctx.state.release(rid)
    if rel is None:
        raise UsageError(f"{spec}: no such file or release; see `releaser releases`")
    found = _file_of(ctx.store, rid)
    if found is None:
        raise UsageError(f"{spec}: release {rid} ({rel.status}) is not on disk any more; "
                         "diff its build file instead")
    live_id = ctx.store.live_release_id()
    tag = " (live)" if rid == live_id else (
        " (idle)" if rid in ctx.store.slot_files(ctx.store.idle_slot()) else "")
    return diffing.Side(found, f"release {rid}{tag}", rid)


def diff(config: Config, a: str | None, b: str | None) -> dict[str, Any]:
    """A vs B; B defaults to the live release, A to the idle one (what a rollback does)."""
    store = Store(config.root, config.live_path)
    if a is not None and b is not None and Path(a).exists() and Path(b).exists():
        return diffing.diff_files(_side(None, a), _side(None, b), config)
    with open_store(config) as ctx:
        live_id = store.live_release_id()
        if b is None:
            if live_id is None:
                raise UsageError(f"{config.live_path}: nothing is live; pass two files or "
                                 "release ids")
            b = str(live_id)
        if a is None:
            idle = ctx.store.slot_files(ctx.store.idle_slot())
            if not idle:
                raise UsageError(f"{config.root}: the idle slot is empty; pass a file or a "
                                 "release id to compare with the live release")
            a = str(max(idle))
        return diffing.diff_files(_side(ctx, a), _side(ctx, b), config)


def check(config: Config, *, actor: str, full_hash: bool = False,
          integrity: bool = True) -> health.HealthReport:
    with open_store(config) as ctx:
        report = health.check_live(config, ctx.store, ctx.state, full_hash=full_hash,
                                   integrity=integrity)
        ctx.state.add_health_check(release_id=report.release_id, ok=report.ok,
                                   duration_ms=report.duration_ms, actor=actor,
                                   reasons=report.reasons)
        return report


def parse_release_id(text: str) -> int:
    """Accept `7`, `r7` or a release file name."""
    t = text.strip()
    rid = release_id_of(t)
    if rid is not None:
        return rid
    if t[:1] in ("r", "R"):
        t = t[1:]
    if not t.isdigit():
        raise UsageError(f"{text!r} is not a release id; see `releaser history`")
    return int(t)


__all__ = [
    "Context", "PublishResult", "RollbackResult", "check", "diff", "history", "init",
    "open_store", "parse_release_id", "previous_release", "publish", "reconcile", "releases",
    "revert_live", "rollback", "status", "utcnow", "validate",
]
