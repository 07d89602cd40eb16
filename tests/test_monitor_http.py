"""The monitor as SREs meet it: metrics, the HTTP endpoint under load, and its log levels."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time

from releaser import __version__

from .conftest import Env
from .monitorproc import MonitorProc, set_config, wait_for

CLIENTS = 200


def test_build_info_and_probe_buckets_from_10_microseconds(published: Env) -> None:
    set_config(published)
    with MonitorProc(published, "monitor") as mon:
        mon.wait_listening()
        mon.wait_healthy()
        _code, _ctype, text = mon.get("/metrics")
        m = mon.metrics()
        assert m[f'releaser_build_info{{version="{__version__}"}}'] == 1
        les = sorted(float(k.split('le="')[1].split('"')[0]) for k in m
                     if k.startswith("releaser_probe_query_duration_seconds_bucket")
                     and 'le="+Inf"' not in k)
        assert les[0] == 1e-05, les
        assert mon.stop() == 0
    del text


def _get(host: str, port: int, path: str, results: list, barrier: threading.Barrier) -> None:
    try:
        barrier.wait(30)
        conn = http.client.HTTPConnection(host, port, timeout=20)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        results.append((path, resp.status, len(body)))
        conn.close()
    except Exception as exc:  # noqa: BLE001 - counted as a failure below
        results.append((path, type(exc).__name__, str(exc)))


def _hang_up(host: str, port: int, barrier: threading.Barrier) -> None:
    """Ask for /metrics and close at once: the server's write meets a closed socket."""
    try:
        barrier.wait(30)
        s = socket.create_connection((host, port), timeout=20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        s.close()
    except OSError:
        pass


def test_200_concurrent_clients_no_timeout_no_traceback(published: Env) -> None:
    set_config(published)
    with MonitorProc(published, "monitor") as mon:
        base = mon.wait_listening()
        mon.wait_healthy()
        host, port = base.removeprefix("http://").rsplit(":", 1)
        results: list = []
        barrier = threading.Barrier(CLIENTS + 40)
        threads = [threading.Thread(target=_get, args=(host, int(port), path, results,
                                                       barrier))
                   for path in ["/metrics", "/healthz", "/status", "/metrics"] * (CLIENTS // 4)]
        threads += [threading.Thread(target=_hang_up, args=(host, int(port), barrier))
                    for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == CLIENTS
        # /healthz may say 503 (a check slowed down by this very load can fail): it is
        # still an answer; a timeout or a refused connection is not
        failed = [r for r in results
                  if r[1] != 200 and not (r[0] == "/healthz" and r[1] == 503)]
        assert not failed, failed[:5]
        time.sleep(0.5)
        assert mon.stop() == 0
        err = mon.stderr()
        assert "Traceback" not in err and "BrokenPipe" not in err, err[-2000:]
        assert "ConnectionReset" not in err, err[-2000:]


def test_every_status_code_is_json(published: Env) -> None:
    set_config(published)
    with MonitorProc(published, "monitor") as mon:
        base = mon.wait_listening()
        host, port = base.removeprefix("http://").rsplit(":", 1)
        for method, path, code in [("POST", "/metrics", 405), ("PUT", "/status", 405),
                                   ("DELETE", "/healthz", 405), ("GET", "/nope", 404),
                                   ("BREW", "/", 501)]:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request(method, path, body=b"x" if method != "GET" else None)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status == code, (method, path, resp.status, body)
            assert resp.getheader("Content-Type", "").startswith("application/json"), body
            assert "error" in json.loads(body), body
        assert mon.stop() == 0


def test_sigterm_stop_is_info_and_auto_revert_is_one_warning(published: Env) -> None:
    set_config(published, monitor={"failures_before_revert": 1, "interval_s": 0.3})
    with MonitorProc(published, "-v", "monitor") as mon:
        mon.wait_listening()
        mon.wait_healthy()
        live = published.live.resolve()
        os.chmod(live, 0o644)
        with open(live, "r+b") as fh:
            fh.seek(4196)
            fh.write(b"\xde\xad" * 128)
        # the monitor logs it once the revert is done and recorded
        wait_for("the auto-revert", lambda: "auto-revert: live release 2 -> 1" in mon.stderr(),
                 proc=mon)
        assert published.status()["live"]["release_id"] == 1
        mon.wait_healthy()
        assert mon.stop() == 0
        err = mon.stderr()
    revert_lines = [x for x in err.splitlines() if "auto-revert" in x]
    assert len(revert_lines) == 1, err
    assert " WARNING " in revert_lines[0] and "2" in revert_lines[0] and "1" in revert_lines[0]
    # the routine stop is logged at info, not as a warning
    stop_lines = [x for x in err.splitlines() if "SIGTERM" in x or "stopping" in x]
    assert stop_lines and all(" INFO " in x for x in stop_lines), err
