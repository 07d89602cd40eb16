"""Post-swap verification against a real app on loopback, hooks, stale readers."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import Env

# The app's own metadata table: not in [gates.required] or [[checks]], so a build
# whose format the app cannot read passes every gate (the schema is the same), yet
# the app cannot serve from it.
GOOD_SQL = ("CREATE TABLE app_meta (key TEXT PRIMARY KEY, value TEXT);"
            "INSERT INTO app_meta VALUES ('format', '2');")
BAD_SQL = ("CREATE TABLE app_meta (key TEXT PRIMARY KEY, value TEXT);"
           "INSERT INTO app_meta VALUES ('format', '1');")


class App:
    """A tiny app that opens live_path on every request, as a reopening app does."""

    def __init__(self, live: Path) -> None:
        self.live = live
        self.requests = 0
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                app.requests += 1
                code, body = app.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str) -> tuple[int, dict]:
        if path != "/health":
            return 404, {"error": "not found"}
        uri = f"file:{urllib.parse.quote(str(self.live))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True)
            try:
                fmt = conn.execute("SELECT value FROM app_meta WHERE key='format'").fetchone()
                rows = conn.execute("SELECT COUNT(*) FROM tags_final").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return 500, {"error": str(exc)}
        return 200, {"rows": rows, "format": fmt[0] if fmt else None,
                     "release": os.path.basename(os.path.realpath(self.live))}


@pytest.fixture
def app(env: Env) -> Iterator[App]:
    a = App(env.live)
    a.thread.start()
    yield a
    a.server.shutdown()
    a.server.server_close()


def verify_toml(app: App, *, window_s: float = 0.6, extra: str = "") -> str:
    return f"""
[verify]
window_s = {window_s}
interval_s = 0.2

[[verify.http]]
url = "{app.url}/health"
json_field = "format"
json_value = "2"
timeout_s = 5
retries = 1
retry_delay_s = 0.05
{extra}"""


def test_good_release_is_verified_by_the_app(env: Env, app: App) -> None:
    env.write_config(verify_toml(app))
    env.cli("init")
    doc = env.cli_json("publish", str(env.make_db("good.db", sql=GOOD_SQL)))
    assert doc["outcome"] == "published"
    assert doc["verify"]["ok"] is True
    # window 0.6 s, a round every 0.2 s: more than the first round ran
    assert doc["verify"]["rounds"] >= 2
    assert app.answer("/health")[0] == 200
    assert env.status()["live"]["release_id"] == doc["release_id"]


def test_bad_release_passes_gates_fails_the_app_and_is_reverted(env: Env, app: App) -> None:
    env.write_config(verify_toml(app))
    env.cli("init")
    good = env.cli_json("publish", str(env.make_db("good.db", sql=GOOD_SQL)))
    before = env.snapshot()
    # the gates alone accept the build with the format the app cannot read
    env.cli("validate", str(env.make_db("bad.db", seed=2, sql=BAD_SQL)))
    proc = env.run("publish", str(env.tmp / "builds" / "bad.db"), "--json", expect=1)
    doc = json.loads(proc.stdout)["data"]
    assert doc["outcome"] == "reverted"
    assert doc["verify"]["ok"] is False
    assert "JSON field format is '1', expected '2'" in doc["reasons"][0]
    assert "verification failed, swapped back to release" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback
    # live is the good release again and the app answers from it
    assert os.readlink(env.live) == before["live_target"]
    assert env.status()["live"]["release_id"] == good["release_id"]
    assert app.answer("/health")[0] == 200
    bad_id = doc["release_id"]
    event = env.history()[0]
    assert (event["action"], event["outcome"], event["release_id"]) == (
        "publish", "reverted", bad_id)
    assert event["reason"].startswith("verification failed: http ")
    # the bad release is not a rollback target
    env.cli("rollback", "--to", str(bad_id), expect=2)


def test_no_wait_accepts_after_first_good_round(env: Env, app: App) -> None:
    env.write_config(verify_toml(app, window_s=600))
    env.cli("init")
    doc = env.cli_json("publish", "--no-wait", str(env.make_db("good.db", sql=GOOD_SQL)))
    assert doc["outcome"] == "published"
    assert doc["verify"] == {**doc["verify"], "ok": True, "rounds": 1, "waited": False}


def test_failing_exec_probe_reverts(env: Env, app: App) -> None:
    script = env.tmp / "probe.py"
    script.write_text(
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(os.environ['RELEASER_LIVE_PATH'])\n"
        "f = c.execute(\"SELECT value FROM app_meta WHERE key = 'format'\")"
        ".fetchone()[0]\n"
        "sys.exit(0 if f == '2' else 3)\n")
    env.write_config(f"""
[verify]
window_s = 0
[[verify.exec]]
argv = ["{sys.executable}", "{script}"]
timeout_s = 20
""")
    env.cli("init")
    env.cli("publish", str(env.make_db("good.db", sql=GOOD_SQL)))
    r = env.cli("publish", str(env.make_db("bad.db", seed=3, sql=BAD_SQL)), expect=1)
    assert "verification failed" in r.stderr and "exit 3" in r.stderr
    assert env.history()[0]["outcome"] == "reverted"


# -- hooks -------------------------------------------------------------------


def recorder(env: Env, name: str, exit_code: int = 0) -> tuple[str, Path]:
    """A hook that appends its RELEASER_* env and where live_path points to a JSON-lines file."""
    out = env.tmp / f"{name}.jsonl"
    script = env.tmp / f"{name}.py"
    script.write_text(
        "import json, os, sys\n"
        "d = {k: v for k, v in os.environ.items() if k.startswith('RELEASER_')}\n"
        "d['live_now'] = os.path.realpath(os.environ['RELEASER_LIVE_PATH'])\n"
        f"open({str(out)!r}, 'a').write(json.dumps(d) + '\\n')\n"
        f"print('hook {name} says no', file=sys.stderr)\n"
        f"sys.exit({exit_code})\n")
    return f'{{ argv = ["{sys.executable}", "{script}"], timeout_s = 20 }}', out


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_hooks_get_release_env_at_the_right_moments(store: Env) -> None:
    before, before_out = recorder(store, "before")
    after, after_out = recorder(store, "after")
    back, back_out = recorder(store, "back")
    store.write_config(f"""
[hooks]
before_swap = [{before}]
after_swap = [{after}]
after_rollback = [{back}]
""")
    first = store.cli_json("publish", str(store.make_db("one.db", seed=1)))
    second = store.cli_json("publish", str(store.make_db("two.db", seed=2)))
    b, a = lines(before_out), lines(after_out)
    assert [x["RELEASER_RELEASE_ID"] for x in b] == [str(first["release_id"]),
                                                     str(second["release_id"])]
    assert b[1]["RELEASER_ACTION"] == "publish" and b[1]["RELEASER_HOOK"] == "before_swap"
    assert b[1]["RELEASER_SHA256"] == second["sha256"]
    assert b[1]["RELEASER_SLOT"] == second["slot"]
    assert b[1]["RELEASER_LIVE_PATH"] == str(store.live)
    assert b[1]["RELEASER_PREVIOUS_RELEASE_ID"] == str(first["release_id"])
    # before the swap live still shows the first release; after it the second
    assert b[1]["live_now"].endswith(f"release-{first['release_id']}.db")
    assert a[1]["live_now"].endswith(f"release-{second['release_id']}.db")
    store.cli("rollback", "--reason", "hook test")
    (r,) = lines(back_out)
    assert r["RELEASER_ACTION"] == "rollback"
    assert r["RELEASER_RELEASE_ID"] == str(first["release_id"])
    assert r["RELEASER_REASON"] == "hook test"
    assert r["live_now"].endswith(f"release-{first['release_id']}.db")


def test_failing_before_swap_stops_publish_and_leaves_slots(published: Env) -> None:
    hook, _ = recorder(published, "gate", exit_code=7)
    rej, rej_out = recorder(published, "onreject")
    published.write_config(f"""
[hooks]
before_swap = [{hook}]
on_reject = [{rej}]
""")
    before = published.snapshot()
    r = published.cli("publish", str(published.make_db("three.db", seed=3)), expect=1)
    assert "publish stopped, nothing swapped" in r.stderr
    assert "before_swap hook" in r.stderr and "exit 7" in r.stderr
    assert "hook gate says no" in r.stderr
    assert published.snapshot() == before  # same live, same files in both slots
    event = published.history()[0]
    assert (event["action"], event["outcome"]) == ("reject", "rejected")
    rid = event["release_id"]
    assert not (published.root / "archive" / f"release-{rid}.db").exists()
    (rj,) = lines(rej_out)
    assert rj["RELEASER_ACTION"] == "reject" and rj["RELEASER_RELEASE_ID"] == str(rid)
    assert "exit 7" in rj["RELEASER_REASON"]
    # the store still works: a later publish goes through
    published.write_config()
    published.cli("publish", str(published.make_db("four.db", seed=4)))


def test_hook_timeout_kills_it_and_counts_as_failure(published: Env) -> None:
    published.write_config(f"""
[hooks]
before_swap = [{{ argv = ["{sys.executable}", "-c", "import time; time.sleep(60)"], timeout_s = 0.5 }}]
""")
    before = published.snapshot()
    r = published.cli("publish", str(published.make_db("three.db", seed=3)), expect=1)
    assert "timed out after 0.5 s" in r.stderr
    assert published.snapshot() == before


def test_missing_hook_command_is_a_failure_with_a_reason(published: Env) -> None:
    published.write_config("""
[hooks]
before_swap = [{ argv = ["/nonexistent/reload-app"] }]
""")
    r = published.cli("publish", str(published.make_db("three.db", seed=3)), expect=1)
    assert "/nonexistent/reload-app: cannot run" in r.stderr


def test_failing_after_swap_hook_is_a_warning_only(published: Env) -> None:
    hook, _ = recorder(published, "after", exit_code=1)
    published.write_config(f"[hooks]\nafter_swap = [{hook}]\n")
    doc = published.cli_json("publish", str(published.make_db("three.db", seed=3)))
    assert doc["outcome"] == "published"
    assert any("after_swap hook" in w for w in doc["warnings"])


def test_bad_hook_config_is_one_line_exit_2(store: Env) -> None:
    store.write_config("[hooks]\nbefore_swap = [{ argv = [] }]\n")
    r = store.run("status", expect=2)
    assert "hooks.before_swap[0]" in r.stderr and "argv must not be empty" in r.stderr
    assert "Traceback" not in r.stderr


# -- stale readers -------------------------------------------------------------


def test_stale_reader_of_the_previous_release_shows_in_status(published: Env) -> None:
    # a reader that opened live_path and keeps its connection, like an app that never reopens
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         f"c = sqlite3.connect('file:{published.live}?mode=ro', uri=True)\n"
         "c.execute('SELECT COUNT(*) FROM tags_final').fetchone()\n"
         "print('open', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "open\n"
        live_id = published.status()["live"]["release_id"]
        assert published.status()["stale_readers"] == []  # it reads the live release
        published.cli("publish", str(published.make_db("three.db", seed=3)))
        stale = published.status()["stale_readers"]
        assert [(s["pid"], s["release_id"]) for s in stale] == [(reader.pid, live_id)]
        assert "sqlite3" in stale[0]["command"]
        text = published.cli("status").stdout
        assert f"stale reader: pid {reader.pid}" in text
        assert _stale_metric(published) == 1  # and on the monitor's /metrics
    finally:
        reader.kill()
        reader.wait()
    assert published.status()["stale_readers"] == []
    assert _stale_metric(published) == 0


def _stale_metric(env: Env) -> float:
    from releaser.config import load_config
    from releaser.metrics import CheckStats, Metrics
    from tests.monitorproc import parse_metrics

    body, _ = Metrics(load_config(env.config), CheckStats()).exposition()
    return parse_metrics(body.decode())["releaser_stale_readers"]


def test_documented_optional_sections_parse(tmp_path: Path) -> None:
    """The commented examples in config/releaser.toml are valid once uncommented."""
    from releaser.config import load_config
    from tests.conftest import DEFAULT_CONFIG

    head, _, optional = DEFAULT_CONFIG.read_text().partition("# The sections below")
    assert optional, "the optional sections moved; update this test"
    body = [line[2:] if line.startswith(("# [", "# ")) and (
        line[2:3] == "[" or line[2:].split(" = ")[0].isidentifier()) else line
        for line in optional.splitlines()[1:]]
    path = tmp_path / "full.toml"
    path.write_text(head + "\n".join(body))
    config = load_config(path)
    assert config.verify.window_s == 60 and config.verify.http[0].json_field == "db.rows"
    assert config.hooks.after_swap[0].argv == ("systemctl", "reload", "prompt-scribe-app")
    assert config.notify.webhook[0].events == ("reject", "auto-revert")
    assert config.watch.settle_s == 5


def test_http_probe_checks_status_body_json_and_retries(store: Env, app: App) -> None:
    from releaser.config_calls import HttpProbe
    from releaser.verify import check_http

    store.cli("publish", str(store.make_db("good.db", rows=3000, sql=GOOD_SQL)))

    def probe(path: str = "/health", **kw: object) -> str | None:
        return check_http(HttpProbe(url=app.url + path, retries=0, timeout_s=5, **kw))

    assert probe() is None
    assert probe(json_field="rows", json_value=3000) is None
    assert probe(body_contains='"format": "2"') is None
    assert "status 404, expected 200" in (probe("/nope") or "")
    assert probe("/nope", expect_status=404) is None
    assert "JSON field rows is 3000, expected 5" in (probe(json_field="rows", json_value=5) or "")
    assert "JSON field db.rows is missing" in (probe(json_field="db.rows") or "")
    assert "does not contain 'healthy'" in (probe(body_contains="healthy") or "")
    before = app.requests
    assert check_http(HttpProbe(url=app.url + "/nope", retries=2, retry_delay_s=0.01))
    assert app.requests - before == 3  # first try + 2 retries
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/health"
    assert "no answer" in (check_http(HttpProbe(url=dead, retries=0)) or "")


def test_http_probe_timeout_bounds_the_whole_answer() -> None:
    """A 200 whose body trickles in (each read quick, ~10 s in all) fails at timeout_s."""
    import time

    from releaser.config_calls import HttpProbe
    from releaser.verify import check_http
    from tests.test_notify import SlowServer

    body = b'{"ok": true}' + b" " * 28
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    server = SlowServer(head, body, body_byte_s=0.25)
    try:
        t0 = time.monotonic()
        problem = check_http(HttpProbe(url=server.url, retries=0, timeout_s=1,
                                       body_contains="ok"))
        assert problem is not None and "no complete answer within 1 s" in problem
        assert time.monotonic() - t0 < 5  # generous: 1 s timeout, ~10 s answer
    finally:
        server.close()
