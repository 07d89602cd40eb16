"""After the swap: the release checked through live_path, after_swap hooks, the verify
window; on any failure the previous release goes back and the reason is recorded.

Invariant: a release never stays live unverified. Every way out before the record
(a failed post-swap check, a failed verify window, a signal, state.db unwritable, a
bug) runs the same undo_swap: swap back, record the release (bad or aborted) with a
truthful event, run the after_rollback hooks (after_swap may have told the app about
the new file), announce it. Signals arriving during the undo are deferred so it is
not cut in half; if state.db cannot take the record, reconcile writes it later from
the SWAPPING mark the release got before its swap.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from . import gates, hooks, signals
from .announce import announce, hook_env
from .config_analysis import enabled as analysis_enabled
from .config_calls import verify_enabled
from .errors import GateFailed
from .progress import phase
from .results import PublishResult
from .session import Context
from .store import release_id_of

# status_reason of a release between the moment its swap starts and its record:
# reconcile then knows it may have been live (see recover.py)
SWAPPING = "swap in progress"

log = logging.getLogger("releaser.postswap")


def check_after_swap(ctx: Context, result: PublishResult, rid: int, final: Path,
                      previous_target: Path | None, *, actor: str, wait: bool,
                      strict: bool = False) -> None:
    """Post-swap check through live_path, then hooks and the verify window."""
    config = ctx.config
    with phase("post-swap check"):
        post = _post_swap_check(ctx, final)
    result.post_swap = post
    if not post.passed():
        reasons = [r.reason() for r in post.blocking()]
        undo_swap(ctx, result, rid, previous_target, "post-swap check failed", reasons,
                  actor=actor)
        log.error("release %s failed its post-swap check, swapped back: %s", rid,
                  "; ".join(reasons))
        raise GateFailed(f"{config.live_path}: post-swap check failed, swapped back: "
                         f"{reasons[0]}", report=result)
    _verify_after_swap(ctx, result, rid, previous_target, actor=actor, wait=wait,
                       strict=strict)


def undo_swap(ctx: Context, result: PublishResult, rid: int, previous_target: Path | None,
              why: str, reasons: list[str], *, actor: str, interrupted: bool = False,
              event_detail: dict[str, Any] | None = None) -> bool:
    """Put the previous release back and say so everywhere. True when recorded.

    A failed check marks the release bad (event `reverted`); an interruption marks it
    aborted (event `interrupted`: nobody said it was bad). A swap back that fails
    raises (live stays on the new release; the next command's reconcile checks it);
    a record that fails is logged in one line and left to reconcile.
    """
    live_id = result.previous_release_id
    back = release_id_of(previous_target) if previous_target else None
    back_text = f"release {back}" if back else "no live release"
    status, outcome = ("aborted", "interrupted") if interrupted else ("bad", "reverted")
    detail = "; ".join(reasons)
    with signals.deferred(raise_after=False):
        ctx.store.swap_back(previous_target)
        recorded = True
        try:
            with ctx.state.transaction():
                ctx.state.set_status(rid, status, f"{why}: {detail}"[:2000])
                ctx.state.add_event("publish", actor=actor, outcome=outcome, release_id=rid,
                                    from_release_id=live_id,
                                    reason=f"{why}: {detail}; swapped back to {back_text}"[
                                        :2000], detail=event_detail)
        except sqlite3.Error as exc:
            recorded = False
            log.error("%s: cannot record that release %s was swapped back to %s (%s); the "
                      "next command records it", ctx.state.path, rid, back_text, exc)
        result.outcome, result.reasons = "reverted", reasons
        # the app may have been told about the new file (after_swap): tell it again
        back_rel = ctx.state.release(live_id) if live_id is not None and recorded else None
        hooks.run_hooks("after_rollback", ctx.config.hooks.after_rollback, hook_env(
            ctx, "auto-revert", release_id=live_id,
            sha256=back_rel.sha256 if back_rel else None, slot=ctx.store.live_slot(),
            previous=rid, reason=f"{why}: {detail}"))
        announce(ctx, "auto-revert", outcome, release_id=rid, sha256=result.sha256,
                 slot=result.slot, source=result.source, from_release_id=live_id,
                 reasons=reasons)
    return recorded


def undo_interrupted_swap(ctx: Context, result: PublishResult, rid: int,
                          previous_target: Path | None, exc: BaseException, *,
                          actor: str) -> bool:
    """On the way out (a signal, state.db unwritable, a bug): the same undo."""
    cause = (f"signal {exc.args[0]}" if isinstance(exc, KeyboardInterrupt) and exc.args
             else "Ctrl-C" if isinstance(exc, KeyboardInterrupt)
             else f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}")
    return undo_swap(ctx, result, rid, previous_target,
                     "interrupted after the swap, before its checks completed", [cause],
                     actor=actor, interrupted=True)


def _verify_after_swap(ctx: Context, result: PublishResult, rid: int,
                       previous_target: Path | None, *, actor: str, wait: bool,
                       strict: bool = False) -> None:
    """after_swap hooks, then the verify window; a failure swaps back (exit 1).

    The [analysis] queries run inside a waited window (window_s > 0; not with
    --no-wait, which leaves them to the monitor's watch)."""
    config = ctx.config
    live_id = result.previous_release_id
    env = hook_env(ctx, "publish", release_id=rid, sha256=result.sha256, slot=result.slot,
               previous=live_id)
    result.warnings += hooks.failures("after_swap", hooks.run_hooks(
        "after_swap", config.hooks.after_swap, env))
    analysing = wait and config.verify.window_s > 0 and analysis_enabled(config.analysis)
    if not analysing and not verify_enabled(config.verify):
        return
    # only with probes or queries: a plain publish (and rollback, which imports this
    # module for undo_swap) loads neither HTTP nor Prometheus
    from . import analysis, verify

    run = None
    if analysing:
        run = analysis.AnalysisRun(
            config.analysis, analysis.context(config, rid),
            on_measure=lambda m: ctx.state.count_analysis(m.name, m.outcome))
    started = time.time()
    with phase("verify window"):
        report = verify.run_window(config.verify, env, wait=wait, analysis_run=run,
                                   strict=strict)
    if run is not None and report.analysis is not None:  # what `releaser status` shows
        from . import analysis_record

        analysis_record.save(config.root, analysis_record.summarize(
            run, report.analysis, who="publish", release_id=rid, since=started,
            until=time.time(), done=True))
    result.verification = report
    result.warnings += report.warnings
    if report.ok:
        log.info("release %s verified (%d rounds)", rid, report.rounds)
        return
    reasons = report.reasons
    undo_swap(ctx, result, rid, previous_target, "verification failed", reasons, actor=actor,
              event_detail=({"analysis": report.analysis.as_dict()}
                            if report.analysis and not report.analysis.ok else None))
    # info: the CLI prints the one-line error, the watcher logs its own line
    log.info("release %s failed verification, swapped back to %s: %s", rid, live_id,
             "; ".join(reasons))
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
