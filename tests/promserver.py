"""A real Prometheus scraping a small real app, for the analysis tests.

TestApp: an HTTP server on 127.0.0.1 serving any number of virtual hosts (one
per test, so tests never see each other's traffic). GET /NAME/tags?name=X is
answered from that host's live release (sqlite3, read-only, through its
live_path as the real app does). GET /metrics: prometheus-client metrics
labelled host=NAME: http_requests_total{host,handler,status,release} (release:
the live release id the answer came from), the latency
histogram http_request_duration_seconds{host,handler}, db_connections_in_use /
db_connections_max{host}.
A Fault makes a host answer 500 to a share of requests (and/or sleep) while a
given release is live, from a given moment: the test controls error rate and
latency. LoadGen: a thread sending a host real requests (about 40 a second).
PromServer: the Debian `prometheus` binary on a free port, storage in tmp, a
1 s scrape interval, scraping the app.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tests.sample import write_sample

# the `handler` label of the app's one endpoint (as in the shipped config's examples)
HANDLER = "/api/tags"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def need_prometheus() -> None:
    """Skip without the binary, except in CI, where .ci/run installs it."""
    if not os.path.exists(PROMETHEUS) and os.environ.get("CI") != "true":
        pytest.skip("needs the Debian prometheus package (apt-get install prometheus)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fault:
    """While release_id is live (None: any) and after `start` (monotonic)."""

    error_ratio: float = 0.0
    latency_s: float = 0.0
    release_id: int | None = None
    start: float = 0.0


@dataclass
class VHost:
    name: str
    live_path: Path | None = None
    fault: Fault | None = None
    connections_in_use: float = 3.0
    served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def live_release(self) -> int | None:
        if self.live_path is None:
            return None
        m = re.search(r"release-(\d+)\.db$", os.path.realpath(self.live_path))
        return int(m.group(1)) if m else None


class TestApp:
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.hosts: dict[str, VHost] = {}
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "Requests answered.",
                                ["host", "handler", "status", "release"],
                                registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "Request latency.",
                                 ["host", "handler"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5),
                                 registry=self.registry)
        self.conns = Gauge("db_connections_in_use", "Open database connections.", ["host"],
                           registry=self.registry)
        self.conns_max = Gauge("db_connections_max", "Connection pool size.", ["host"],
                               registry=self.registry)
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/metrics":
                    for h in list(app.hosts.values()):
                        app.conns.labels(host=h.name).set(h.connections_in_use)
                    self._send(200, generate_latest(app.registry), "text/plain; version=0.0.4")
                    return
                name = self.path.lstrip("/").split("/", 1)[0]
                host = app.hosts.get(name)
                if host is None:
                    self._send(404, b"{}", "application/json")
                    return
                t0 = time.perf_counter()
                release = str(host.live_release())
                status, body = app.answer(host, self.path)
                app.latency.labels(host=name, handler=HANDLER).observe(
                    time.perf_counter() - t0)
                app.requests.labels(host=name, handler=HANDLER, status=str(status),
                                    release=release).inc()
                self._send(status, body, "application/json")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add_host(self, name: str, live_path: Path) -> VHost:
        host = VHost(name, live_path)
        self.conns_max.labels(host=name).set(10)
        self.hosts[name] = host
        return host

    def answer(self, host: VHost, path: str) -> tuple[int, bytes]:
        fault = host.fault
        if fault is not None and time.monotonic() >= fault.start and (
                fault.release_id is None or fault.release_id == host.live_release()):
            if fault.latency_s:
                time.sleep(fault.latency_s)
            with host.lock:
                host.served += 1
                n = host.served
            # deterministic share: every k-th request fails
            if fault.error_ratio and n % max(1, round(1 / fault.error_ratio)) == 0:
                return 500, b'{"error": "injected"}'
        if host.live_path is None:
            return 503, b'{"error": "no live_path"}'
        name = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("name", ["x"])[0]
        try:
            conn = sqlite3.connect(f"file:{host.live_path}?mode=ro", uri=True, timeout=1)
            try:
                row = conn.execute("SELECT post_count FROM tags_final WHERE name = ?",
                                   (name,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return 500, json.dumps({"error": str(exc)}).encode()
        return 200, json.dumps({"name": name, "post_count": row[0] if row else None}).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LoadGen:
    """Real requests to one host of the app, about `rate` a second from each of
    `clients` threads (more clients keep traffic flowing while answers are slow)."""

    def __init__(self, app: TestApp, host: str, rate: float = 40.0, clients: int = 1) -> None:
        self.url, self.period = f"{app.url}/{host}/tags?name=1girl", 1.0 / rate
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
            except (urllib.error.URLError, OSError):
                pass  # a 500 is what the test asked for
            self._stop.wait(self.period)

    def stop(self) -> None:
        """Stops sending; a request in flight (a slow fault) may still finish after."""
        self._stop.set()
        for t in self._threads:
            t.join(0.5)


class PromServer:
    """`prometheus` on 127.0.0.1:<free port>, 1 s scrapes of the given targets."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.config = tmp / "prometheus.yml"
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: app\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""
        self.log = tmp / "prometheus.log"

    def start(self) -> PromServer:
        for _attempt in range(5):  # the free port may be taken between bind and listen
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [PROMETHEUS, f"--config.file={self.config}",
                     f"--storage.tsdb.path={self.tmp / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                    stdout=log, stderr=subprocess.STDOUT)
            if self._ready(15.0):
                return self
            self.stop()
        raise AssertionError(f"prometheus did not start:\n{self.log.read_text()[-2000:]}")

    def _ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def query(self, promql: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["data"]  # type: ignore[no-any-return]

    def wait_for(self, promql: str, pred: Any, timeout: float = 20.0) -> list[float]:
        """Poll an instant query until pred(values) holds; returns the values."""
        deadline = time.monotonic() + timeout
        values: list[float] = []
        while time.monotonic() < deadline:
            data = self.query(promql)
            res = data["result"]
            values = [float(res[1])] if data["resultType"] == "scalar" else [
                float(s["value"][1]) for s in res]
            if pred(values):
                return values
            time.sleep(0.25)
        raise AssertionError(f"{promql}: still {values} after {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- fixtures (imported by the test modules) ---------------------------------


class Stack:
    """The session's Prometheus and app, and one spare host of the app kept warm.

    A host's series need two scrapes with traffic before rate() answers (about 2 s at
    1 s scrapes). So the stack keeps the next test's host already serving (a healthy
    database, a request a second, release label "None"): app_host() hands it over
    with its data in Prometheus and starts warming the next one."""

    # requests a second while it waits, for the whole session: rate() over [5s] at 1 s
    # scrapes needs a counter that moves between scrapes, and one a second keeps it
    # moving (5/s cost the worker 1 % of a core, all session long, 1/s 0.3 %)
    SPARE_RATE = 1.0

    def __init__(self, app: TestApp, prom: PromServer, tmp: Path) -> None:
        self.app, self.prom = app, prom
        self.healthy = tmp / "spare.db"
        write_sample(self.healthy, rows=200, seed=1)
        self._count = 0
        self._spare: tuple[VHost, LoadGen] | None = None
        self._warm()

    def _warm(self) -> None:
        self._count += 1
        name = f"h{self._count}"
        self._spare = (self.app.add_host(name, self.healthy),
                       LoadGen(self.app, name, rate=self.SPARE_RATE))

    def take(self) -> tuple[VHost, LoadGen]:
        assert self._spare is not None
        host, load = self._spare
        self._warm()
        return host, load

    def close(self) -> None:
        if self._spare is not None:
            self._spare[1].stop()


@pytest.fixture(scope="session")
def prom_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One Prometheus and test app per session (per xdist worker): registered in
    conftest.py, so both analysis test modules share them."""
    need_prometheus()
    app = TestApp()
    prom = PromServer(tmp_path_factory.mktemp("prom"), [app.target])
    stack = None
    try:
        stack = Stack(app, prom.start(), tmp_path_factory.mktemp("app"))
        yield stack
    finally:
        if stack is not None:
            stack.close()
        prom.stop()
        app.close()


@pytest.fixture
def stack(prom_stack: Stack) -> Stack:
    return prom_stack


@pytest.fixture
def prom(stack: Stack) -> PromServer:
    return stack.prom


@contextmanager
def app_host(stack: Stack, live_path: Path) -> Iterator[VHost]:
    """A host of the app of the test's own (its name: host.name) serving live_path (as
    the app reads the live release), under load, with data in Prometheus."""
    host, load = stack.take()
    host.live_path = live_path
    load.period = 1.0 / 40  # a test's load: about 40 requests a second
    try:
        stack.prom.wait_for(f'sum(rate(http_requests_total{{host="{host.name}"}}[5s]))',
                            lambda v: v and v[0] > 0)
        yield host
    finally:
        host.fault = None  # in-flight slow answers end sooner
        load.stop()


@pytest.fixture
def app(stack: Stack) -> Iterator[VHost]:
    """This test's own healthy host of the app, under load, with data in Prometheus."""
    with app_host(stack, stack.healthy) as host:
        yield host
