"""After the swap: the release checked through live_path, after_swap hooks, the verify
window; on any failure the previous release goes back and the reason is recorded.

Invariant: a release never stays live unverified. A failed check swaps back, then
records the release as bad; an interruption (Ctrl-C, SIGTERM, an error) swaps
back on the way out, and reconcile finishes the job if even that fails.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import gates, hooks, verify
from .announce import announce, hook_env
from .errors import GateFailed
from .results import PublishResult
from .session import Context
from .store import release_id_of

log = logging.getLogger("releaser.postswap")


def check_after_swap(ctx: Context, result: PublishResult, rid: int, final: Path,
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
        announce(ctx, "auto-revert", "reverted", release_id=rid, sha256=result.sha256,
                  slot=result.slot, source=result.source, from_release_id=live_id,
                  reasons=reasons)
        raise GateFailed(f"{config.live_path}: post-swap check failed, swapped back: "
                         f"{reasons[0]}", report=result)
    _verify_after_swap(ctx, result, rid, previous_target, actor=actor, wait=wait)


def _revert_swap(ctx: Context, result: PublishResult, rid: int, previous_target: Path | None,
                 why: str, reasons: list[str], *, actor: str) -> None:
    """A check after the swap failed: put the previous release back, mark this one bad."""
    ctx.store.swap_back(previous_target)
    with ctx.state.transaction():
        ctx.state.set_status(rid, "bad", "; ".join(reasons)[:2000])
        ctx.state.add_event("publish", actor=actor, outcome="reverted", release_id=rid,
                            from_release_id=result.previous_release_id,
                            reason=f"{why}: " + "; ".join(reasons)[:2000])
    result.outcome, result.reasons = "reverted", reasons


def undo_unverified_swap(ctx: Context, rid: int, previous_target: Path | None,
                          exc: BaseException, *, actor: str) -> None:
    """Best effort, on the way out: swap back and record why."""
    back = release_id_of(previous_target) if previous_target else None
    try:
        ctx.store.swap_back(previous_target)
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


def _verify_after_swap(ctx: Context, result: PublishResult, rid: int,
                       previous_target: Path | None, *, actor: str, wait: bool) -> None:
    """after_swap hooks, then the verify window; a failure swaps back (exit 1)."""
    store, state, config = ctx.store, ctx.state, ctx.config
    live_id = result.previous_release_id
    env = hook_env(ctx, "publish", release_id=rid, sha256=result.sha256, slot=result.slot,
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
    hooks.run_hooks("after_rollback", config.hooks.after_rollback, hook_env(
        ctx, "auto-revert", release_id=live_id, sha256=back.sha256 if back else None,
        slot=store.live_slot(), previous=rid, reason="; ".join(reasons)))
    announce(ctx, "auto-revert", "reverted", release_id=rid, sha256=result.sha256,
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
