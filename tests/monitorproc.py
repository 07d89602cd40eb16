"""A real `releaser monitor` subprocess for tests, with its HTTP endpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from . import faults
from .conftest import RELEASER_BIN, Env


def monitor_section(**values: Any) -> str:
    """A [monitor] table; interval 1 s and a free port unless told otherwise."""
    values = {"interval_s": 1, "metrics_listen": "127.0.0.1:0", **values}
    lines = ["[monitor]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def set_config(env: Env, *, monitor: dict[str, Any] | None = None, gates: dict[str, Any] |
               None = None, extra: str = "") -> None:
    """Rewrite env.config: replace [monitor], patch [gates] keys, append extra tables."""
    text = env.config.read_text()
    text = re.sub(r"(?ms)^\[monitor\]\n.*?(?=^\[|\Z)", "", text)
    for key, value in (gates or {}).items():
        text, n = re.subn(rf"(?m)^({key}) = .*$", f"{key} = {json.dumps(value)}", text)
        assert n == 1, key
    env.config.write_text(text + "\n" + monitor_section(**(monitor or {})) + "\n" + extra)


def health_checks(env: Env) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{env.root / 'state.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT release_id, ok, actor, reasons FROM health_checks ORDER BY id").fetchall()
    finally:
        conn.close()
    return [{"release_id": r[0], "ok": bool(r[1]), "actor": r[2], "reasons": json.loads(r[3])}
            for r in rows]


def wait_for(what: str, pred: Callable[[], Any], timeout: float = 20.0,
             proc: MonitorProc | None = None, interval: float = 0.1) -> Any:
    """pred() every interval until it is true; fails at timeout or when proc exits (a pred
    that runs a CLI command in-process costs tens of ms of CPU: poll those less often)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"monitor exited ({proc.proc.returncode}) while waiting for "
                                 f"{what}\n{proc.stderr()}")
        if time.monotonic() > deadline:
            extra = f"\nmonitor stderr:\n{proc.stderr()}" if proc else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


class MonitorProc:
    def __init__(self, env: Env, *args: str, extra_env: dict[str, str] | None = None,
                 name: str = "monitor", pause_at: str | None = None,
                 setup: str | None = None) -> None:
        """pause_at/setup: run through tests/faults.py with those fault points."""
        self.out_path = env.tmp / f"{name}.out"
        self.err_path = env.tmp / f"{name}.err"
        cmd = [str(RELEASER_BIN), "--config", str(env.config), *args]
        if pause_at or setup:
            cmd = faults.argv(*cmd[1:], pause_at=pause_at, setup=setup)
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out, stderr=err, env={**os.environ, **(extra_env or {})})
        self.base = ""

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_listening(self, timeout: float = 20.0) -> str:
        m = wait_for("the metrics address", lambda: re.search(
            r"metrics on (http://\S+)/metrics", self.stdout()), timeout, self)
        self.base = m.group(1)
        return self.base

    def get(self, path: str, accept: str | None = None) -> tuple[int, str, str]:
        req = urllib.request.Request(self.base + path, headers={"Accept": accept} if accept
                                     else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    def metrics(self) -> dict[str, float]:
        """Sample name (with sorted labels) -> value."""
        status, _ctype, text = self.get("/metrics")
        assert status == 200
        return parse_metrics(text)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        wait_for("/healthz 200", lambda: self.get("/healthz")[0] == 200, timeout, self)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"monitor did not stop within {timeout} s on SIGTERM\n"
                                 f"{self.stderr()}") from None

    def __enter__(self) -> MonitorProc:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def events(env: Env, action: str | None = None) -> list[dict[str, Any]]:
    return [e for e in reversed(env.history()) if action is None or e["action"] == action]


def make_writable(path: Path) -> Path:
    """Release files are 0444: a test that damages one has to chmod it first."""
    os.chmod(path, 0o644)
    return path
