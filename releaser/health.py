"""Health check of the live release, as `releaser check` and the monitor run it.

The cheap part runs every time and does not grow with the file: resolve the
symlink, compare size/inode/mtime with what was recorded, read the header,
run the probes against their budgets. The full sha256 and PRAGMA quick_check
read the whole file, so callers ask for them only every N checks.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import access
from .config import Config
from .db import ReadOnlyDB
from .state import Release, StateDB
from .store import Store, release_id_of

if TYPE_CHECKING:
    from .gate_result import GateResult


@dataclass
class HealthReport:
    """The verdict of one check of a release file."""

    ok: bool
    release_id: int | None
    path: str | None
    reasons: list[str] = field(default_factory=list)
    results: list[GateResult] = field(default_factory=list)
    duration_ms: float = 0.0
    hashed: bool = False
    integrity_checked: bool = False
    recorded: bool = True  # False: the user could not write state.db (a reader's check)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "release_id": self.release_id,
            "path": self.path,
            "reasons": self.reasons,
            "hashed": self.hashed,
            "integrity_checked": self.integrity_checked,
            "recorded": self.recorded,
            "duration_ms": self.duration_ms,
            "checks": [r.as_dict() for r in self.results],
        }


def check_live(
    config: Config,
    store: Store,
    state: StateDB,
    *,
    full_hash: bool = False,
    integrity: bool = True,
) -> HealthReport:
    t0 = time.perf_counter()
    report = _check(config, store, state, full_hash=full_hash, integrity=integrity)
    report.duration_ms = round((time.perf_counter() - t0) * 1000, 3)
    report.ok = not report.reasons
    return report


def _check(config: Config, store: Store, state: StateDB, *, full_hash: bool,
           integrity: bool) -> HealthReport:
    from . import gates  # a full check runs gates; status' identity checks do not

    # live_path is resolved once: a swap during the check must not mix two releases
    target = store.live_target()
    rid = release_id_of(target) if target is not None and store.slot_of(target) else None
    report = HealthReport(ok=False, release_id=rid, path=str(target) if target else None)
    if target is None:
        if store.live_path.exists():
            report.reasons.append(f"{store.live_path} is not a symlink managed by releaser")
        else:
            report.reasons.append(f"{store.live_path} does not exist: no live release")
        return report
    if rid is None:
        report.reasons.append(f"{store.live_path} points outside the slots: {target}")
        return report
    release = state.release(rid)
    if release is None:
        report.reasons.append(f"live release {rid} has no record in {state.path}")
        return report
    assert target is not None
    if not _identity_ok(report, target, release, state):
        return report
    # the app is another user: the release and the store's folders on its way must be
    # open to others, even though this user (the owner, a group member) can read them
    app_problems = access.app_access_problems(
        Path(os.path.realpath(store.live_path)),
        [store.root, store.slots_dir, target.parent, store.live_path.parent])
    if app_problems:
        report.reasons.extend(app_problems)
        return report

    file_result = gates.check_file(target)
    report.results.append(file_result)
    if file_result.outcome != gates.PASS:
        report.reasons.append(file_result.reason())
        return report
    if full_hash:
        from .staging import sha256_file  # a full check only: status never hashes

        report.hashed = True
        digest = sha256_file(target)
        if digest != release.sha256:
            report.reasons.append(
                f"live file sha256 {digest[:12]}… differs from release {rid}'s "
                f"{release.sha256[:12]}…: it was modified in place")
            return report
    try:
        db = ReadOnlyDB(target, config.gates.query_timeout_ms,
                        heap_limit_mb=config.gates.sqlite_heap_limit_mb)
    except Exception as exc:  # noqa: BLE001 - any open failure is a failed check
        report.reasons.append(f"cannot open {target}: {exc}")
        return report
    with db:
        steps = []
        if integrity:
            report.integrity_checked = True
            steps.append(gates.check_integrity(
                db, "quick", config.gates.integrity_timeout_ms))
        if not steps or steps[-1].outcome == gates.PASS:
            steps.append(gates.check_required_schema(db, config.gates.required))
        report.results.extend(steps)
        if all(s.outcome == gates.PASS for s in steps):
            for probe in config.probes:
                report.results.append(gates.run_probe(db, probe, 1, slow_warns=True))
    report.reasons.extend(r.reason() for r in report.results if r.outcome in (
        gates.FAIL, gates.ERROR))
    return report


def _identity_ok(report: HealthReport, live_path: Path, release: Release,
                 state: StateDB) -> bool:
    if not live_path.exists():
        report.reasons.append(f"{live_path} points at a missing file (release {release.id})")
        return False
    problem = identity_problem(live_path, release, state)
    if problem:
        report.reasons.append(f"live file is not release {release.id} as recorded ({problem})")
        return False
    return True


def identity_problem(path: Path, release: Release, state: StateDB) -> str | None:
    """Is path still the recorded release file? None when it is.

    O(1) normally: size, inode and mtime against the record. When only the inode or
    mtime moved with the size unchanged (a store restored from backup or copied with
    `cp -a`), the sha256 decides, and a match is recorded so the next check is O(1)
    again; a different file of the same size fails on its hash.
    """
    st, problem = _stat_with_size(path, release)
    if st is None:
        return problem
    if release.inode is None or (st.st_ino, st.st_mtime_ns) == (release.inode,
                                                                release.mtime_ns):
        return None
    from .staging import sha256_file  # only when inode/mtime moved (rollback's usual path: not)

    digest = sha256_file(path)
    if digest != release.sha256:
        return (f"inode/mtime and sha256 differ: {digest[:12]}… is not "
                f"{release.sha256[:12]}…; it was replaced or modified")
    if not state.readonly:  # a reader's check settles it for itself only
        with state.transaction():
            state.set_file_identity(release.id, st.st_ino, st.st_mtime_ns)
    return None


def _stat_with_size(path: Path, release: Release) -> tuple[os.stat_result | None, str | None]:
    """(stat, None) when path exists with the recorded size, else (None, the problem)."""
    try:
        st = path.stat()
    except OSError as exc:
        return None, f"cannot stat {path}: {exc.strerror}"
    if st.st_size != release.size:
        return None, f"size {release.size} -> {st.st_size}"
    return st, None


def identity_changed(path: Path, release: Release) -> str | None:
    """O(1), read-only: is path still the recorded file (size, inode, mtime)? None when so.

    Unlike identity_problem it never hashes (status must stay instant): a moved inode or
    mtime is reported, and `releaser check --hash` settles whether the bytes changed.
    """
    st, problem = _stat_with_size(path, release)
    if st is None:
        return problem
    if release.inode is not None and (st.st_ino, st.st_mtime_ns) != (release.inode,
                                                                     release.mtime_ns):
        return "its inode or mtime changed since it was placed; `releaser check --hash` decides"
    return None


def live_health(live_path: Path, release: Release | None,
                last_check: dict[str, Any] | None) -> dict[str, Any]:
    """The live release's health for `status`: its last recorded check plus a fresh O(1)
    identity check. ok is None when it was never checked and nothing looks wrong."""
    reasons: list[str] = []
    if release is not None:
        changed = identity_changed(live_path, release)
        if changed:
            reasons.append(f"file is not release {release.id} as recorded ({changed})")
    checked = (last_check if last_check and release is not None
               and last_check.get("release_id") == release.id else None)
    if checked and not checked["ok"]:
        reasons += [r for r in checked["reasons"] if r not in reasons]
    ok: bool | None = False if reasons else (True if checked else None)
    return {"ok": ok, "reasons": reasons, "checked_at": checked["at"] if checked else None,
            "checked_by": checked["actor"] if checked else None}
