"""publish: preflight -> lock -> reconcile -> stage (staging.py) -> gates on the staged
copy -> record -> place -> before_swap hooks -> swap -> checks after the swap
(postswap.py) -> record -> prune the archive.

Invariants: the gates read the staged copy, never the source; a release gets its
row (status good) before its file gets a release name, and is marked published
only once its checks through live_path passed; a failure before the swap removes
its files and leaves live untouched; every refusal is recorded (a release row with
status rejected and one reject event), except under --dry-run, which records nothing.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from . import gates, health, hooks, signals
from .announce import announce, hook_env
from .config import Config
from .config_analysis import enabled as analysis_enabled
from .errors import GateFailed, Interrupted, ReleaserError, StoreIOError
from .postswap import SWAPPING, check_after_swap, undo_interrupted_swap
from .preflight import hot_journal, preflight_source, source_sidecar_warnings
from .progress import phase
from .recover import reconcile
from .results import PublishResult
from .retention import compact_history, prune_archive
from .schema_gates import add_schema_gates
from .session import Context, ensure_live_is_ours, open_store, previous_release
from .staging import ProgressFn, SourceChanged, SourceUnreadable, Staged, sha256_file
from .state import Release
from .store import FileIdentity

log = logging.getLogger("releaser.publish")


class _Timer:
    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.marks[name] = round((now - self._t) * 1000, 3)
        self._t = now


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
        if analysis_enabled(config.analysis):
            # the HTTP client loads only here (and in the verify window) when used
            from . import analysis

            # a query Prometheus rejects is a config error before anything changes
            analysis.preflight(config, ctx.store.live_release_id())
        result = PublishResult(outcome="rejected", source=str(source.absolute()),
                               dry_run=dry_run)
        with ctx.store.lock(f"publish {source}", wait_s):
            reconcile(ctx, actor=actor)
            ensure_live_is_ours(ctx.store)
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

    hot = hot_journal(source)
    if hot:
        _reject(ctx, result, [hot], actor=actor, staged=None, report=None, note=note)
        raise GateFailed(hot, report=result)
    try:
        with phase("staging", total=_size(source)) as advance:
            staged = store.stage(source, slot, _both(progress, advance))
    except (SourceChanged, SourceUnreadable) as exc:
        _reject(ctx, result, [exc.message], actor=actor, staged=None, report=None, note=note)
        failed = GateFailed(exc.message, report=result)
        failed.transient = isinstance(exc, SourceChanged)
        raise failed from None
    except StoreIOError as exc:
        _record_error(ctx, result, exc, actor=actor)
        raise
    timer.mark("stage")
    result.sha256, result.size = staged.sha256, staged.size
    try:
        repairs: str | None = None
        if live_rel is not None and staged.sha256 == live_rel.sha256:
            repairs = _live_damage(ctx, live_rel)
            if repairs is None:
                # already live and intact: success with nothing to do (no id, no event)
                result.outcome, result.release_id = "unchanged", live_rel.id
                result.reasons = [f"{source}: is identical to the live release "
                                  f"{live_rel.id} (sha256 {staged.sha256[:12]}…)"]
                log.info("unchanged: %s", result.reasons[0])
                return
            result.warnings.append(f"republishing the build of live release {live_rel.id}, "
                                   f"whose file no longer matches its record: {repairs}")
        baseline = live_rel.check_values() if live_rel else None
        with phase("gates"):
            report = gates.run_gates(staged.path, config, baseline)
            with phase("schema"):
                add_schema_gates(report, staged.path, store.live_target(), config,
                                 allow_contract)
        report.results.extend(source_sidecar_warnings(source))
        if dry_run and gates.structural_ok(report):
            result.diff = _diff_vs_live(staged.path, source, ctx, live_id)
        result.report = report
        result.warnings += [r.reason() for r in report.warnings()]
        timer.mark("gates")
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
    finally:
        store.discard(staged)  # no-op once renamed into place

    try:
        _before_swap(ctx, result, rid, actor=actor)
    except KeyboardInterrupt:
        _abort_interrupted(ctx, rid, actor=actor)
        raise
    # the slot's previous release stays beside the new one until the swap succeeded
    previous_target = store.live_target()
    with state.transaction():  # reconcile's clue that this release may have been live
        state.set_status(rid, "good", SWAPPING)
    aborted = False
    try:
        with signals.deferred():  # a signal during the swap is raised once it is whole
            try:
                with phase("swap"):
                    store.swap(final)
            except StoreIOError as exc:
                if not store.points_at(final):  # the rename never happened: live unchanged
                    aborted = True
                    _abort_placed(ctx, rid, actor=actor, error=exc)
                    raise
                log.warning("%s", exc.message)  # renamed, only the folder fsync failed
        timer.mark("swap")
        check_after_swap(ctx, result, rid, final, previous_target, actor=actor,
                         wait=wait_window, strict=strict)
        timer.mark("verify")
        with state.transaction():
            state.mark_published(rid)
            state.set_status(rid, "good", None)
            state.add_event("publish", actor=actor, outcome="published", release_id=rid,
                            from_release_id=live_id, reason=note)
    except GateFailed:
        raise  # the checks failed: already swapped back and recorded
    except BaseException as exc:
        if aborted:
            raise
        if not store.points_at(final):
            # interrupted before the rename took effect: live never saw it
            _abort_placed(ctx, rid, actor=actor, error=exc, outcome="interrupted")
            raise
        # interrupted (Ctrl-C, SIGTERM, state.db unwritable, a bug) before the release
        # was checked and recorded: it must not stay live unverified
        undo_interrupted_swap(ctx, result, rid, previous_target, exc, actor=actor)
        if isinstance(exc, KeyboardInterrupt | ReleaserError):
            raise
        back = f"release {live_id}" if live_id is not None else "no live release"
        raise Interrupted(
            f"{state.path if isinstance(exc, sqlite3.Error) else config.live_path}: "
            f"interrupted after the swap ({type(exc).__name__}: {exc}); swapped back to "
            f"{back}") from None
    result.outcome = "published"
    try:
        store.clear_slot(slot, keep=rid)  # the previous idle release: into the archive
    except StoreIOError as exc:  # published; reconcile retries under the next lock
        log.warning("%s", exc.message)
    if repairs is not None and live_rel is not None:
        with state.transaction():
            state.set_status(live_rel.id, "bad", f"its file no longer matches its record "
                             f"({repairs}); release {rid} republished the same build"[:2000])
    target = previous_release(ctx, rid)
    result.rollback_target = target.id if target else None
    log.info("published release %s (%s) to slot %s, sha256 %s", rid, result.source, slot,
             staged.sha256)
    announce(ctx, "publish", "published", release_id=rid, sha256=staged.sha256, slot=slot,
              source=result.source, from_release_id=live_id, reasons=result.warnings)
    prune_archive(ctx)
    compact_history(ctx)
    timer.mark("record")


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _both(first: ProgressFn | None, second: ProgressFn) -> ProgressFn:
    if first is None:
        return second

    def both(n: int) -> None:
        first(n)
        second(n)
    return both


def _live_damage(ctx: Context, live_rel: Release) -> str | None:
    """Why the live file is not live_rel's recorded file any more, or None when it is.

    Republishing a live release's own build is then a repair, not a no-op."""
    target = ctx.store.live_target()
    if target is None or not target.exists():
        return f"{ctx.config.live_path} resolves to no file"
    problem = health.identity_problem(target, live_rel, ctx.state)
    if problem is None and sha256_file(target) != live_rel.sha256:
        problem = "its sha256 differs from the record"
    return problem


def _reject(ctx: Context, result: PublishResult, reasons: list[str], *, actor: str,
            staged: Staged | None, report: gates.GateReport | None, outcome: str = "rejected",
            note: str | None = None) -> None:
    """Record a rejected candidate: a release row (status rejected) and one reject event.

    A --dry-run records nothing: it is a question, not an attempt."""
    # a signal during a gate surfaces as a SQLite "interrupted" error: not a reject
    signals.raise_if_requested()
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
    hooks.run_hooks("on_reject", ctx.config.hooks.on_reject, hook_env(
        ctx, "reject", release_id=result.release_id, sha256=result.sha256, slot=result.slot,
        previous=result.previous_release_id, reason=reason))
    announce(ctx, "reject", outcome, release_id=result.release_id, sha256=result.sha256,
              slot=result.slot, source=result.source, reasons=result.reasons)


def _before_swap(ctx: Context, result: PublishResult, rid: int, *, actor: str) -> None:
    """Run before_swap hooks; a failure stops the publish with nothing swapped."""
    if not ctx.config.hooks.before_swap:
        return
    env = hook_env(ctx, "publish", release_id=rid, sha256=result.sha256, slot=result.slot,
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


def _abort_placed(ctx: Context, rid: int, *, actor: str, error: BaseException,
                  outcome: str = "error") -> None:
    """Undo a release that failed between its record and the swap: live never saw it."""
    ctx.store.remove_release_files(rid)
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    if outcome == "interrupted":
        message = f"interrupted before the swap ({message}); live unchanged"
    with signals.deferred(raise_after=False), ctx.state.transaction():
        ctx.state.set_status(rid, "aborted", message[:2000])
        if outcome == "interrupted":
            ctx.state.add_event("publish", actor=actor, outcome="interrupted", release_id=rid,
                                reason=message[:2000])
        else:
            ctx.state.add_event("reject", actor=actor, outcome="error", release_id=rid,
                                reason=message[:2000])
    announce(ctx, "reject", outcome, release_id=rid, reasons=[message])


def _abort_interrupted(ctx: Context, rid: int, *, actor: str) -> None:
    """Interrupted before the swap (a before_swap hook...): live never saw the release.
    Best effort; reconcile does the same under the next lock if this is cut short too."""
    try:
        ctx.store.remove_release_files(rid)
        with ctx.state.transaction():
            ctx.state.set_status(rid, "aborted", "publish interrupted before the swap")
            ctx.state.add_event("publish", actor=actor, outcome="interrupted", release_id=rid,
                                reason="publish was interrupted before the swap; live "
                                       "unchanged")
    except Exception:  # noqa: BLE001 - reconcile finishes the job
        log.exception("could not record the interrupted publish of release %s", rid)


def _record_error(ctx: Context, result: PublishResult, exc: ReleaserError, *,
                  actor: str) -> None:
    """Best effort: an I/O failure (disk full...) still leaves a reject event."""
    try:
        _reject(ctx, result, [exc.message], actor=actor, staged=None, report=None,
                outcome="error")
    except Exception:  # noqa: BLE001 - state.db may be on the same full disk
        pass


def _diff_vs_live(staged: Path, source: Path, ctx: Context, live_id: int | None
                  ) -> dict[str, Any] | None:
    from . import diff as diffing  # --dry-run only

    live = ctx.store.live_target()
    if live is None or live_id is None:
        return None
    try:
        return diffing.diff_files(diffing.Side(staged, str(source)),
                                  diffing.Side(live, f"release {live_id} (live)", live_id),
                                  ctx.config)
    except ReleaserError as exc:  # the gate report says why; the diff is only a view
        return {"error": exc.message}
