"""Read-only verbs: validate, status, history, releases, diff, check.

None takes the store lock, changes a release or moves the symlink; `check` only
appends its result to state.db's health log, and only when this user may write it.
All open state.db read-only (mode=ro), so anyone who can read the store runs them
(README "Users and permissions"). None loads more rows than it shows. validate runs the gates on the file
it is given (no copy), against the live release's baseline when a store exists.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import analysis_record, health, readers, statefile
from .config import Config
from .errors import GateFailed, UsageError
from .preflight import check_source_path, hot_journal
from .session import (
    Context,
    file_of,
    on_disk_ids,
    open_store,
    parse_release_id,
    previous_release,
    read_view,
    rollback_candidates,
)
from .store import Store

if TYPE_CHECKING:
    from . import diff as diffing
    from .gate_result import GateReport

log = logging.getLogger("releaser.views")


def validate(config: Config, source: Path) -> GateReport:
    """Run the gates on a file without publishing (read-only; no lock needed)."""
    from . import gates  # only validate runs a gate: status, history... skip them
    from .schema_gates import add_schema_gates  # validate only: status skips the plans

    check_source_path(source)
    hot = hot_journal(source)
    if hot:
        raise GateFailed(hot)
    baseline = None
    live: Path | None = None
    store = Store(config.root, config.live_path)
    if store.exists():
        with open_store(config, degraded_ok=True, readonly=True) as ctx:
            live_id = store.live_release_id()
            live_rel = ctx.state.release(live_id) if live_id else None
            baseline = live_rel.check_values() if live_rel else None
            live = store.live_target() if live_id else None
    report = gates.run_gates(source, config, baseline)
    add_schema_gates(report, source, live, config, allow_contract=False)
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
    return read_view(config, lambda ctx: _status(ctx, config))


def _status(ctx: Context, config: Config) -> dict[str, Any]:
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
    if ctx.degraded:
        problems.insert(0, f"state.db is unusable ({ctx.degraded.split('; ')[0]}): "
                           "status comes from the journal and the manifests; run "
                           "`releaser fsck --repair`")
    previous = previous_release(ctx, live_id)
    last_check = ctx.state.last_health_check()
    live_rel = ctx.state.release(live_id) if live_id is not None else None
    live["health"] = (health.live_health(store.live_path, live_rel, last_check)
                      if live_rel is not None else None)
    scan = readers.scan(store)
    return {
        "live_path": str(config.live_path),
        "root": str(config.root),
        "config": str(config.source) if config.source else None,
        "live": live,
        "idle": idle,
        "rollback_target": previous.id if previous else None,
        # what `rollback --to` accepts (newest first, at most 5)
        "rollback_to": [r.id for r in rollback_candidates(ctx, live_id)],
        "last_check": last_check,
        "lock": store.lock_holder(),
        "archived": sorted(store.archived_ids()),
        "problems": problems,
        "state_db": {"usable": ctx.degraded is None, "problem": ctx.degraded},
        # processes still reading a release other than the live one (did not reopen)
        "stale_readers": [r.as_dict() for r in scan.readers],
        # True: other users' processes could not be inspected (no CAP_DAC_READ_SEARCH and
        # CAP_SYS_PTRACE), so stale_readers lists only this user's: the count is unknown
        "stale_readers_unknown": not scan.complete,
        # what the publish's verify window, the monitor's watch and a fleet agent's bake
        # found (analysis_record.py), newest first; live: about the live release
        "analysis": [{**r, "live": r.get("release_id") == live_id}
                     for r in analysis_record.load_all(config.root)],
    }


def history(config: Config, limit: int | None = None) -> list[dict[str, Any]]:
    return read_view(config, lambda ctx: _history(ctx, config, limit))


def _history(ctx: Context, config: Config, limit: int | None = None) -> list[dict[str, Any]]:
    return [e.as_dict() for e in ctx.state.events(limit)]


def releases(config: Config, limit: int | None = None) -> list[dict[str, Any]]:
    """The newest `limit` recorded releases (None: all), newest first; status is
    live/idle for the two slots."""
    return read_view(config, lambda ctx: _releases(ctx, config, limit))


def _releases(ctx: Context, config: Config, limit: int | None = None
              ) -> list[dict[str, Any]]:
    store = ctx.store
    live_id = store.live_release_id()
    idle_ids = set(store.slot_files(store.idle_slot()))
    files = on_disk_ids(store)  # listed once, not per row
    out = []
    for rel in ctx.state.releases(limit=limit):
        on_disk = rel.id in files
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
    from . import diff as diffing  # only `diff` needs the diff engine

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
    found = file_of(ctx.store, rid)
    if found is None:
        raise UsageError(f"{spec}: release {rid} ({rel.status}) is not on disk any more; "
                         "diff its build file instead")
    live_id = ctx.store.live_release_id()
    tag = " (live)" if rid == live_id else (
        " (idle)" if rid in ctx.store.slot_files(ctx.store.idle_slot()) else "")
    return diffing.Side(found, f"release {rid}{tag}", rid)


def diff(config: Config, old: str | None, new: str | None) -> dict[str, Any]:
    """OLD vs NEW (files or release ids); OLD defaults to the live release, NEW to the
    idle one (so a bare `releaser diff` shows what a rollback would do)."""
    from . import diff as diffing

    store = Store(config.root, config.live_path)
    if old is not None and new is not None and Path(old).exists() and Path(new).exists():
        return diffing.diff_files(_side(None, new), _side(None, old), config)
    with open_store(config, degraded_ok=True, readonly=True) as ctx:
        live_id = store.live_release_id()
        if old is None:
            if live_id is None:
                raise UsageError(f"{config.live_path}: nothing is live; pass two files or "
                                 "release ids")
            old = str(live_id)
        if new is None:
            idle = ctx.store.slot_files(ctx.store.idle_slot())
            if not idle:
                raise UsageError(f"{config.root}: the idle slot is empty; pass a file or a "
                                 "release id to compare with the live release")
            new = str(max(idle))
        return diffing.diff_files(_side(ctx, new), _side(ctx, old), config)


def check(config: Config, *, actor: str, full_hash: bool = False,
          integrity: bool = True) -> health.HealthReport:
    """Recorded in the health log when this user may write state.db (else
    report.recorded is False: a reader's check answers but leaves no trace)."""
    store = Store(config.root, config.live_path)
    writable = all(os.access(p, os.W_OK) for p in (store.root, store.state_path))
    with open_store(config, degraded_ok=True, readonly=not writable) as ctx:
        report = health.check_live(config, ctx.store, ctx.state, full_hash=full_hash,
                                   integrity=integrity)
        if writable:
            record_health_check(ctx, report, actor=actor)
        report.recorded = writable and not ctx.degraded
        return report


def record_health_check(ctx: Context, report: health.HealthReport, *, actor: str,
                        wait_s: float = 1.0) -> None:
    """Append the check to state.db's health log, waiting at most wait_s for a busy
    state.db: a check never blocks on it, and an unrecorded one is only a warning."""
    if ctx.degraded:
        log.warning("health check not recorded: %s", ctx.degraded)
        return
    try:
        ctx.state.conn.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
        ctx.state.add_health_check(release_id=report.release_id, ok=report.ok,
                                   duration_ms=report.duration_ms, actor=actor,
                                   reasons=report.reasons)
    except sqlite3.Error as exc:
        log.warning("health check not recorded in %s: %s", ctx.state.path,
                    statefile.classify(ctx.state.path, exc, wait_s).detail)


def analyze(config: Config) -> dict[str, Any]:
    """`releaser analyze`: every [[analysis.prometheus]] query once, for the live release."""
    from . import analysis  # only `analyze` needs the Prometheus client
    with open_store(config) as ctx:
        live_id = ctx.store.live_release_id()
    found = analysis.evaluate_all(config.analysis, analysis.context(config, live_id))
    return {"release_id": live_id, "measurements": [m.as_dict() for m in found]}
