"""What scripts and people read: JSON envelopes, exit codes through pipes, tables, progress,
logs, diff direction, help and completion. Real subprocesses (and a real pty) for what is
read; a store is set up in-process (CliRunner), as the conftest `published` fixture does."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from releaser import __version__

from .conftest import RELEASER_BIN, Env

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)"


def run(*args: str, env: dict[str, str] | None = None, **kw: object
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RELEASER_BIN), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, **kw)  # type: ignore[call-overload]


# -- 8. one JSON envelope, JSON errors, global options anywhere, -V ------------------------


def envelope(text: str, command: str) -> dict:
    doc = json.loads(text)
    assert doc["version"] == 1 and doc["command"] == command, doc
    assert isinstance(doc["outcome"], str) and "data" in doc, doc
    return doc


def test_every_json_result_has_one_envelope(published: Env) -> None:
    good = published.make_db("three.db", seed=3)
    docs = {}
    for args, command, outcome in [
            (["status"], "status", "ok"), (["history"], "history", "ok"),
            (["releases"], "releases", "ok"), (["validate", str(good)], "validate", "ok"),
            (["publish", str(good), "--dry-run"], "publish", "validated"),
            (["check"], "check", "ok"), (["diff"], "diff", "ok"), (["init"], "init", None)]:
        proc = published.run(*args, "--json")
        doc = docs[command] = envelope(proc.stdout, command)
        if outcome:
            assert doc["outcome"] == outcome, (args, doc)
    assert docs["history"]["data"][0]["action"]
    doc = envelope(published.run("rollback", "--json").stdout, "rollback")
    assert doc["outcome"] == "ok" and doc["data"]["release_id"] == 1


def test_json_errors_are_json_on_stdout_and_one_line_on_stderr(published: Env) -> None:
    proc = published.run("publish", str(published.tmp / "missing.db"), "--json", expect=2)
    doc = envelope(proc.stdout, "publish")
    assert doc["outcome"] == "error" and doc["exit_code"] == 2
    assert "missing.db" in doc["error"] and "missing.db" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # a gate failure keeps its report in data, still one document
    bad = published.make_db("bad.db", sql="DELETE FROM tags_final")
    proc = published.run("publish", str(bad), "--json", expect=1)
    doc = envelope(proc.stdout, "publish")
    assert doc["outcome"] == "rejected" and doc["exit_code"] == 1 and doc["error"]
    assert any(c["outcome"] == "fail" for c in doc["data"]["checks"])
    # usage errors found by click itself, too
    proc = published.run("rollback", "--to", "nope", "--json", expect=2)
    assert envelope(proc.stdout, "rollback")["exit_code"] == 2


def test_global_options_before_or_after_the_subcommand(published: Env) -> None:
    cfg = str(published.config)
    a = run("--json", "--config", cfg, "status")
    b = run("status", "--config", cfg, "--json")
    c = run("status", "--json", f"--config={cfg}", "-v")
    for p in (a, b, c):
        assert p.returncode == 0, p.stderr
        assert envelope(p.stdout, "status")["data"]["live"]["release_id"] == 2
    # an option value that looks like a global option stays the subcommand's
    p = run("publish", str(published.make_db("n.db", seed=5)), "--note", "--debug",
            "--config", cfg, "--json")
    assert p.returncode == 0, p.stderr
    rel = envelope(run("releases", "--config", cfg, "--json").stdout, "releases")["data"][0]
    assert rel["note"] == "--debug"


def test_dash_capital_v_prints_the_version() -> None:
    for flag in ("-V", "--version"):
        p = run(flag)
        assert p.returncode == 0 and __version__ in p.stdout


# -- 5. broken pipe --------------------------------------------------------------------------


@pytest.mark.parametrize("args,code", [(["history", "--limit", "1000"], 0), (["status"], 0),
                                       (["releases"], 0), (["check", "--hash"], 1)])
def test_broken_pipe_is_quiet_and_keeps_the_exit_code(published: Env, args: list[str],
                                                      code: int) -> None:
    if code == 1:
        live = published.live.resolve()
        os.chmod(live, 0o644)
        with open(live, "r+b") as fh:
            fh.seek(4096 + 100)
            fh.write(b"\xde\xad\xbe\xef" * 64)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written: every write is EPIPE
    try:
        proc = subprocess.run([str(RELEASER_BIN), "--config", str(published.config), *args],
                              stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    assert proc.returncode == code, proc.stderr
    assert "Broken pipe" not in proc.stderr and "Traceback" not in proc.stderr
    if code == 0:
        assert proc.stderr == ""


def test_pipefail_through_head(published: Env) -> None:
    # far more history than a pipe holds (64 KiB), so the writer meets the closed pipe
    import sqlite3

    conn = sqlite3.connect(published.root / "state.db")
    with conn:
        conn.executemany(
            "INSERT INTO events (at, action, release_id, actor, reason, outcome) "
            "VALUES (?, 'rollback', 1, 'test', ?, 'ok')",
            [(f"2026-01-01T00:00:{i % 60:02d}.000Z", "x" * 80) for i in range(3000)])
    conn.close()
    script = f"set -o pipefail; {RELEASER_BIN} --config {published.config} history " \
             "--limit 3000 | head -1"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


# -- 9. human tables ----------------------------------------------------------------------------


def test_history_and_gate_report_have_headers_and_units(published: Env) -> None:
    lines = published.run("history").stdout.splitlines()
    assert re.match(r"\s*at\s+action\s+outcome\s+release", lines[0]), lines[0]
    out = published.run("validate", str(published.make_db("v.db", seed=4)),
                        env={"COLUMNS": "100"}).stdout
    header = next(x for x in out.splitlines() if "result" in x)
    assert re.search(r"result\s+kind\s+name\s+observed\s+limit\s+time", header), out
    probe = next(x for x in out.splitlines() if " probe " in x)
    assert re.search(r"\d ms\b.*\d ms\b.*\d ms$", probe), probe  # p95, budget and duration
    # the required_schema limit lists every column: it wraps in its column instead of
    # padding every row past the terminal's width
    # (the closing "PATH: passes all gates" line is as long as the test's tmp path)
    assert max(len(x) for x in out.splitlines() if str(published.tmp) not in x) <= 100, out
    lines = out.splitlines()
    i = next(n for n, x in enumerate(lines) if "required_schema" in x)
    col = header.index("limit")
    limit = [lines[i][col:].rsplit("  ", 1)[0].strip()]
    while not lines[i + len(limit)][:col].strip():
        limit.append(lines[i + len(limit)].strip())
    assert len(limit) > 1 and " ".join(limit).startswith("tags_final(name, "), out
    assert " ".join(limit).endswith("post_count)"), out


def test_table_wraps_one_column_to_the_width() -> None:
    from releaser.output import table

    rows = [("a", "short", "1 ms"), ("b", "one two three four five six seven eight", "22 ms")]
    plain = table(("k", "limit", "time"), rows, right=(2,))
    assert len({len(x) for x in plain}) == 1 and len(plain) == 3  # padded to the long cell
    lines = table(("k", "limit", "time"), rows, right=(2,), wrap=1, width=32)
    assert max(len(x) for x in lines) == 32, lines
    assert lines == ["k  " + "limit".ljust(22) + "   time",
                     "a  " + "short".ljust(22) + "   1 ms",
                     "b  " + "one two three four".ljust(22) + "  22 ms",
                     "   five six seven eight"]


def test_releases_cut_notes_at_words_and_align_columns(store: Env) -> None:
    note = "nightly rebuild with the reclassified artist tags and merged synonyms " * 3
    store.cli("publish", str(store.make_db("a.db", seed=1)), "--note", note)
    store.cli("publish", str(store.make_db("b.db", seed=2)))
    # release 1 (idle) goes bad: its status shows as "idle (bad)"
    import sqlite3
    conn = sqlite3.connect(store.root / "state.db")
    with conn:
        conn.execute("UPDATE releases SET status = 'bad', status_reason = 'probe failed' "
                     "WHERE id = 1")
    conn.close()
    lines = store.run("releases").stdout.splitlines()
    header, rows = lines[0], lines[1:]
    col = header.index("published")
    for row in rows:
        assert re.match(r"\d{4}-", row[col:]), (header, row)
    cut = next(r for r in rows if "nightly" in r)
    shown = cut.rstrip()
    assert shown.endswith("…"), shown
    assert re.search(r"\w …$|\w…$", shown), shown
    word = shown[:-1].split()[-1]
    assert word in note.split(), (word, shown)  # a whole word before the ellipsis
    assert "idle (bad)" in "".join(rows)


def test_rollback_help_points_to_releases() -> None:
    out = run("rollback", "--help").stdout
    assert "releaser releases" in out and "see history" not in out


# -- 6. diff OLD NEW ------------------------------------------------------------------------------


def test_diff_reads_old_then_new(store: Env) -> None:
    old = store.make_db("old.db", rows=3000, seed=1)
    new = store.make_db("new.db", rows=2900, seed=1)
    doc = store.cli_json("diff", str(old), str(new))
    rows = next(t for t in doc["tables"] if t["table"] == "tags_final")
    assert (rows["old"], rows["new"], rows["change"]) == (3000, 2900, -100)
    text = store.run("diff", str(old), str(new)).stdout
    line = next(x for x in text.splitlines() if x.strip().startswith("tags_final"))
    assert "-100" in line and "+100" not in line, text
    # one argument: the candidate is NEW, live is OLD
    store.cli("publish", str(old))
    doc = store.cli_json("diff", str(new))
    assert next(t for t in doc["tables"] if t["table"] == "tags_final")["change"] == -100
    assert doc["old"]["release_id"] == 1


# -- 7. progress on a TTY, nothing elsewhere; -v phases with durations --------------------------


def run_in_pty(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(argv[0], argv)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def visible(line: str) -> str:
    """What a terminal shows of one line: the text after the last carriage return."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line.rsplit("\r", 1)[-1])


def test_progress_on_a_tty_shows_each_phase_never_mixed_with_logs(published: Env) -> None:
    code, out = run_in_pty([str(RELEASER_BIN), "--config", str(published.config), "-v",
                            "publish", str(published.make_db("p.db", rows=5000, seed=3))])
    assert code == 0, out
    assert "\r" in out  # the progress line is redrawn in place
    drawn = " ".join(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", part)
                     for part in re.split(r"[\r\n]", out))
    for phase in ("staging", "integrity", "checks", "probes", "swap"):
        assert re.search(rf"\b{phase}\b", drawn), (phase, out)
    for line in out.splitlines():
        if " INFO " in line or "INFO:" in line:
            assert re.match(rf"{ISO} releaser INFO ", visible(line)), repr(line)


def test_no_progress_off_a_tty_and_v_logs_each_phase_with_its_duration(published: Env) -> None:
    proc = published.run("-v", "publish", str(published.make_db("q.db", seed=3)))
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr
    for phase in ("staging", "gates", "swap", "post-swap check"):
        assert re.search(rf"INFO {phase} done in \d+(\.\d+)? (ms|s)\b", proc.stderr), (
            phase, proc.stderr)
    quiet = published.run("publish", str(published.make_db("r.db", seed=4)))
    assert quiet.stderr == ""


# -- 10. log lines -------------------------------------------------------------------------------


def test_log_lines_carry_an_iso_timestamp_outside_journald(published: Env) -> None:
    db = str(published.make_db("l.db", seed=3))
    proc = published.run("-v", "validate", db, env={"JOURNAL_STREAM": "", "INVOCATION_ID": ""})
    lines = [x for x in proc.stderr.splitlines() if x]
    assert lines and all(re.match(rf"{ISO} releaser (INFO|WARNING|DEBUG) ", x)
                         for x in lines), lines


def test_journald_lines_have_a_priority_and_no_timestamp(published: Env) -> None:
    r, w = os.pipe()
    st = os.fstat(w)
    try:
        proc = subprocess.Popen(
            [str(RELEASER_BIN), "--config", str(published.config), "-v", "validate",
             str(published.make_db("j.db", seed=3))],
            stdout=subprocess.DEVNULL, stderr=w,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        os.close(w)
        text = b""
        while chunk := os.read(r, 65536):
            text += chunk
        assert proc.wait(60) == 0
    finally:
        os.close(r)
    lines = text.decode().splitlines()
    assert lines and all(re.match(r"<[0-7]>", x) for x in lines), lines
    assert not any(re.search(ISO, x) for x in lines), lines


# -- 12. help reference and shell completion -------------------------------------------------------


def test_help_reference_is_generated_from_every_command() -> None:
    from releaser.cli import cli

    out = run("help").stdout
    for name, cmd in cli.commands.items():
        assert re.search(rf"(?m)^#+ releaser {name}\b", out), name
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in out, (name, opt)
    one = run("help", "rollback")
    assert one.returncode == 0 and "--expect-live" in one.stdout and "publish" not in \
        one.stdout.split("Usage:")[0]
    assert run("help", "nonesuch").returncode == 2


def test_shell_completion_script_and_readme() -> None:
    script = run(env={"_RELEASER_COMPLETE": "bash_source"})
    assert script.returncode == 0 and "complete " in script.stdout
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "_RELEASER_COMPLETE=bash_source" in readme
    assert "_RELEASER_COMPLETE=zsh_source" in readme
