"""Every way a swap is undone runs the same undo (issue 11, items 3, 4, 7, 8).

Verify failure, post-swap failure, interruption (SIGTERM/SIGINT/SIGHUP, anywhere
from the os.replace on), and a state.db that cannot be written when publish records
its result: swap back, after_rollback hooks, a truthful event, the documented exit
code, no traceback without --debug. Rollback handles signals like publish (exit 130)
and tells the truth when its folder fsync fails after the rename.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import faults
from .conftest import RELEASER_BIN, Env
from .test_verify_hooks import lines, recorder


def _hooks(env: Env, extra: str = "") -> tuple[Path, Path]:
    after, after_out = recorder(env, "after")
    back, back_out = recorder(env, "back")
    env.write_config(f"[hooks]\nafter_swap = [{after}]\nafter_rollback = [{back}]\n{extra}")
    return after_out, back_out


def _run(env: Env, *args: str, setup: str | None = None, pause_at: str | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(faults.argv("--config", str(env.config), *args, setup=setup,
                                      pause_at=pause_at),
                          capture_output=True, text=True, timeout=timeout)


def _assert_undone(env: Env, rid: int, back_out: Path, *, live: int = 2) -> dict:
    """Live is `live` again, after_rollback told the app so, history says what happened."""
    assert os.path.realpath(env.live).endswith(f"release-{live}.db")
    (hook,) = lines(back_out)
    assert hook["RELEASER_RELEASE_ID"] == str(live)
    assert hook["live_now"].endswith(f"release-{live}.db")
    ev = env.history()[0]
    assert ev["release_id"] == rid and ev["action"] == "publish", ev
    assert f"release {live}" in ev["reason"], ev
    return ev


def test_sigterm_in_the_verify_window_runs_after_rollback(published: Env) -> None:
    """Item 3: the app was told about release 3 (after_swap); on SIGTERM it is told
    about release 2 again."""
    marker = published.tmp / "verify-started"
    script = published.tmp / "probe.py"
    script.write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    _, back_out = _hooks(published, f"""
[verify]
window_s = 60
interval_s = 0.2
[[verify.exec]]
argv = ["{sys.executable}", "{script}"]
""")
    proc = subprocess.Popen(
        [str(RELEASER_BIN), "--config", str(published.config), "publish",
         str(published.make_db("three.db", seed=3))], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    ev = _assert_undone(published, 3, back_out)
    assert ev["outcome"] == "interrupted"


STATE_DB_FAILS_AT_RECORD = """
import sqlite3
def fail(*a, **k):
    raise sqlite3.OperationalError("attempt to write a readonly database")
patch("StateDB.mark_published", before=fail)
"""


def test_state_db_unwritable_after_the_swap_runs_the_same_undo(published: Env) -> None:
    """Item 4: one line, exit 130, after_rollback, and history never says 'before the
    swap' about a release that was live."""
    _, back_out = _hooks(published)
    proc = _run(published, "publish", str(published.make_db("three.db", seed=3)),
                setup=STATE_DB_FAILS_AT_RECORD)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "interrupted" in proc.stderr.strip().splitlines()[-1]
    ev = _assert_undone(published, 3, back_out)
    assert ev["outcome"] == "interrupted"
    assert "before the swap" not in ev["reason"] and "after the swap" in ev["reason"]


def test_state_db_unwritable_for_the_undo_too_reconcile_tells_the_truth(
        published: Env) -> None:
    """Item 4: state.db stays unwritable for the undo's own record: the next command
    records what happened (swapped, then swapped back), not 'before the swap'."""
    _, back_out = _hooks(published)
    setup = STATE_DB_FAILS_AT_RECORD.replace('"StateDB.mark_published"', '"StateDB.add_event"')
    # add_event fails from the publish record on (the reject/publish events of the
    # setup above ran in earlier processes)
    proc = _run(published, "publish", str(published.make_db("three.db", seed=3)),
                setup=setup)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.path.realpath(published.live).endswith("release-2.db")
    assert len(lines(back_out)) == 1
    published.cli("init")  # any locked command reconciles
    ev = published.history()[0]
    assert (ev["action"], ev["release_id"]) == ("publish", 3), ev
    assert "before the swap" not in ev["reason"], ev
    assert "after its swap" in ev["reason"] and "live is release 2" in ev["reason"], ev


# SIGTERM right after os.replace put the new symlink in place, before the folder fsync
SIGTERM_AFTER_REPLACE = """
first = [True]
def after(result, src, dst, *a, **k):
    if first[0] and str(dst).endswith("tags.db"):
        first[0] = False
        signal_self(signal.SIGTERM)
patch("os.replace", after=after)
"""


def test_sigterm_inside_the_publish_swap_is_undone(published: Env) -> None:
    """Item 7: the signal lands between os.replace and the folder fsync."""
    _, back_out = _hooks(published)
    proc = _run(published, "publish", str(published.make_db("three.db", seed=3)),
                setup=SIGTERM_AFTER_REPLACE)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    ev = _assert_undone(published, 3, back_out)
    assert ev["outcome"] == "interrupted"
    assert published.status()["live"]["release_id"] == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_rollback_handles_signals_like_publish(published: Env, sig: int) -> None:
    """Item 7: a rollback killed by SIGTERM/SIGHUP exits 130 and leaves a consistent store."""
    proc = subprocess.Popen(
        faults.argv("--config", str(published.config), "rollback", pause_at="rollback_ready"),
        stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert "releaser-fault: rollback_ready" in proc.stderr.readline()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert published.status()["live"]["release_id"] == 2  # nothing swapped yet


def test_sigterm_after_the_rollback_swap_is_recorded(published: Env) -> None:
    """The rollback's swap happened: it stays (a rollback needs no verification) and
    its event is written before the exit 130, with the after_rollback hook."""
    _, back_out = _hooks(published)
    proc = _run(published, "rollback", "--reason", "sig test", setup=SIGTERM_AFTER_REPLACE)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert published.status()["live"]["release_id"] == 1
    ev = published.history()[0]
    assert (ev["action"], ev["release_id"], ev["from_release_id"]) == ("rollback", 1, 2), ev
    assert len(lines(back_out)) == 1


FSYNC_FAILS_AFTER_REPLACE = """
state = {"replaced": False}
def after(result, src, dst, *a, **k):
    if str(dst).endswith("tags.db"):
        state["replaced"] = True
def fsync_fails(path, *a, **k):
    if state["replaced"]:
        state["replaced"] = False
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
patch("os.replace", after=after)
patch("fsync_dir", before=fsync_fails)
"""


def test_rollback_fsync_failure_after_the_rename_tells_the_truth(published: Env) -> None:
    """Item 7: the rename happened, only the folder fsync failed: live did change, so the
    rollback is recorded and the message does not say 'live untouched'."""
    proc = _run(published, "rollback", setup=FSYNC_FAILS_AFTER_REPLACE)
    live = published.status()["live"]["release_id"]
    ev = published.history()[0]
    assert "live untouched" not in proc.stderr
    if live == 1:
        assert (ev["action"], ev["release_id"]) == ("rollback", 1), ev
    else:
        assert live == 2 and proc.returncode != 0


SWAP_FAILS = """
def fail(*a, **k):
    raise OSError(errno.EIO, os.strerror(errno.EIO), "swap")
patch("os.symlink", before=fail)
"""


def test_revert_live_marks_bad_only_after_the_swap(published: Env) -> None:
    """Item 8: a swap error leaves the live release good (not bad with no event)."""
    code = (
        "from releaser import release\n"
        "from releaser.config import load_config\n"
        f"release.revert_live(load_config({str(published.config)!r}), actor='monitor', "
        "reasons=['test'], expect_live=2)\n")
    proc = _run_python(published, SWAP_FAILS, code)
    assert proc.returncode != 0
    status = published.status()
    assert status["live"]["release_id"] == 2
    assert status["live"]["status"] == "good", status
    # reconcile finds nothing inconsistent left
    events = published.history()
    published.cli("init")
    assert published.status()["live"]["status"] == "good"
    assert published.history() == events


def _run_python(env: Env, setup: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter with faults installed first."""
    prog = (f"import sys; sys.path.insert(0, {str(Path(faults.__file__).parent)!r})\n"
            "import faults\n"
            "ns = {'patch': faults.patch, 'signal_self': faults.signal_self, "
            "'os': faults.os, 'signal': faults.signal, 'errno': faults.errno}\n"
            f"exec({setup!r}, ns)\n" + code)
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                          timeout=60)


def test_reconcile_repairs_a_live_release_marked_bad_without_an_event(published: Env) -> None:
    """Item 8: a store left with the live release marked bad and no event explaining it
    (the old revert_live ordering) is put right by reconcile."""
    import sqlite3

    conn = sqlite3.connect(published.root / "state.db")
    conn.execute("UPDATE releases SET status = 'bad', status_reason = 'x' WHERE id = 2")
    conn.commit()
    conn.close()
    published.cli("init")
    assert published.status()["live"]["status"] == "good"
    ev = published.history()[0]
    assert ev["release_id"] == 2 and "marked bad" in ev["reason"], ev
