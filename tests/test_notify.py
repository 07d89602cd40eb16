"""Webhook notifications, received by a real HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from releaser import release
from releaser.config import load_config
from tests.conftest import Env


class Receiver:
    """Collects POSTed JSON; answers 500 to the first `fail_first` requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                data = self.rfile.read(int(self.headers["Content-Length"]))
                rec.attempts += 1
                if rec.attempts <= rec.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                assert self.headers["Content-Type"] == "application/json"
                rec.bodies.append(json.loads(data))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.bodies

    def actions(self) -> list[tuple[str, str]]:
        return [(b["action"], b["outcome"]) for b in self.bodies]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def webhook(url: str, **kw: object) -> str:
    keys = {"timeout_s": 2, "retries": 2, "retry_delay_s": 0.05, **kw}
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    return f'[[notify.webhook]]\nurl = "{url}"\n{lines}'


def test_publish_reject_rollback_are_posted(store: Env, receiver: Receiver) -> None:
    store.write_config(webhook(receiver.url))
    # a real subprocess: its deliveries finish before it exits, nothing to wait for
    store.run("publish", str(store.make_db("one.db", seed=1)), "--note", "first")
    assert receiver.actions() == [("publish", "published")]
    body = receiver.bodies[0]
    assert body["release"]["id"] == 1 and len(body["release"]["sha256"]) == 64
    assert body["release"]["source"].endswith("one.db")
    assert body["live_release_id"] == 1
    assert body["host"] == socket.gethostname()
    assert body["live_path"] == str(store.live)
    assert body["at"].endswith("Z")

    garbage = store.tmp / "builds" / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    store.run("publish", str(garbage), expect=1)
    reject = receiver.bodies[1]
    assert (reject["action"], reject["outcome"]) == ("reject", "rejected")
    assert "not a SQLite database" in reject["reasons"][0]
    assert reject["live_release_id"] == 1

    store.run("publish", str(store.make_db("two.db", seed=2)))
    store.run("rollback", "--reason", "looks wrong")
    rb = receiver.bodies[-1]
    assert (rb["action"], rb["outcome"]) == ("rollback", "ok")
    assert rb["release"]["id"] == 1 and rb["release"]["from_release_id"] == 3
    assert rb["reasons"] == ["looks wrong"]
    assert receiver.actions() == [("publish", "published"), ("reject", "rejected"),
                                  ("publish", "published"), ("rollback", "ok")]


def test_auto_revert_by_the_monitor_is_posted(published: Env, receiver: Receiver) -> None:
    published.write_config(webhook(receiver.url))
    config = load_config(published.config)
    result = release.revert_live(config, actor="monitor", reasons=["probe too slow"])
    assert result is not None and result.release_id == 1
    (body,) = receiver.wait_for(1)
    assert (body["action"], body["outcome"]) == ("auto-revert", "ok")
    assert body["release"] == {**body["release"], "id": 1, "from_release_id": 2}
    assert body["reasons"] == ["probe too slow"]


def test_events_filter_and_retries(store: Env) -> None:
    flaky = Receiver(fail_first=2)
    only_rejects = Receiver()
    try:
        store.write_config(webhook(flaky.url) + webhook(only_rejects.url, events=["reject"]))
        store.run("publish", str(store.make_db("one.db", seed=1)))
        # two 500s, then accepted on the third attempt (retries = 2)
        assert flaky.attempts == 3 and flaky.actions() == [("publish", "published")]
        assert only_rejects.bodies == []
        store.run("publish", str(store.make_db("one.db", seed=1)), expect=1)  # identical
        assert only_rejects.actions() == [("reject", "rejected")]
        assert "identical to the live release" in only_rejects.bodies[0]["reasons"][0]
    finally:
        for r in (flaky, only_rejects):
            r.server.shutdown()
            r.server.server_close()


def test_dead_receiver_never_changes_the_outcome(store: Env) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store.write_config(webhook(f"http://127.0.0.1:{port}/hook", retries=1))
    proc = store.run("publish", str(store.make_db("one.db", seed=1)))
    assert "could not notify" in proc.stderr and "after 2 attempts" in proc.stderr
    assert store.status()["live"]["release_id"] == 1


def test_bad_webhook_config_is_one_line_exit_2(store: Env) -> None:
    store.write_config(webhook("ftp://example/hook"))
    r = store.run("status", expect=2)
    assert "notify.webhook[0]" in r.stderr and "http://" in r.stderr
    store.write_config(webhook("http://127.0.0.1:1/", events=["deploy"]))
    r = store.run("status", expect=2)
    assert "unknown action 'deploy'" in r.stderr


def test_verification_revert_is_posted_as_auto_revert(published: Env,
                                                      receiver: Receiver) -> None:
    published.write_config(webhook(receiver.url) + """
[verify]
[[verify.exec]]
argv = ["false"]
""")
    published.run("publish", str(published.make_db("three.db", seed=3)), expect=1)
    (body,) = receiver.bodies
    assert (body["action"], body["outcome"]) == ("auto-revert", "reverted")
    assert body["release"]["id"] == 3 and body["release"]["from_release_id"] == 2
    assert body["live_release_id"] == 2
    assert "exec false: exit 1" in body["reasons"][0]
