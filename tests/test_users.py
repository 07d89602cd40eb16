"""The permission model with real users and groups (README "Users and permissions").

Runs as root (creates users, then drops to them with setpriv); skipped otherwise,
never in CI. Debian's fs.protected_hardlinks=1 must be on: it is what refuses a
hard link to another user's 0444 release file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .monitorproc import monitor_section, parse_metrics
from .users import Deployment, People, Runtime, make_deployment, require_root

READ_ONLY = ("status", "history", "releases", "check")


@pytest.fixture(scope="session")
def runtime() -> Iterator[Runtime]:
    require_root()
    rt = Runtime.build()
    yield rt
    rt.remove()


@pytest.fixture(scope="session")
def people() -> Iterator[People]:
    """The group and users: no test changes them, so they are made once."""
    require_root()
    p = People.create()
    yield p
    p.remove()


@pytest.fixture
def dep(runtime: Runtime, people: People) -> Iterator[Deployment]:
    require_root()
    hardlinks = Path("/proc/sys/fs/protected_hardlinks")
    if hardlinks.exists() and hardlinks.read_text().strip() != "1":
        pytest.fail("fs.protected_hardlinks must be 1 (Debian's default) for these tests")
    d = make_deployment(runtime, people, monitor_section(failures_before_revert=1))
    yield d
    d.close()


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return lines[0]


def _live_id(dep: Deployment) -> int:
    return int(re.search(r"release-(\d+)\.db$", os.readlink(dep.live)).group(1))  # type: ignore[union-attr]


def _oncall_reads_everything(dep: Deployment, build: Path) -> str:
    """Every read-only command works for a user who can read the store but not write it.

    Returns what on-call's `check` printed (stdout and stderr)."""
    status = json.loads(dep.run("oncall", "status", "--json").stdout)["data"]
    assert status["live"]["release_id"] == _live_id(dep)
    history = json.loads(dep.run("oncall", "history", "--json").stdout)["data"]
    assert history and history[0]["action"]
    releases = json.loads(dep.run("oncall", "releases", "--json").stdout)["data"]
    assert any(r["status"] == "live" for r in releases)
    check = dep.run("oncall", "check")
    dep.run("oncall", "validate", str(build))
    # the store is not writable for on-call: nothing was created by them
    for p in dep.root.rglob("*"):
        assert dep.role_of(p) != "oncall", p
    return check.stdout + check.stderr


def test_mixed_publishers_rollback_and_auto_revert(dep: Deployment) -> None:
    """alice, carol and root publish; the service user rolls back to alice's archive-only
    release, the monitor (service user) auto-reverts to carol's archive-only one, and alice
    rolls back to root's. The app reads the live database after every step."""
    dep.run("svc", "init", umask=0o027)
    a1 = dep.build("alice", "tags.db", rows=3000, seed=1)
    dep.run("alice", "publish", str(a1), "--note", "alice 1", umask=0o077)
    assert dep.app_reads() == 3000
    c2 = dep.build("carol", "tags.db", rows=3010, seed=2)
    dep.run("carol", "publish", str(c2), "--note", "carol 2", umask=0o077)
    assert dep.app_reads() == 3010
    r3 = dep.build("root", "tags.db", rows=3020, seed=3)
    dep.run("root", "publish", str(r3), "--note", "root 3")
    assert dep.app_reads() == 3020
    _oncall_reads_everything(dep, dep.build("oncall", "mine.db", rows=3000, seed=4))

    # release 1 is alice's and only in the archive: the service user rolls back to it
    rel1 = dep.root / "archive" / "release-1.db"
    assert rel1.exists() and dep.role_of(rel1) == "alice"
    assert not list((dep.root / "slots").glob("*/release-1.db"))
    dep.run("svc", "rollback", "--to", "1", "--reason", "INC-1")
    assert _live_id(dep) == 1 and dep.app_reads() == 3000

    # the live file goes bad: the monitor, as the service user, reverts to release 2,
    # carol's, which is now only in the archive
    assert (dep.root / "archive" / "release-2.db").exists()
    assert dep.role_of(dep.root / "archive" / "release-2.db") == "carol"
    live_file = Path(os.path.realpath(dep.live))
    with open(live_file, "r+b") as fh:  # root, as a disk fault would: grow it by a page
        fh.seek(0, os.SEEK_END)
        fh.write(b"\0" * 4096)
    mon = dep.popen("svc", [str(dep.runtime.bin), "--config", str(dep.config), "monitor"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and ("auto-revert", "ok", 2) not in [
            e[:3] for e in dep.events()]:
        assert mon.poll() is None, mon.stderr.read() if mon.stderr else ""
        time.sleep(0.2)
    mon.send_signal(signal.SIGTERM)
    out, err = mon.communicate(timeout=30)
    assert ("auto-revert", "ok", 2) in [e[:3] for e in dep.events()], err
    assert _live_id(dep) == 2 and dep.app_reads() == 3010

    # alice rolls back to root's release 3, archive-only by now
    assert dep.role_of(dep.root / "archive" / "release-3.db") == "root"
    dep.run("alice", "rollback", "--to", "3", "--reason", "INC-2")
    assert _live_id(dep) == 3 and dep.app_reads() == 3020
    _oncall_reads_everything(dep, dep.build("oncall", "mine2.db", rows=3000, seed=5))
    actions = [(a, o, r) for a, o, r, _ in dep.events()]
    assert actions[-3:] == [("rollback", "ok", 1), ("auto-revert", "ok", 2),
                            ("rollback", "ok", 3)]


def test_store_modes_whatever_the_umask(dep: Deployment) -> None:
    """init and publish under umask 077 still give the group write and the app read."""
    dep.run("svc", "init", umask=0o077)
    modes = {p.relative_to(dep.root).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [dep.root, *dep.root.rglob("*")]}
    assert modes["."] == 0o2775
    for d in ("slots", "slots/blue", "slots/green", "archive"):
        assert modes[d] == 0o2775, d
    assert modes["state.db"] == 0o664
    assert modes["lock"] == 0o664
    for p in [dep.root, *dep.root.rglob("*")]:
        assert p.stat().st_gid == dep.gid, p
    a1 = dep.build("alice", "tags.db", rows=3000, seed=1)
    dep.run("alice", "publish", str(a1), umask=0o077)
    assert dep.app_reads() == 3000
    live_file = Path(os.path.realpath(dep.live))
    assert stat.S_IMODE(live_file.stat().st_mode) == 0o444
    # the service user records checks into what alice's publish wrote
    dep.run("svc", "check")
    assert dep.state_rows("SELECT actor FROM health_checks")


def test_oncall_cannot_change_anything_and_is_told_why(dep: Deployment) -> None:
    dep.run("svc", "init")
    a1 = dep.build("alice", "tags.db", rows=3000, seed=1)
    dep.run("alice", "publish", str(a1))
    c2 = dep.build("carol", "tags.db", rows=3010, seed=2)
    dep.run("carol", "publish", str(c2))
    before = (os.readlink(dep.live), dep.events())
    mine = dep.build("oncall", "mine.db", rows=3000, seed=3)
    for args in (("publish", str(mine)), ("rollback",)):
        proc = dep.run("oncall", *args, expect=2)
        line = _one_line(proc)
        assert "permission" in line.lower() and dep.group in line, line
    assert (os.readlink(dep.live), dep.events()) == before
    checks = dep.state_rows("SELECT COUNT(*) FROM health_checks")[0][0]
    # the last writer to close removes state.db-wal and -shm (the test's own read-only
    # reads as root leave them): on-call, who cannot create them, still reads
    dep.run("svc", "check")
    assert not list(dep.root.glob("state.db-*"))
    said = _oncall_reads_everything(dep, mine)
    # `check` by on-call is not recorded (it cannot write) but still answers; the
    # service user's is
    assert dep.state_rows("SELECT COUNT(*) FROM health_checks")[0][0] == checks + 1
    assert "not recorded" in said


def test_unreadable_source_is_exit_2_with_a_hint(dep: Deployment) -> None:
    dep.run("svc", "init")
    a1 = dep.build("alice", "tags.db", rows=3000, seed=1)
    before = os.listdir(dep.root / "slots" / "blue"), dep.events()
    # the service user cannot traverse alice's 0700 home
    line = _one_line(dep.run("svc", "publish", str(a1), expect=2))
    assert str(dep.homes["alice"]) in line and "permission" in line.lower(), line
    # a 0600 file in a readable folder
    shared = dep.base / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    private = shared / "tags.db"
    os.rename(a1, private)
    line = _one_line(dep.run("svc", "publish", str(private), expect=2))
    assert str(private) in line and "permission" in line.lower(), line
    line = _one_line(dep.run("svc", "validate", str(private), expect=2))
    assert str(private) in line, line
    assert (os.listdir(dep.root / "slots" / "blue"), dep.events()) == before


def test_check_fails_when_the_app_cannot_read_live(dep: Deployment) -> None:
    dep.run("svc", "init")
    dep.run("alice", "publish", str(dep.build("alice", "tags.db", rows=3000, seed=1)))
    dep.run("svc", "check")
    live_file = Path(os.path.realpath(dep.live))
    os.chmod(live_file, 0o440)  # owner and group can still read it; the app cannot
    proc = dep.run("svc", "check", expect=1)
    assert "others" in proc.stdout + proc.stderr and str(live_file) in proc.stdout + proc.stderr
    os.chmod(live_file, 0o444)
    os.chmod(dep.root / "slots", 0o2770)  # a folder on the way the app cannot traverse
    proc = dep.run("svc", "check", expect=1)
    assert str(dep.root / "slots") in proc.stdout + proc.stderr
    os.chmod(dep.root / "slots", 0o2775)
    dep.run("svc", "check")


def test_failed_swap_keeps_the_previous_release_in_the_idle_slot(dep: Deployment) -> None:
    dep.run("svc", "init")
    dep.run("alice", "publish", str(dep.build("alice", "tags.db", rows=3000, seed=1)))
    dep.run("carol", "publish", str(dep.build("carol", "tags.db", rows=3010, seed=2)))
    idle = dep.root / "slots" / "blue" / "release-1.db"
    ino = idle.stat().st_ino
    os.chmod(dep.live.parent, 0o2755)  # the group cannot write the live folder any more
    proc = dep.run("alice", "publish", str(dep.build("alice", "t3.db", rows=3020, seed=3)),
                   expect=2)
    assert str(dep.live.parent) in _one_line(proc)
    assert idle.stat().st_ino == ino and _live_id(dep) == 2
    os.chmod(dep.live.parent, 0o2775)
    dep.run("carol", "rollback")
    assert _live_id(dep) == 1 and dep.app_reads() == 3000


def _metrics(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        return parse_metrics(resp.read().decode())


def _start_monitor(dep: Deployment, caps: tuple[str, ...] = ()) -> tuple[
        subprocess.Popen[str], str]:
    out = dep.base / f"monitor-{len(dep.procs)}.out"
    with open(out, "w") as fh:
        os.chmod(out, 0o666)
        mon = dep.popen("svc", [str(dep.runtime.bin), "--config", str(dep.config), "monitor"],
                        caps=caps, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not (m := re.search(r"metrics on (http://\S+)/metrics", out.read_text())):
        assert mon.poll() is None and time.monotonic() < deadline, out.read_text()
        time.sleep(0.1)
    return mon, m.group(1)


def test_stale_readers_across_users_never_a_false_zero(dep: Deployment) -> None:
    dep.run("svc", "init")
    dep.run("alice", "publish", str(dep.build("alice", "tags.db", rows=3000, seed=1)))
    # the app opens live and keeps it open (an app that does not reopen after a swap)
    app = dep.popen("app", ["sqlite3", "-readonly", str(dep.live)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert app.stdin is not None and app.stdout is not None
    app.stdin.write("SELECT COUNT(*) FROM tags_final;\n")
    app.stdin.flush()
    assert app.stdout.readline().strip() == "3000"
    dep.run("carol", "publish", str(dep.build("carol", "tags.db", rows=3010, seed=2)))

    # the service user, as the unit runs it (no capabilities), cannot see the app's
    # descriptors: unknown
    mon, base = _start_monitor(dep)
    try:
        m = _metrics(base)
        assert m["releaser_stale_readers_unknown"] == 1
        assert m["releaser_stale_readers"] != m["releaser_stale_readers"]  # NaN, not 0
    finally:
        mon.send_signal(signal.SIGTERM)
        mon.wait(30)
    status = json.loads(dep.run("svc", "status", "--json").stdout)["data"]
    assert status["stale_readers_unknown"] and status["stale_readers"] == []
    assert "could not look" in dep.run("svc", "status").stdout

    # with the two capabilities the unit's documented drop-in grants, it sees the app
    mon, base = _start_monitor(dep, caps=("dac_read_search", "sys_ptrace"))
    try:
        m = _metrics(base)
        assert m["releaser_stale_readers_unknown"] == 0
        assert m["releaser_stale_readers"] == 1
        caps = Path(f"/proc/{mon.pid}/status").read_text()
        # ambient capabilities are dropped at start: hooks and children do not inherit it
        assert re.search(r"CapAmb:\s+0+\n", caps), caps
    finally:
        mon.send_signal(signal.SIGTERM)
        mon.wait(30)
    app.stdin.close()
    app.wait(10)


def test_inbox_done_and_rejected_are_writable_by_the_inbox_group(dep: Deployment) -> None:
    dep.run("svc", "init")
    # the files arrive by rename, whole: the default 5 s settle would only be waited out
    with open(dep.config, "a") as fh:
        fh.write("\n[watch]\nsettle_s = 0.5\n")
    inbox = dep.base / "inbox"
    subprocess.run(["install", "-d", "-o", str(dep.users["svc"].uid), "-g", dep.group, "-m",
                    "2775", str(inbox)], check=True)
    good = dep.build("alice", "tags.db", rows=3000, seed=1)
    bad = dep.homes["alice"] / "bad.db"
    bad.write_bytes(b"not a database" * 100)
    os.chown(bad, dep.users["alice"].uid, dep.users["alice"].gid)
    for f in (good, bad):
        tmp = f"{inbox}/.{f.name}.tmp"  # readable by the group (the service user)
        dep.shell("alice", f"cp {f} {tmp} && chmod 0640 {tmp} && mv {tmp} {inbox}/{f.name}")
    log = dep.base / "watch.log"
    with open(log, "w") as fh:
        watch = dep.popen("svc", [str(dep.runtime.bin), "--config", str(dep.config), "watch",
                                  "--inbox", str(inbox), "--polling"],
                          stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 40
    while not ((inbox / "done" / "tags.db").exists() and (inbox / "rejected" / "bad.db").exists()):
        assert watch.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    watch.send_signal(signal.SIGTERM)
    watch.wait(60)
    for sub in ("done", "rejected"):
        st = (inbox / sub).stat()
        assert st.st_gid == dep.gid and stat.S_IMODE(st.st_mode) == 0o2775, sub
    # alice removes and resubmits her own files
    dep.shell("alice", f"rm {inbox}/done/tags.db {inbox}/rejected/bad.db "
                       f"{inbox}/rejected/bad.db.reason.json")


def test_journal_rotation_by_another_publisher(dep: Deployment) -> None:
    """[history] keep_events on: a publish rotates a journal another user's file holds
    (written anew and renamed, never hard-linked: fs.protected_hardlinks), leaves it
    group-writable for the next publisher, and fsck --repair rebuilds from it."""
    text = dep.config.read_text()
    text = re.sub(r"(?m)^keep_events = .*$", "keep_events = 2", text)
    dep.config.write_text(re.sub(r"(?m)^journal_max_bytes = .*$", "journal_max_bytes = 1", text))
    journal = dep.root / "journal.jsonl"
    dep.run("svc", "init", umask=0o027)
    dep.run("alice", "publish", str(dep.build("alice", "a.db", rows=3000, seed=1)), umask=0o077)
    dep.run("alice", "publish", str(dep.build("alice", "b.db", rows=3020, seed=3)), umask=0o077)
    assert dep.role_of(journal) == "alice"
    # the third event: carol's publish compacts, and rotates alice's journal
    dep.run("carol", "publish", str(dep.build("carol", "c.db", rows=3010, seed=2)), umask=0o077)
    assert dep.role_of(journal) == "carol"
    for path in (journal, dep.root / "journal.previous.jsonl"):
        assert os.stat(path).st_mode & 0o777 == 0o664, path
    assert json.loads(journal.read_text().splitlines()[0])["t"] == "checkpoint"
    before = json.loads(dep.run("svc", "history", "--json").stdout)["data"]
    dep.run("svc", "fsck")
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (dep.root / name).unlink(missing_ok=True)
    dep.run("svc", "fsck", "--repair")
    after = json.loads(dep.run("oncall", "history", "--json").stdout)["data"]
    view = [(e["at"], e["action"], e["outcome"], e["release_id"]) for e in before]
    assert [(e["at"], e["action"], e["outcome"], e["release_id"]) for e in after] == view
    assert len(view) == 2  # keep_events
    assert dep.app_reads() == 3010


def test_a_reader_creating_the_wal_never_makes_a_publisher_read_only(dep: Deployment) -> None:
    """SQLite creates state.db-wal with open(O_CREAT) and only then fixes its mode: root's
    `status` (umask 022) is stopped by strace right after that open, and carol publishes
    in the instant a loaded machine could also give her. She must get a writable WAL:
    before group_writable_umask it was 0644 root's, and her publish failed with
    "attempt to write a readonly database"."""
    dep.run("svc", "init", umask=0o027)
    dep.run("alice", "publish", str(dep.build("alice", "tags.db", rows=3000, seed=1)),
            umask=0o077)
    wal = dep.root / "state.db-wal"
    assert not wal.exists()  # the last connection removed it: the reader creates it
    trace = dep.base / "status.strace"
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", str(trace), "-P", str(wal), "-e", "trace=openat",
         "-e", "inject=openat:signal=SIGSTOP:when=1",
         str(dep.runtime.bin), "--config", str(dep.config), "status"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, umask=0o022,
        env=dep.env("root"), cwd=dep.base)
    dep.procs.append(tracer)  # type: ignore[arg-type]
    deadline = time.monotonic() + 60
    stopped = []
    while not stopped:  # strace reports the status process stopped after creating the -wal
        assert tracer.poll() is None and time.monotonic() < deadline, tracer.stderr
        time.sleep(0.05)
        log = trace.read_text() if trace.exists() else ""
        stopped = [int(ln.split()[0]) for ln in log.splitlines() if "stopped by SIGSTOP" in ln]
    try:
        assert wal.exists()
        dep.run("carol", "publish", str(dep.build("carol", "tags.db", rows=3010, seed=2)),
                umask=0o077)
    finally:
        os.kill(stopped[0], signal.SIGCONT)
    out, err = tracer.communicate(timeout=60)
    assert tracer.returncode == 0, err
    assert _live_id(dep) == 2 and dep.app_reads() == 3010
