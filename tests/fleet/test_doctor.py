"""`releaser fleet doctor` against the real SeaweedFS (passes) and against a tiny real
HTTP server on 127.0.0.1 that speaks just enough S3 for boto3 but ignores conditional
headers (fails, naming the property). The impostor is a real server, not a mock of weed:
it stands for the S3-compatible stores that shipped conditional writes ignored."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fleet.fleetenv import Fleet


class Impostor(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, honor_create_only: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.honor_create_only = honor_create_only

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Impostor

    def log_message(self, *args: object) -> None:
        pass

    def _key(self) -> str:
        return self.path.split("?", 1)[0]

    def _send(self, code: int, body: bytes = b"", etag: str | None = None) -> None:
        self.send_response(code)
        if etag:
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            if (self.server.honor_create_only and self.headers.get("If-None-Match") == "*"
                    and self._key() in self.server.objects):
                self._send(412, b"<Error><Code>PreconditionFailed</Code></Error>")
                return
            # If-Match is ignored: the bug this impostor stands for
            self.server.objects[self._key()] = body
        self._send(200, etag=f'"{hashlib.md5(body).hexdigest()}"')  # noqa: S324

    def do_GET(self) -> None:  # noqa: N802 - If-None-Match ignored too
        body = self.server.objects.get(self._key())
        if body is None:
            self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
            return
        self._send(200, body, etag=f'"{hashlib.md5(body).hexdigest()}"')  # noqa: S324

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.objects.pop(self._key(), None)
        self._send(204)


@pytest.fixture
def impostor(request: pytest.FixtureRequest) -> Iterator[Impostor]:
    server = Impostor(honor_create_only=request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_doctor_passes_on_seaweedfs_and_cleans_up(fleet: Fleet) -> None:
    result = fleet.build.cli("fleet", "doctor", "--writers", "6", "--trials", "2", "--json")
    report = json.loads(result.stdout)["data"]
    assert report["outcome"] == "ok" and report["failed"] == []
    assert [c["name"] for c in report["checks"]] == [
        "read-after-write", "create-only race", "stale If-Match refused", "concurrent CAS",
        "conditional GET 304"]
    assert list(fleet.bucket.list("doctor/")) == []  # scratch keys removed


@pytest.mark.parametrize(("impostor", "first_failure"),
                         [(False, "create-only race"), (True, "stale If-Match refused")],
                         indirect=["impostor"])
def test_doctor_names_the_failing_property(fleet: Fleet, impostor: Impostor,
                                           first_failure: str) -> None:
    text = fleet.build.config.read_text().replace(fleet.endpoint, impostor.endpoint)
    cfg = fleet.tmp / "impostor.toml"
    cfg.write_text(text)
    host = fleet.build.__class__("impostor", cfg, fleet.build.live, fleet.build.root)
    proc = host.cli("fleet", "doctor", "--writers", "4", "--trials", "1", expect=1)
    assert f"fails: {first_failure}" in proc.stderr
    lines = {ln[6:30].strip(): ln[:4] for ln in proc.stdout.splitlines()}
    assert lines["read-after-write"] == "ok  "
    assert lines[first_failure] == "FAIL"
    assert lines["concurrent CAS"] == "FAIL" and lines["conditional GET 304"] == "FAIL"
    expected_create = "ok  " if impostor.honor_create_only else "FAIL"
    assert lines["create-only race"] == expected_create
    assert impostor.objects == {}  # cleaned up there too
    assert Path(cfg).exists()
