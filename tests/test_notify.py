"""Webhook notifications, received by a real HTTP server on loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from releaser import notify, rollback
from releaser.config import load_config
from releaser.config_calls import Webhook
from tests.conftest import Env


class Receiver:
    """Collects POSTed JSON; answers 500 to the first `fail_first` requests
    (after `fail_delay_s`)."""

    def __init__(self, fail_first: int = 0, fail_delay_s: float = 0.0) -> None:
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                data = self.rfile.read(int(self.headers["Content-Length"]))
                rec.attempts += 1
                if rec.attempts <= rec.fail_first:
                    time.sleep(fail_delay_s)
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


class SlowServer:
    """A raw TCP "HTTP server" on loopback that answers slowly, for deadline tests.

    Per connection: read the request, send `head` one byte every `head_byte_s`,
    then the body one byte every `body_byte_s` (0: all at once), or, with
    body_byte_s None, nothing more until `stall_s` has passed.
    """

    def __init__(self, head: bytes, body: bytes = b"", *, head_byte_s: float = 0.0,
                 body_byte_s: float | None = 0.0, stall_s: float = 30.0) -> None:
        self.head, self.body = head, body
        self.head_byte_s, self.body_byte_s, self.stall_s = head_byte_s, body_byte_s, stall_s
        self.connections = 0
        self.closed = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket, data: bytes, byte_s: float) -> None:
        if not byte_s:
            conn.sendall(data)
            return
        for i in range(len(data)):
            if self.closed.wait(byte_s):
                return
            conn.sendall(data[i:i + 1])

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self._send(conn, self.head, self.head_byte_s)
                if self.body_byte_s is None:
                    self.closed.wait(self.stall_s)
                else:
                    self._send(conn, self.body, self.body_byte_s)
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


def webhook(url: str, **kw: object) -> str:
    keys = {"timeout_s": 2, "retries": 2, "retry_delay_s": 0.05, **kw}
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    return f'[[notify.webhook]]\nurl = "{url}"\n{lines}'


def delivered(result: object) -> None:
    """In-process commands return before their webhooks are sent (a real process waits
    at exit: test_notify_threads_are_daemons_and_the_cli_waits_for_them); wait for them."""
    assert notify.flush(20), "deliveries still in flight after 20 s"


def test_publish_reject_rollback_are_posted(store: Env, receiver: Receiver) -> None:
    store.write_config(webhook(receiver.url))
    delivered(store.cli("publish", str(store.make_db("one.db", seed=1)), "--note", "first"))
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
    delivered(store.cli("publish", str(garbage), expect=1))
    reject = receiver.bodies[1]
    assert (reject["action"], reject["outcome"]) == ("reject", "rejected")
    assert "not a SQLite database" in reject["reasons"][0]
    assert reject["live_release_id"] == 1

    delivered(store.cli("publish", str(store.make_db("two.db", seed=2))))
    delivered(store.cli("rollback", "--reason", "looks wrong"))
    rb = receiver.bodies[-1]
    assert (rb["action"], rb["outcome"]) == ("rollback", "ok")
    assert rb["release"]["id"] == 1 and rb["release"]["from_release_id"] == 3
    assert rb["reasons"] == ["looks wrong"]
    assert receiver.actions() == [("publish", "published"), ("reject", "rejected"),
                                  ("publish", "published"), ("rollback", "ok")]


def test_auto_revert_by_the_monitor_is_posted(published: Env, receiver: Receiver) -> None:
    published.write_config(webhook(receiver.url))
    config = load_config(published.config)
    result = rollback.revert_live(config, actor="monitor", reasons=["probe too slow"])
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
        delivered(store.cli("publish", str(store.make_db("one.db", seed=1))))
        # two 500s, then accepted on the third attempt (retries = 2)
        assert flaky.attempts == 3 and flaky.actions() == [("publish", "published")]
        assert only_rejects.bodies == []
        # identical: unchanged
        delivered(store.cli("publish", str(store.make_db("one.db", seed=1))))
        delivered(store.cli("publish", str(store.make_db("empty.db", seed=1,
                                                         sql="DELETE FROM tags_final")),
                            expect=1))
        assert only_rejects.actions() == [("reject", "rejected")]
        assert "rows" in only_rejects.bodies[0]["reasons"][0]
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
    delivered(published.cli("publish", str(published.make_db("three.db", seed=3)), expect=1))
    (body,) = receiver.bodies
    assert (body["action"], body["outcome"]) == ("auto-revert", "reverted")
    assert body["release"]["id"] == 3 and body["release"]["from_release_id"] == 2
    assert body["live_release_id"] == 2
    assert "exec false: exit 1" in body["reasons"][0]


def _hook(url: str, **kw: object) -> Webhook:
    return Webhook(url=url, **{"timeout_s": 1.0, "retries": 2, "retry_delay_s": 0.05, **kw})


def test_a_2xx_is_delivered_once_even_when_its_body_never_comes() -> None:
    # status and headers at once, then the promised body never arrives
    server = SlowServer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", body_byte_s=None)
    try:
        assert notify.deliver(_hook(server.url), {"action": "publish", "outcome": "published"})
        assert server.connections == 1  # not retried: no duplicate delivery
    finally:
        server.close()


def test_a_slow_answer_is_cut_off_at_timeout_per_attempt() -> None:
    # one byte of the status line every 0.1 s: each read is quick, the answer takes ~10 s
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"X-Pad: " + b"x" * 60 + b"\r\n\r\n"
    server = SlowServer(head, head_byte_s=0.1)
    try:
        t0 = time.monotonic()
        ok = notify.deliver(_hook(server.url, retries=1, timeout_s=0.5),
                            {"action": "publish", "outcome": "published"})
        elapsed = time.monotonic() - t0
        assert not ok and server.connections == 2
        assert elapsed < 8  # two attempts of 0.5 s each (+ the delay), far below ~20 s
    finally:
        server.close()


def test_cli_exits_despite_a_trickling_receiver(store: Env) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"X-Pad: " + b"x" * 500 + b"\r\n\r\n"
    server = SlowServer(head, head_byte_s=0.1)  # a full answer would take ~55 s
    try:
        store.write_config(webhook(server.url, timeout_s=0.5, retries=1))
        proc = store.run("publish", str(store.make_db("one.db", seed=1)), timeout=30)
        assert "could not notify" in proc.stderr and "no complete answer within 0.5 s" in \
            proc.stderr
        assert store.status()["live"]["release_id"] == 1
    finally:
        server.close()


def test_notify_threads_are_daemons_and_the_cli_waits_for_them(store: Env) -> None:
    # the first attempt gets a 500 only after 1.5 s: the publish is long done by then, and
    # the process must still be there to make the second attempt before it exits
    slow = Receiver(fail_first=1, fail_delay_s=1.5)
    try:
        store.write_config(webhook(slow.url, timeout_s=5, retries=1))
        store.run("publish", str(store.make_db("one.db", seed=1)))
        assert slow.attempts == 2 and slow.actions() == [("publish", "published")]
        threads = notify.send(load_config(store.config).notify,
                              {"action": "publish", "outcome": "published"})
        assert threads and all(t.daemon for t in threads)
        assert notify.flush(10)
    finally:
        slow.server.shutdown()
        slow.server.server_close()
