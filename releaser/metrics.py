"""Prometheus metrics and the monitor's small HTTP endpoint.

Two sources feed one registry:
- CheckStats: what this monitor process saw (last check, its duration);
- state.db, read at scrape time: the live release, the publish / reject /
  rollback / auto-revert counters (from the append-only event log) and the
  health check counters (its counters table, bumped with each recorded check).
  Reading them there makes them survive restarts and include what the CLI did.

GET /metrics  Prometheus exposition (text or OpenMetrics, by Accept header)
GET /healthz  200 when the last check passed, 503 otherwise (also before the first)
GET /status   the `releaser status --json` document
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__, readers, statefile, views
from .config import Config
from .errors import ReleaserError
from .store import Store

log = logging.getLogger("releaser.metrics")

# probe queries on an indexed table take 0.03-0.2 ms: buckets start at 10 microseconds,
# so a p95 of the fast ones means something, and go up to the 100 ms budget and past it
PROBE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# a listen backlog for bursts of scrapers and probes (socketserver's default is 5)
LISTEN_BACKLOG = 512

# counter name -> (event action, outcomes) summed from state.db
EVENT_COUNTERS: dict[str, tuple[str, list[tuple[str, tuple[str, ...] | None]]]] = {
    "releaser_publishes": (
        "Releases made live by publish (including publishes recovered after a crash).",
        [("publish", ("published", "recovered"))]),
    "releaser_publish_failures": (
        "Candidates rejected by the gates or swapped back after the post-swap check.",
        [("reject", None), ("publish", ("reverted",))]),
    "releaser_rollbacks": (
        "Manual rollbacks that changed the live release.",
        [("rollback", ("ok",))]),
    "releaser_auto_reverts": (
        "Automatic reverts by the monitor that changed the live release.",
        [("auto-revert", ("ok",))]),
    "releaser_auto_revert_failures": (
        "Automatic reverts that failed (an I/O or permission error; nothing swapped); "
        "the monitor retries them with backoff.",
        [("auto-revert", ("failed",))]),
}

# counter name -> (state.db counters row, help): every recorded health check, by the
# monitor or `releaser check`, counted in the transaction that records it
STATE_COUNTERS: dict[str, tuple[str, str]] = {
    "releaser_health_checks": (
        "health_checks_total",
        "Health checks of the live release recorded in state.db (monitor and CLI)."),
    "releaser_health_check_failures": (
        "health_check_failures_total",
        "Recorded health checks that failed or could not run (monitor and CLI)."),
}


@dataclass
class CheckStats:
    """What the monitor has seen; written by the check thread, read by scrapes."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    checks_total: int = 0  # checks run by this process (for STATUS=)
    last_ok: bool | None = None
    last_release_id: int | None = None
    last_reasons: list[str] = field(default_factory=list)
    last_duration_s: float | None = None
    last_success_ts: float | None = None
    consecutive_failures: int = 0
    # unhealthy and no revert will happen (no good release, or already tried)
    critical: bool = False
    # checks that crashed on a monitor bug (not counted against any release)
    monitor_faults: int = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ok": self.last_ok,
                "release_id": self.last_release_id,
                "reasons": list(self.last_reasons),
                "checks_total": self.checks_total,
                "consecutive_failures": self.consecutive_failures,
                "critical": self.critical,
                "last_success_ts": self.last_success_ts,
                "monitor_faults": self.monitor_faults,
            }


class ReleaserCollector(Collector):
    def __init__(self, config: Config, stats: CheckStats) -> None:
        self.config = config
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from self._from_stats()
        try:
            yield from self._from_state()
        except (sqlite3.Error, ReleaserError) as exc:
            # a scrape must not fail because state.db is busy: skip these series once
            log.warning("metrics: cannot read %s: %s", self.config.root, exc)

    def _from_stats(self) -> Iterator[Metric]:
        build = InfoMetricFamily("releaser_build", "The releaser version serving these "
                                 "metrics.", labels=["version"])
        build.add_metric([__version__], {})
        yield build
        s = self.stats.snapshot()
        with self.stats.lock:
            duration = self.stats.last_duration_s
        if s["ok"] is not None:
            yield GaugeMetricFamily(
                "releaser_health_check_success",
                "1 when the last health check of the live release passed, else 0.",
                value=1.0 if s["ok"] else 0.0)
        if duration is not None:
            yield GaugeMetricFamily(
                "releaser_health_check_duration_seconds",
                "How long the last health check took.", value=duration)
        yield GaugeMetricFamily(
            "releaser_health_check_consecutive_failures",
            "Failed checks in a row of the current live release.",
            value=s["consecutive_failures"])
        yield GaugeMetricFamily(
            "releaser_live_critical",
            "1 when the live release is unhealthy and no automatic revert will happen.",
            value=1.0 if s["critical"] else 0.0)
        yield CounterMetricFamily(
            "releaser_monitor_faults",
            "Checks that failed on a monitor bug, not on the release (never reverted; the "
            "watchdog pings stop so systemd restarts the monitor).",
            value=s["monitor_faults"])
        if s["last_success_ts"] is not None:
            yield GaugeMetricFamily(
                "releaser_health_check_last_success_timestamp_seconds",
                "Unix time of the last passing health check (from state.db at start).",
                value=s["last_success_ts"])

    def _from_state(self) -> Iterator[Metric]:
        store = Store(self.config.root, self.config.live_path)
        if not store.exists():
            return
        usable = GaugeMetricFamily(
            "releaser_state_db_usable",
            "0 when state.db is missing, empty, damaged or busy: rollback still works from "
            "the journal and manifests; run `releaser fsck --repair`.")
        try:
            state = statefile.open_state(store, readonly=True)
        except statefile.StateUnusable as exc:
            # never create a state.db here; live and the check figures still count
            usable.add_metric([], 1.0 if exc.kind == "busy" else 0.0)
            yield usable
            return
        usable.add_metric([], 1.0)
        yield usable
        try:
            live_id = store.live_release_id()
            rel = state.release(live_id) if live_id is not None else None
            info = InfoMetricFamily(
                "releaser_live_release", "The release the live path points at.",
                labels=["release_id", "sha256", "slot"])
            if rel is not None:
                info.add_metric([str(rel.id), rel.sha256, store.live_slot() or ""], {})
            yield info
            # an app that did not reopen live_path after a swap still reads an old release
            # NaN, never 0, when other users' processes (the app) could not be looked at
            scan = readers.scan(store)
            yield GaugeMetricFamily(
                "releaser_stale_readers",
                "Processes holding a release file other than the live one open "
                "(NaN: unknown, see releaser_stale_readers_unknown).",
                value=len(scan.readers) if scan.complete else float("nan"))
            yield GaugeMetricFamily(
                "releaser_stale_readers_unknown",
                "1 when the monitor cannot inspect other users' processes (needs "
                "CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE), so the stale-reader count is unknown.",
                value=0 if scan.complete else 1)
            for name, (doc, parts) in EVENT_COUNTERS.items():
                total = sum(state.count_events(action, outcomes) for action, outcomes in parts)
                yield CounterMetricFamily(name, doc, value=total)
            for name, (key, doc) in STATE_COUNTERS.items():
                yield CounterMetricFamily(name, doc, value=state.counter(key))
            evaluations = CounterMetricFamily(
                "releaser_analysis_evaluations",
                "[[analysis.prometheus]] evaluations (publish windows and monitor watches) "
                "by outcome: pass, fail, inconclusive, error.", labels=["analysis", "outcome"])
            for query_name, outcome, total in state.analysis_counts():
                evaluations.add_metric([query_name, outcome], total)
            yield evaluations
        finally:
            state.close()


class Metrics:
    """The registry the monitor exposes; probe durations are observed per check."""

    def __init__(self, config: Config, stats: CheckStats) -> None:
        # *_created series would double the exposition for no use here
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.probe_duration = Histogram(
            "releaser_probe_query_duration_seconds",
            "Duration of each [[probes]] query in monitor health checks.",
            ["probe"], buckets=PROBE_BUCKETS, registry=self.registry)
        for probe in config.probes:
            self.probe_duration.labels(probe.name)  # present (at 0) before the first check
        self.analysis_value = Gauge(
            "releaser_analysis_last_value",
            "The last value each [[analysis.prometheus]] query returned to the monitor.",
            ["analysis"], registry=self.registry)
        self.registry.register(ReleaserCollector(config, stats))

    def observe_probe(self, name: str, seconds: float) -> None:
        self.probe_duration.labels(name).observe(seconds)

    def observe_analysis(self, name: str, value: float | None) -> None:
        if value is not None:
            self.analysis_value.labels(name).set(value)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics, /healthz, /status; every other answer is JSON too (404, 405, 501).
    A client that hangs up mid-answer is normal traffic, not an error."""

    server: _Server

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._send_json(405, {"error": f"{self.command} is not allowed; this endpoint "
                                       "answers GET only"}, allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed  # noqa: N815

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._head_only = True
        self.do_GET()

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """http.server's own errors (unknown method, bad request line...) as JSON."""
        self.close_connection = True
        try:
            self._send_json(code, {"error": message or self.responses.get(code, ("",))[0]})
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                body, ctype = self.server.metrics.exposition(self.headers.get("Accept"))
                self._send(200, body, ctype)
            elif path == "/healthz":
                snap = self.server.stats.snapshot()
                doc = {k: snap[k] for k in ("ok", "release_id", "reasons", "critical")}
                self._send_json(200 if snap["ok"] else 503, doc)
            elif path == "/status":
                self._send_json(200, views.status(self.server.config))
            elif path == "/":
                self._send(200, b"releaser monitor: /metrics /healthz /status\n",
                           "text/plain; charset=utf-8")
            else:
                self._send_json(404, {"error": f"no such path {path}; try /metrics, "
                                               "/healthz or /status"})
        except Exception as exc:  # noqa: BLE001 - one bad request must not kill the server
            if _hung_up(exc):
                return  # the client went away mid-answer: nothing to tell it
            log.error("GET %s failed: %s: %s", path, type(exc).__name__, exc)
            self._send_json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _send_json(self, code: int, doc: Any, allow: str | None = None) -> None:
        self._send(code, (json.dumps(doc, indent=2, default=str) + "\n").encode(),
                   "application/json", allow=allow)

    def _send(self, code: int, body: bytes, ctype: str, allow: str | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("http: " + format, *args)


def _hung_up(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError | ConnectionResetError | ConnectionAbortedError
                      | TimeoutError)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    config: Config
    stats: CheckStats
    metrics: Metrics


    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (broken pipe, reset) is routine: no traceback."""
        exc = sys.exc_info()[1]
        if exc is not None and _hung_up(exc):
            log.debug("http: %s went away: %s", client_address, exc)
            return
        log.error("http: request from %s failed: %s: %s", client_address,
                  type(exc).__name__, exc)


class _Server6(_Server):
    address_family = socket.AF_INET6


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """ThreadingHTTPServer in a daemon thread; port 0 picks a free port (see .port)."""

    def __init__(self, listen: str, config: Config, stats: CheckStats, metrics: Metrics) -> None:
        host, port = parse_listen(listen)
        server_cls = _Server6 if ":" in host else _Server
        self.httpd = server_cls((host, port), _Handler)
        self.httpd.config, self.httpd.stats, self.httpd.metrics = config, stats, metrics
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="releaser-metrics", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
