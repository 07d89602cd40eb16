"""The publish / validate / rollback / status / history / check surface and its exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from releaser.session import parse_release_id
from releaser.store import Store

from . import faults
from .conftest import RELEASER_BIN, Env


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_in(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM tags_final").fetchone()[0]
    finally:
        conn.close()


# -- init ----------------------------------------------------------------------


def test_init_creates_store_and_is_idempotent(env: Env) -> None:
    first = env.cli_json("init")
    assert first["outcome"] == "initialised" and first["release_id"] is None
    for slot in ("blue", "green"):
        assert (env.root / "slots" / slot).is_dir()
    assert (env.root / "state.db").is_file()
    again = env.cli_json("init")
    assert again["outcome"] == "initialised"
    assert env.history() == []


def test_init_adopts_existing_live_file_keeping_its_inode(env: Env) -> None:
    db = env.make_db("legacy.db", seed=7)
    env.live.parent.mkdir(parents=True)
    os.replace(db, env.live)
    inode = env.live.stat().st_ino
    digest = sha256(env.live)
    # an app holding the old file open keeps reading it across the adoption
    reader = sqlite3.connect(f"file:{env.live}?mode=ro", uri=True)
    out = env.cli_json("init")
    assert out["outcome"] == "adopted" and out["release_id"] == 1
    assert env.live.is_symlink()
    assert env.live.stat().st_ino == inode  # same file, now behind the symlink
    assert reader.execute("SELECT COUNT(*) FROM tags_final").fetchone()[0] == 3000
    reader.close()
    status = env.status()
    assert status["live"]["release_id"] == 1 and status["live"]["sha256"] == digest
    assert [e["action"] for e in env.history()] == ["init"]
    # idempotent: a second init changes nothing
    assert env.cli_json("init")["outcome"] == "already-initialised"
    assert len(env.history()) == 1
    # the adopted release is the baseline for the next publish's change checks
    env.cli("publish", str(env.make_db("next.db", seed=8)))
    assert env.status()["idle"]["release_id"] == 1


def test_init_refuses_folder_at_live_path(env: Env) -> None:
    env.live.mkdir(parents=True)
    result = env.cli("init", expect=2)
    assert "live_path is a folder" in result.stderr


def test_publish_before_init_says_run_init(env: Env) -> None:
    result = env.cli("publish", str(env.make_db()), expect=2)
    assert "run `releaser init` first" in result.stderr


# -- publish -------------------------------------------------------------------


def test_publish_makes_release_live_and_keeps_previous_ready(store: Env) -> None:
    one = store.make_db("one.db", seed=1)
    res1 = store.cli_json("publish", str(one), "--note", "first")
    assert res1["outcome"] == "published" and res1["release_id"] == 1
    assert res1["slot"] == "blue" and res1["previous_release_id"] is None
    names = [c["name"] for c in res1["checks"]]
    assert names[:5] == ["sqlite_file", "quick_check", "index_check", "foreign_key_check",
                         "required_schema"]
    assert {"rows", "avg_confidence", "high_freq", "lookup_by_name"} <= set(names)
    assert all(c["outcome"] == "pass" for c in res1["checks"])
    for c in res1["checks"]:
        assert set(c) >= {"name", "outcome", "observed", "threshold", "duration_ms"}

    two = store.make_db("two.db", seed=2, rows=3100)
    res2 = store.cli_json("publish", str(two))
    assert res2["outcome"] == "published" and res2["slot"] == "green"
    assert res2["previous_release_id"] == 1

    # the live symlink points at the green slot's file; its content is the new build
    target = Path(os.readlink(store.live))
    assert target.parent == store.root / "slots" / "green"
    assert rows_in(store.live) == 3100
    assert res2["sha256"] == sha256(target)
    # published files are read-only, rollback-journal mode
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert target.read_bytes()[18:20] == b"\x01\x01"

    status = store.status()
    assert status["live"] == {
        "slot": "green", "release_id": 2, "sha256": res2["sha256"], "status": "good",
        "published_at": status["live"]["published_at"], "note": None, "path": str(target),
        "health": {"ok": None, "reasons": [], "checked_at": None, "checked_by": None}}
    assert status["idle"]["release_id"] == 1 and status["idle"]["slot"] == "blue"
    assert status["idle"]["sha256"] == res1["sha256"]
    assert status["rollback_target"] == 1


def test_publish_human_output(store: Env) -> None:
    out = store.cli("publish", str(store.make_db()), "--note", "n").stdout
    assert "published release 1 to slot blue" in out
    assert "quick_check" in out and "high_freq" in out


def test_dry_run_validates_and_changes_nothing(published: Env) -> None:
    before = published.snapshot()
    events = len(published.history())
    res = published.cli_json("publish", str(published.make_db("three.db", seed=3)),
                             "--dry-run")
    assert res["outcome"] == "validated" and res["release_id"] is None
    assert published.snapshot() == before
    assert len(published.history()) == events
    assert not [p for p in (published.root / "slots").rglob(".staging-*")]


def test_gate_failure_rejects_with_exit_1_and_one_event(published: Env) -> None:
    before = published.snapshot()
    bad = published.make_db("low.db", seed=3,
                            sql="UPDATE tags_final SET classification_confidence = 0.2 "
                                "WHERE classification_confidence IS NOT NULL;")
    result = published.cli("publish", str(bad), expect=1)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "avg_confidence" in err[0]
    assert published.snapshot() == before
    latest = published.history()[0]
    assert latest["action"] == "reject" and latest["outcome"] == "rejected"
    assert "avg_confidence" in latest["reason"]
    # json carries the report too
    res = published.cli_json("publish", str(bad), expect=1)
    assert res["outcome"] == "rejected"
    failing = [c for c in res["checks"] if c["outcome"] == "fail"]
    assert [c["name"] for c in failing] == ["avg_confidence"]
    assert failing[0]["observed"] == pytest.approx(0.2)


def test_row_drop_against_live_fails_change_gate(published: Env) -> None:
    smaller = published.make_db("small.db", seed=3, rows=2000)  # live has 3000: -33 %
    result = published.cli("publish", str(smaller), expect=1)
    assert "rows" in result.stderr and "dropped" in result.stderr
    # the report's limit names the change allowed against live, not only the fail bounds
    rows = next(c for c in published.cli_json("validate", str(smaller), expect=1)["checks"]
                if c["name"] == "rows")
    assert rows["threshold"] == "fail outside >= 1; vs live: drop <= 5%", rows


def test_warning_blocks_only_with_strict(published: Env) -> None:
    # avg confidence between fail.min (0.7) and warn.min (0.8), within max_delta of live
    meh = published.make_db("meh.db", seed=3, sql=(
        "UPDATE tags_final SET classification_confidence = 0.79 "
        "WHERE classification_confidence IS NOT NULL;"))
    published.write_config(extra="")
    text = published.config.read_text().replace("change = { max_delta = 0.05 }",
                                                 "change = { max_delta = 0.5 }")
    published.config.write_text(text)
    before = published.snapshot()
    strict = published.cli_json("publish", str(meh), "--strict", expect=1)
    assert strict["outcome"] == "rejected"
    assert published.snapshot() == before
    res = published.cli_json("publish", str(meh))
    assert res["outcome"] == "published"
    assert any("avg_confidence" in w for w in res["warnings"])


def test_identical_candidate_is_unchanged(published: Env) -> None:
    live_file = Path(os.readlink(published.live))
    copy = published.tmp / "same.db"
    copy.write_bytes(live_file.read_bytes())
    result = published.cli("publish", str(copy))
    assert "unchanged" in result.stdout and "already live as release 2" in result.stdout


def test_publish_json_through_installed_binary(store: Env) -> None:
    proc = store.run("publish", str(store.make_db()), "--json")
    doc = json.loads(proc.stdout)
    assert doc["outcome"] == "published" and doc["data"]["release_id"] == 1
    assert proc.stderr == ""


# -- rollback ------------------------------------------------------------------


def test_rollback_swaps_to_previous_and_records_event(published: Env) -> None:
    live_before = published.status()["live"]
    res = published.cli_json("rollback", "--reason", "bad categories")
    assert res["release_id"] == 1 and res["from_release_id"] == 2
    st = published.status()
    assert st["live"]["release_id"] == 1 and st["idle"]["release_id"] == 2
    assert st["idle"]["sha256"] == live_before["sha256"]
    ev = published.history()[0]
    assert (ev["action"], ev["outcome"], ev["release_id"], ev["reason"]) == (
        "rollback", "ok", 1, "bad categories")
    # the rolled-back-from release is not a rollback target again
    assert st["rollback_target"] is None
    assert published.cli("rollback", expect=4).stderr.count("\n") == 1
    # ... but can be chosen explicitly
    assert published.cli_json("rollback", "--to", "r2")["release_id"] == 2


def test_rollback_walks_back_past_rolled_back_releases(store: Env) -> None:
    for seed in (1, 2, 3):
        store.cli("publish", str(store.make_db(f"b{seed}.db", seed=seed)))
    assert store.cli_json("rollback")["release_id"] == 2
    assert store.cli_json("rollback")["release_id"] == 1  # from archive, not a slot
    st = store.status()
    assert st["live"]["release_id"] == 1 and st["idle"]["release_id"] == 2
    err = store.cli("rollback", expect=4).stderr
    assert "nothing older to roll back to" in err and "(live is release 1)" in err
    assert store.status()["live"]["release_id"] == 1


def test_rollback_with_nothing_is_exit_4(store: Env) -> None:
    result = store.cli("rollback", expect=4)
    assert "nothing older to roll back to" in result.stderr
    store.cli("publish", str(store.make_db()))
    store.cli("rollback", expect=4)


def test_rollback_to_unknown_or_bad_release_is_exit_2(published: Env) -> None:
    assert "no release 99" in published.cli("rollback", "--to", "99", expect=2).stderr
    err = published.cli("rollback", "--to", "abc", expect=2).stderr
    assert "not a release id; see `releaser releases`" in err, err
    assert "already live" in published.cli("rollback", "--to", "2", expect=2).stderr
    bad = published.make_db("bad.db", sql="DELETE FROM tags_final;")
    published.cli("publish", str(bad), expect=1)
    rejected_id = published.history()[0]["release_id"]
    out = published.cli("rollback", "--to", str(rejected_id), expect=2).stderr
    assert f"release {rejected_id} is rejected" in out


def test_rollback_refuses_a_damaged_target(published: Env) -> None:
    idle = published.root / "slots" / "blue" / "release-1.db"
    before = published.snapshot()
    os.chmod(idle, 0o644)
    with open(idle, "r+b") as fh:  # damage the idle release in place
        fh.seek(0)
        fh.write(b"garbage garbage!")
    result = published.cli("rollback", expect=1)
    assert "release 1 fails its check" in result.stderr
    after = published.snapshot()
    assert after["live_target"] == before["live_target"]
    assert after["live_sha"] == before["live_sha"]
    ev = published.history()[0]
    assert (ev["action"], ev["outcome"]) == ("rollback", "refused")


def test_rollback_is_a_swap_not_a_copy(published: Env) -> None:
    """O(1): rollback points the symlink at the idle slot's existing file (same inode),
    so its cost does not depend on the size; `make bench` measures the time."""
    idle = published.root / "slots" / "blue" / "release-1.db"
    inode = idle.stat().st_ino
    published.cli("rollback")
    assert Path(os.readlink(published.live)) == idle
    assert idle.stat().st_ino == inode
    assert published.live.stat().st_ino == inode


# -- status, history, check, validate -----------------------------------------


def test_history_json_shape_and_limit(published: Env) -> None:
    published.cli("rollback", "--reason", "why not")
    events = published.cli_json("history", "--limit", "2")
    assert len(events) == 2
    for e in events:
        assert set(e) >= {"at", "action", "release_id", "actor", "reason", "outcome"}
    assert [e["action"] for e in events] == ["rollback", "publish"]
    human = published.cli("history").stdout
    assert "rollback" in human and "why not" in human


def test_status_human_and_check(published: Env) -> None:
    out = published.cli("status").stdout
    assert "live:      release 2 in green" in out and "idle:      release 1 in blue" in out
    assert "last check: never" in out
    check = published.cli_json("check")
    assert check["ok"] is True and check["release_id"] == 2
    last = published.status()["last_check"]
    assert last["ok"] is True and last["release_id"] == 2


def test_check_fails_on_replaced_live_file(published: Env) -> None:
    target = Path(os.readlink(published.live))
    other = published.make_db("other.db", seed=9)
    os.chmod(target, 0o644)
    target.unlink()
    os.link(other, target)  # same name, different file: a hand replacement
    result = published.cli("check", expect=1)
    assert "unhealthy" in result.stderr and "not release 2 as recorded" in result.stderr
    assert published.status()["last_check"]["ok"] is False


def test_check_hash_catches_in_place_rewrite_with_same_stat(published: Env) -> None:
    target = Path(os.readlink(published.live))
    st = target.stat()
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF  # one byte in the last page
    with open(target, "r+b") as fh:
        fh.write(data)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide it from the stat check
    published.cli("check", "--no-integrity")  # cheap check cannot see it
    result = published.cli("check", "--hash", expect=1)
    assert "modified in place" in result.stderr


def test_validate(published: Env) -> None:
    good = published.make_db("v.db", seed=3)
    assert published.cli_json("validate", str(good))["ok"] is True
    empty = published.make_db("e.db", sql="DELETE FROM tags_final;")
    res = published.cli("validate", str(empty), expect=1)
    assert "rows" in res.stderr
    missing = published.tmp / "missing.db"
    assert published.cli("validate", str(missing), expect=2).stderr == (
        f"Error: {missing}: no such file; pass the path of the built database\n")


# -- lock ----------------------------------------------------------------------


def test_lock_busy_is_exit_3_and_status_shows_holder(published: Env) -> None:
    db = published.make_db("three.db", seed=3)
    proc = subprocess.Popen(
        faults.argv("--config", str(published.config), "publish", str(db), pause_at="gated"),
        stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "releaser-fault: gated" in proc.stderr.readline()
        holder = published.status()["lock"]
        assert holder["pid"] == proc.pid and holder["command"].startswith("publish ")
        result = published.cli("rollback", "--wait", "0.3", expect=3)
        assert f"pid {proc.pid}" in result.stderr
        assert "after waiting 0.3 s; retry later or pass a longer --wait" in result.stderr
        result = published.cli("publish", str(db), expect=3)
        assert "retry later or pass --wait SECONDS" in result.stderr
    finally:
        proc.kill()
        proc.wait()
    # the kernel dropped the dead holder's flock: the next operation proceeds and cleans up
    assert published.status()["lock"] is None
    published.cli("publish", str(db))
    assert not list((published.root / "slots").rglob(".staging-*"))


def test_wait_gets_the_lock_once_released(published: Env) -> None:
    """`--wait` really waits: the rollback starts while the lock is held (the holder
    says so), is seen waiting on the lock file, and succeeds once it is released."""
    store = Store(published.root, published.live)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock("test holder"):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        proc = subprocess.Popen([str(RELEASER_BIN), "--config", str(published.config),
                                 "rollback", "--wait", "60", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def waiting_on_lock() -> bool:  # its lock file is open while we hold the lock
            fds = Path(f"/proc/{proc.pid}/fd")
            try:
                return any(os.readlink(fd) == str(store.lock_path) for fd in fds.iterdir())
            except OSError:
                return False

        deadline = time.monotonic() + 30
        while not waiting_on_lock():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "rollback never reached the lock"
            time.sleep(0.02)
        assert published.status()["lock"]["command"] == "test holder"
    finally:
        release.set()
        holder.join()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["data"]["release_id"] == 1
    assert published.status()["live"]["release_id"] == 1


# -- misc ----------------------------------------------------------------------


def test_help_shows_examples_and_exit_codes(env: Env) -> None:
    import click

    from releaser import errors
    from releaser.cli import cli

    top = env.cli("--help").stdout
    assert "Examples:" in top and "Exit codes:" in top
    listed = {int(c) for c in re.findall(r"^\s+(\d+)\s+\S", top.split("Exit codes:")[1], re.M)}
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert listed == codes, top
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("\n### Exit codes\n")[1].split("\n\n")[0]
    assert {int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)} == codes, table
    for cmd in ("init", "validate", "publish", "rollback", "status", "history", "check"):
        assert "Examples:" in env.cli(cmd, "--help").stdout, cmd

    def commands(group: click.Group, path: str) -> list[tuple[str, click.Command]]:
        out = []
        for name, sub in group.commands.items():
            out.append((f"{path} {name}", sub))
            if isinstance(sub, click.Group):
                out.extend(commands(sub, f"{path} {name}"))
        return out

    for name, command in commands(cli, "releaser"):  # every one, the fleet's too
        with click.Context(command, info_name=name) as ctx:
            assert "Examples:" in command.get_help(ctx), name
        for option in command.params:  # and every option says what it does
            assert not isinstance(option, click.Option) or option.help, (name, option.opts)


def test_readme_command_table_names_every_command_and_option() -> None:
    """README.md's ## Commands table: a row per command naming each of its options (and,
    for `fleet`, each subcommand)."""
    import click

    from releaser.cli import cli

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = readme.split("\n## Commands\n")[1].split("\n\n")[0].splitlines()
    missing = []
    for name, command in cli.commands.items():
        row = next((r for r in rows if r.startswith(f"| `releaser {name}")), None)
        if row is None:
            missing.append(name)
            continue
        cell = re.split(r"(?<!\\)\|", row)[1]  # the first column (escaped \| inside)
        if isinstance(command, click.Group):
            missing += [f"{name} {sub}" for sub in command.commands
                        if not re.search(rf"[ |]{sub}\b(?!-)", cell)]
        missing += [f"{name} {p.opts[0]}" for p in command.params
                    if isinstance(p, click.Option) and p.opts[0] not in ("--json", "--help")
                    and p.opts[0] not in cell]
    assert missing == [], "not in README.md's command table"


def test_unknown_option_is_exit_2(env: Env) -> None:
    assert "No such option '--bogus'" in env.cli("publish", "--bogus", expect=2).stderr


def test_io_error_is_one_line_exit_5_cleans_up_and_traceback_with_debug(
        published: Env) -> None:
    # the idle slot folder made immutable: staging into it fails with an OS error even
    # for root (the archive is not written before a swap any more)
    before = published.snapshot()
    idle = published.root / "slots" / "blue"
    assert (idle / "release-1.db").exists()
    if subprocess.run(["chattr", "+i", str(idle)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    db = published.make_db("three.db", seed=3)
    try:
        proc = published.run("publish", str(db), expect=5)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr
        assert "slots/blue" in lines[0]
        assert published.snapshot() == before  # live, slots untouched; no file left behind
        ev = published.history()[0]
        assert (ev["action"], ev["outcome"]) == ("reject", "error")
        dbg = published.run("--debug", "publish", str(db), expect=None)
        assert dbg.returncode != 0 and "Traceback" in dbg.stderr
    finally:
        subprocess.run(["chattr", "-i", str(idle)], check=True)
    assert published.snapshot() == before
    published.cli("publish", str(db))


@pytest.mark.parametrize(("text", "rid"), [("7", 7), ("r7", 7), ("release-7.db", 7)])
def test_parse_release_id(text: str, rid: int) -> None:
    assert parse_release_id(text) == rid


def test_failed_dry_run_records_nothing(published: Env) -> None:
    before = published.snapshot()
    events = published.history()
    empty = published.make_db("empty.db", sql="DELETE FROM tags_final;")
    doc = published.cli_json("publish", str(empty), "--dry-run", expect=1)
    assert doc["outcome"] == "rejected" and doc["dry_run"] is True
    assert any("rows" in r for r in doc["reasons"])
    assert published.history() == events
    assert published.snapshot() == before


def test_restored_store_checks_healthy_and_rolls_back(published: Env) -> None:
    """A store copied with `cp -a` (new inodes) is still the same releases: the hash decides
    once, then the new identity is recorded; a same-size different file still fails."""
    new_root = published.tmp / "restored"
    subprocess.run(["cp", "-a", str(published.root), str(new_root)], check=True)
    target = Path(os.readlink(published.live))
    new_live = published.tmp / "app2" / "tags.db"
    new_live.parent.mkdir()
    os.symlink(new_root / target.relative_to(published.root), new_live)
    restored = Env(tmp=published.tmp, config=published.tmp / "restored.toml", live=new_live,
                   root=new_root)
    restored.write_config()
    assert restored.cli_json("check")["ok"] is True
    conn = sqlite3.connect(new_root / "state.db")
    recorded = conn.execute("SELECT inode FROM releases WHERE id = 2").fetchone()[0]
    conn.close()
    assert recorded == new_live.stat().st_ino  # next checks are O(1) again
    assert restored.cli_json("rollback")["release_id"] == 1

    # same size, different bytes, new inode: the hash says no
    idle = new_root / "slots" / "green" / "release-2.db"
    data = bytearray(idle.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(idle, 0o644)
    idle.unlink()
    idle.write_bytes(bytes(data))
    result = restored.cli("rollback", "--to", "2", expect=1)
    assert "sha256 differ" in result.stderr


def _paused_publish(env: Env, db: Path, step: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        faults.argv("--config", str(env.config), "publish", str(db), pause_at=step),
        stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert f"releaser-fault: {step}" in proc.stderr.readline()
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_after_swap_swaps_back_and_records(published: Env, sig: int) -> None:
    before = published.snapshot()
    proc = _paused_publish(published, published.make_db("three.db", seed=3), "swapped")
    assert published.status()["live"]["release_id"] == 3  # swapped, not yet checked
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted by SIG" in err and "Traceback" not in err
    assert "live is release 2" in err  # the truth: swapped back to release 2
    assert published.snapshot()["live_target"] == before["live_target"]
    ev = published.history()[0]
    assert (ev["action"], ev["outcome"], ev["release_id"], ev["from_release_id"]) == (
        "publish", "interrupted", 3, 2)
    assert "swapped back to release 2" in ev["reason"]
    # aborted: not a target
    assert "release 3 is aborted" in published.cli("rollback", "--to", "3", expect=2).stderr


def test_sigkill_after_swap_of_a_failing_release_is_swapped_back_by_reconcile(
        published: Env) -> None:
    proc = _paused_publish(published, published.make_db("three.db", seed=3), "swapped")
    proc.kill()
    proc.wait()
    live = Path(os.readlink(published.live))
    assert live.name == "release-3.db"
    os.chmod(live, 0o644)
    with open(live, "r+b") as fh:
        fh.truncate(live.stat().st_size - 4096)  # damaged before anyone checked it
    published.cli("init")  # any locked operation reconciles first
    assert published.status()["live"]["release_id"] == 2
    ev = published.history()[0]
    assert (ev["action"], ev["outcome"], ev["release_id"]) == ("publish", "reverted", 3)
    assert "killed after the swap and fails its post-swap check" in ev["reason"]


def test_init_adopts_a_wal_mode_file_as_a_rollback_journal_copy(env: Env) -> None:
    db = env.make_db("legacy.db", seed=7)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    conn.close()  # checkpointed on close: no pending WAL, header still says WAL
    env.live.parent.mkdir(parents=True)
    os.replace(db, env.live)
    assert env.live.read_bytes()[18:20] == b"\x02\x02"
    assert env.cli_json("init")["outcome"] == "adopted"
    target = Path(os.readlink(env.live))
    assert target.read_bytes()[18:20] == b"\x01\x01"
    assert rows_in(env.live) == 3000


def test_init_refuses_a_hot_journal_beside_the_live_file(env: Env) -> None:
    db = env.make_db("legacy.db", seed=7)
    env.live.parent.mkdir(parents=True)
    os.replace(db, env.live)
    Path(f"{env.live}-journal").write_bytes(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + b"\0" * 504)
    result = env.cli("init", expect=2)
    assert "hot rollback journal" in result.stderr and "run init again" in result.stderr
    assert not env.live.is_symlink()
