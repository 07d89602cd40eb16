"""`releaser fsck`: do state.db, the journal, the manifests, the files and live agree?

Read-only by default: every disagreement is one line (exit 1 when there is
any, 0 when clean). `--repair`, under the store lock:
- a missing, empty or damaged state.db is set aside as state.db.corrupt-<UTC time>
  (with its -wal/-shm) and rebuilt from the journal and the manifests, so
  history is whole up to the last journalled event (never over a state.db
  another process holds: that is reported, not repaired);
- journal lines written while state.db was unusable are imported, events
  state.db has and the journal missed are appended;
- a journal with a torn or unreadable line is rewritten with its whole lines
  (new file, fsync, rename); the damaged copy is kept as journal.jsonl.damaged-<time>;
- each release file gets a manifest that matches the record, orphan
  manifests are removed, and reconcile puts right what an interrupted
  operation left (leftovers, slots, unrecorded swaps).
Repair never moves live.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import access, manifest, rebuild, statefile
from .config import Config
from .errors import UsageError
from .files import fsync_dir, write_new
from .journal import Journal, JournalRead
from .state import SCHEMA, StateDB
from .store import STAGING_PREFIX, Store

COMPARED = ("sha256", "size", "status", "published_at")


@dataclass
class FsckReport:
    """What fsck found and what it repaired."""

    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    state_db: str = "ok"  # ok, missing, empty, damaged, busy

    @property
    def clean(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": "clean" if self.clean else "problems", "state_db": self.state_db,
                "problems": self.problems, "repaired": self.repaired}


def fsck(config: Config, *, repair: bool = False, actor: str = "fsck",
         wait_s: float = 0.0) -> FsckReport:
    store = Store(config.root, config.live_path)
    if not any(d.is_dir() for d in statefile.store_folders(store)):
        raise UsageError(f"{config.root}: no releaser store here; run `releaser init` first")
    if not repair:
        return examine(store)
    with store.lock("fsck --repair", wait_s):
        report = FsckReport()
        _repair(config, store, report, actor=actor)
        after = examine(store)
        after.repaired = report.repaired
        return after


# -- examine (read-only) ---------------------------------------------------------


def examine(store: Store) -> FsckReport:
    report = FsckReport()
    journal = Journal(store.root)
    jread = journal.read()
    report.problems += jread.problems(journal.path)
    state = _open_readonly(store, report)
    manifests, bad_manifests = manifest.scan(statefile.store_folders(store))
    report.problems += bad_manifests
    if state is None:
        if jread.missing and not manifests:
            report.problems.append(f"{journal.path}: missing too: nothing to rebuild from")
        _check_files(store, report, _rows_from(jread, manifests, store))
        _check_live(store, report, _rows_from(jread, manifests, store))
        return report
    try:
        rows = {r["id"]: r for r in map(dict, state.conn.execute("SELECT * FROM releases"))}
        _check_journal(state, jread, journal, manifests, rows, report)
        _check_files(store, report, rows)
        _check_live(store, report, rows)
    except sqlite3.DatabaseError as exc:
        report.state_db = "damaged"
        report.problems.append(f"{store.state_path}: state.db is damaged ({exc}); "
                               f"{statefile.REPAIR_HINT}")
    finally:
        state.close()
    return report


def _open_readonly(store: Store, report: FsckReport) -> StateDB | None:
    try:
        state = statefile.open_state(store, busy_s=0.5)
    except statefile.StateUnusable as exc:
        report.state_db = exc.kind
        report.problems.append(exc.message)
        return None
    try:
        bad = [r[0] for r in state.conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        bad = [str(exc)]
    if bad != ["ok"]:
        state.close()
        report.state_db = "damaged"
        report.problems.append(f"{store.state_path}: state.db is damaged (quick_check: "
                               f"{'; '.join(bad)[:300]}); {statefile.REPAIR_HINT}")
        return None
    return state


def _rows_from(jread: JournalRead, manifests: dict[int, dict[str, Any]],
               store: Store) -> dict[int, dict[str, Any]]:
    return rebuild.collect(jread.entries, manifests, statefile.file_ids(store)).releases


def _check_journal(state: StateDB, jread: JournalRead, journal: Journal,
                   manifests: dict[int, dict[str, Any]], rows: dict[int, dict[str, Any]],
                   report: FsckReport) -> None:
    if jread.missing:
        if rows:
            report.problems.append(f"{journal.path}: missing; the next command that takes "
                                   "the store lock (or fsck --repair) starts it from state.db")
        return
    db_uids = {r[0] for r in state.conn.execute(
        "SELECT COALESCE(uid, 'db-' || id) FROM events")}
    # the journal's record: without what [history] keep_events compacted away
    described = rebuild.collect(jread.entries, manifests)
    journal_events = described.events
    j_uids = {e["uid"] for e in journal_events}
    only_journal = [e for e in journal_events if e["uid"] not in db_uids]
    if only_journal:
        report.problems.append(
            f"{journal.path}: {len(only_journal)} event(s) state.db lacks (journalled while "
            f"state.db was unusable, newest: {only_journal[-1]['action']} "
            f"{only_journal[-1]['outcome']} release {only_journal[-1].get('release_id')}); "
            f"{statefile.REPAIR_HINT}")
    only_db = db_uids - j_uids
    if only_db:
        report.problems.append(f"{state.path}: {len(only_db)} event(s) the journal lacks; "
                               f"{statefile.REPAIR_HINT}")
    view = described.releases
    for rid in sorted(set(view) | set(rows)):
        a, b = rows.get(rid), view.get(rid)
        if a is None:
            report.problems.append(f"release {rid}: in the journal/manifests, not in state.db")
        elif b is None:
            report.problems.append(f"release {rid}: in state.db, not in the journal or a "
                                   "manifest")
        else:
            diffs = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in COMPARED
                     if a.get(k) != b.get(k) and b.get(k) is not None]
            if diffs:
                report.problems.append(f"release {rid}: state.db and journal/manifests "
                                       f"disagree: {'; '.join(diffs)}")


def _check_files(store: Store, report: FsckReport, rows: dict[int, dict[str, Any]]) -> None:
    for folder in statefile.store_folders(store):
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            report.problems.append(f"{folder}: cannot list: {exc.strerror}")
            continue
        ids = []
        for name in names:
            path = folder / name
            if name.startswith(STAGING_PREFIX):
                report.problems.append(f"{path}: leftover of an interrupted operation")
                continue
            mid = manifest.manifest_id_of(name)
            if mid is not None:
                if not (folder / f"release-{mid}.db").exists():
                    report.problems.append(f"{path}: manifest without its release file")
                continue
            if not name.startswith("release-") or not name.endswith(".db"):
                continue
            rid = int(name[len("release-"):-3]) if name[8:-3].isdigit() else None
            if rid is None:
                continue
            ids.append(rid)
            row = rows.get(rid)
            if row is None:
                report.problems.append(f"{path}: release {rid} has no record")
                continue
            size = path.stat().st_size
            if size != row.get("size"):
                report.problems.append(f"{path}: {size} bytes, release {rid} was "
                                       f"{row.get('size')}")
            mpath = folder / manifest.manifest_name(rid)
            try:
                doc = manifest.read(mpath)
            except FileNotFoundError:
                report.problems.append(f"{path}: no manifest beside it ({mpath.name})")
                continue
            except manifest.ManifestError:
                continue  # reported by the scan
            diffs = [k for k in COMPARED if doc.get(k) != row.get(k)]
            if diffs:
                report.problems.append(f"{mpath}: manifest disagrees with the record on "
                                       f"{', '.join(diffs)}")
        if folder.parent == store.slots_dir and len(ids) > 1:
            report.problems.append(f"{folder}: {len(ids)} release files, one expected")


def _check_live(store: Store, report: FsckReport, rows: dict[int, dict[str, Any]]) -> None:
    live = store.live_path
    if not live.is_symlink():
        if live.exists():
            report.problems.append(f"{live}: a regular file, not the live symlink")
        return
    rid = store.live_release_id()
    if rid is None:
        report.problems.append(f"{live}: points outside the slots ({os.readlink(live)})")
        return
    if not live.exists():
        report.problems.append(f"{live}: dangling: release {rid}'s file is missing")
        return
    row = rows.get(rid)
    if row is None:
        report.problems.append(f"{live}: live release {rid} has no record")
    elif row.get("status") != "good":
        report.problems.append(f"{live}: live release {rid} is recorded {row.get('status')}")
    elif row.get("published_at") is None:
        report.problems.append(f"{live}: live release {rid} was never recorded as published "
                               "(a publish interrupted after its swap)")


# -- repair ----------------------------------------------------------------------


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _repair(config: Config, store: Store, report: FsckReport, *, actor: str) -> None:
    from . import recover, session  # verbs: imported late (fsck is examined without them)

    journal = Journal(store.root)
    jread = journal.read()
    if jread.torn_tail or jread.bad_lines:
        _rewrite_journal(journal, jread, report)
    problem = statefile.diagnose(store)
    if problem is None:
        try:
            statefile.open_state(store, write=True, busy_s=statefile.BUSY_TIMEOUT_S).close()
        except statefile.StateBusy:
            raise
        except statefile.StateUnusable as exc:
            problem = exc
    if problem is None:
        try:
            with access.group_writable_umask():  # this open may create -wal/-shm too
                probe = sqlite3.connect(store.state_path)
                ok = [r[0] for r in probe.execute("PRAGMA quick_check(1)")] == ["ok"]
                probe.close()
        except sqlite3.DatabaseError as exc:
            ok, problem = False, statefile.StateUnusable(store.state_path, "damaged", str(exc))
        if not ok and problem is None:
            problem = statefile.StateUnusable(store.state_path, "damaged", "quick_check fails")
    if problem is not None:
        _rebuild_state(store, journal, problem, report)
    with session.open_store(config) as ctx:
        for note in statefile.sync(ctx.state, store):
            report.repaired.append(note)
        for note in recover.reconcile(ctx, actor=actor):
            report.repaired.append(note)
        report.repaired += _repair_manifests(ctx.state, store)


def _rewrite_journal(journal: Journal, jread: JournalRead, report: FsckReport) -> None:
    import json

    aside = journal.path.with_name(f"{journal.path.name}.damaged-{_stamp()}")
    data = "".join(json.dumps(e, separators=(",", ":"), default=str, ensure_ascii=False) + "\n"
                   for e in jread.entries).encode()
    # the damaged copy is written anew, not hard-linked: the journal may be another
    # publisher's file (fs.protected_hardlinks refuses the link)
    write_new(aside, journal.path.read_bytes(), STAGING_PREFIX)
    write_new(journal.path, data, STAGING_PREFIX)
    fsync_dir(journal.path.parent)
    report.repaired.append(f"{journal.path}: rewritten with its {len(jread.entries)} whole "
                           f"line(s); the damaged copy is {aside.name}")


def _rebuild_state(store: Store, journal: Journal, why: statefile.StateUnusable,
                   report: FsckReport) -> None:
    path = store.state_path
    stamp = _stamp()
    if path.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{aside}{suffix}"))
        report.repaired.append(f"{path}: {why.detail}; kept aside as {aside.name}")
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    manifests, _ = manifest.scan(statefile.store_folders(store))
    rebuilt = rebuild.collect(journal.read().entries, manifests, statefile.file_ids(store))
    tmp = path.with_name(f"{STAGING_PREFIX}state-{os.getpid()}.db")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.executescript(SCHEMA)
        rebuild.write_into(conn, rebuilt, statefile.highest_file_id(store))
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    report.repaired.append(
        f"{path}: rebuilt from the journal and the manifests: {len(rebuilt.releases)} "
        f"release(s), {len(rebuilt.events)} event(s)"
        + (f"; {len(rebuilt.placeholders)} release(s) known only by id"
           if rebuilt.placeholders else ""))


def _repair_manifests(state: StateDB, store: Store) -> list[str]:
    notes = []
    for folder in statefile.store_folders(store):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            mid = manifest.manifest_id_of(name)
            if mid is not None and not (folder / f"release-{mid}.db").exists():
                manifest.remove(folder, mid)
                notes.append(f"{folder / name}: removed (no release file beside it)")
        fsync_dir(folder)
    for rid in sorted(statefile.file_ids(store)):
        row = state.conn.execute("SELECT * FROM releases WHERE id=?", (rid,)).fetchone()
        if row is None:
            continue
        want = dict(row)
        for folder in statefile.store_folders(store):
            if not (folder / f"release-{rid}.db").exists():
                continue
            try:
                doc = manifest.read(folder / manifest.manifest_name(rid))
                if all(doc.get(k) == want.get(k) for k in COMPARED):
                    continue
            except (FileNotFoundError, manifest.ManifestError):
                pass
            state.refresh_manifest(rid)
            notes.append(f"release {rid}: manifest rewritten from the record")
            break
    return notes
