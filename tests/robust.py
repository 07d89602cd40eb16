"""Helpers shared by the robustness tests (bad inputs, crashes, disk full, concurrency, readers)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
from pathlib import Path

from releaser.manifest import MANIFEST_RE
from releaser.store import RELEASE_FILE_RE, SWAP_TMP_INFIX

from .conftest import RELEASER_BIN, Env

SQLITE3 = "sqlite3"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run_releaser(env: Env, *args: str, prefix: list[str] | None = None, timeout: float = 60,
                 extra_env: dict[str, str] | None = None,
                 **popen: object) -> subprocess.CompletedProcess[str]:
    """The installed `releaser` in a subprocess (optionally behind a wrapper like setpriv)."""
    return subprocess.run(
        [*(prefix or []), str(RELEASER_BIN), "--config", str(env.config), *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(extra_env or {})}, **popen,  # type: ignore[arg-type]
    )


def peak_rss_kib(cmd: list[str], timeout: float = 120) -> tuple[int, int]:
    """(peak RSS in KiB, exit code) of one command, measured by /usr/bin/time.

    Not os.wait4 on a child of the test process: Linux keeps the RSS high-water mark
    across exec, so a child forked from a large pytest worker reports the worker's memory.
    /usr/bin/time is small when it forks the command, so %M is the command's own peak.
    """
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"peak-rss-{os.getpid()}-{id(cmd)}.txt"
    try:
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(out), *cmd],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout)
        return int(out.read_text().split()[-1]), proc.returncode
    finally:
        out.unlink(missing_ok=True)


def leftovers(env: Env) -> list[str]:
    """Anything in the store that is not a release file, state.db or the lock."""
    bad = []
    for d in ("slots/blue", "slots/green", "archive"):
        folder = env.root / d
        for name in os.listdir(folder) if folder.is_dir() else []:
            m = MANIFEST_RE.match(name)
            if m and (folder / f"release-{m.group(1)}.db").exists():
                continue  # a release file's manifest (issue 12)
            if not RELEASE_FILE_RE.match(name):
                bad.append(f"{d}/{name}")
    if env.live.parent.is_dir():
        for name in os.listdir(env.live.parent):
            if SWAP_TMP_INFIX in name or name.endswith(("-journal", "-wal")):
                bad.append(f"{env.live.parent}/{name}")
    return bad


def cli_quick_check(path: Path) -> str:
    """PRAGMA quick_check through the real sqlite3 CLI, read-only."""
    proc = subprocess.run([SQLITE3, "-readonly", str(path), "PRAGMA quick_check"],
                          capture_output=True, text=True, timeout=60)
    return (proc.stdout + proc.stderr).strip()


def state_rows(env: Env, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{env.root / 'state.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


LIVE_ACTIONS = ("init", "publish", "rollback", "auto-revert")


def assert_history_is_one_chain(env: Env, events: list[dict]) -> int:
    """Every live-making event starts where the previous one left live, and the last one
    made the live release (which is recorded and sound): returns its id."""
    live_events = [e for e in events if e["action"] in LIVE_ACTIONS
                   and e["outcome"] in ("published", "ok", "recovered")]
    for prev, cur in zip(live_events, live_events[1:], strict=False):
        if cur["from_release_id"] is not None:
            assert cur["from_release_id"] == prev["release_id"], (prev, cur)
    live_id = assert_live_is_recorded_and_sound(env)
    assert live_events[-1]["release_id"] == live_id
    return live_id


def assert_live_is_recorded_and_sound(env: Env, *, statuses: tuple[str, ...] = ("good",)
                                      ) -> int:
    """live_path resolves into a slot, passes quick_check, and is a release in state.db."""
    assert env.live.is_symlink(), f"{env.live} is not a symlink"
    target = Path(os.path.realpath(env.live))
    m = RELEASE_FILE_RE.match(target.name)
    assert m and target.parent.parent == env.root / "slots", f"live points at {target}"
    assert cli_quick_check(env.live) == "ok"
    rid = int(m.group(1))
    rows = state_rows(env, "SELECT status, sha256, size FROM releases WHERE id=?", (rid,))
    assert rows, f"live release {rid} is not recorded in state.db"
    status, _digest, size = rows[0]
    assert status in statuses, f"live release {rid} is {status}"
    assert target.stat().st_size == size
    return rid
