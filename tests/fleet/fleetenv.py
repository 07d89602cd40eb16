"""A fleet in tmp_path: a key pair, a build host config and agent hosts (each with its
own store, live path and config), against the session's real SeaweedFS."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from releaser.cli import cli
from releaser.config import load_config
from releaser.fleet.bucket import Bucket
from releaser.fleet.sign import keygen
from tests.conftest import RELEASER_BIN, config_text
from tests.monitorproc import wait_for  # noqa: F401 - the fleet tests import it from here
from tests.s3server import die_with_parent
from tests.sample import write_sample

HERE = Path(__file__).resolve().parent


@dataclass
class Host:
    name: str
    config: Path
    live: Path
    root: Path
    proc: subprocess.Popen[str] | None = None

    def load(self):  # noqa: ANN201 - releaser Config
        return load_config(self.config)

    def run(self, *args: str, expect: int | None = 0, timeout: float = 60,
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(RELEASER_BIN), "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=timeout)
        if expect is not None:
            assert proc.returncode == expect, (
                f"{self.name}: releaser {' '.join(args)}: exit {proc.returncode} != {expect}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def json(self, *args: str, expect: int | None = 0) -> Any:
        """The data of the --json envelope ({version, command, outcome, data})."""
        return json.loads(self.run(*args, "--json", expect=expect).stdout)["data"]

    def cli(self, *args: str, expect: int | None = 0) -> Any:
        """In-process CLI (saves an interpreter start); agents stay real processes."""
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args],
                                    catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"{self.name}: releaser {' '.join(args)}: exit {result.exit_code} != "
                f"{expect}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def cli_json(self, *args: str, expect: int | None = 0) -> Any:
        return json.loads(self.cli(*args, "--json", expect=expect).stdout)["data"]

    def live_sha(self) -> str | None:
        """The sha256 of the bytes the app opens at live_path now (None: nothing live).
        Hashed here, not asked of `releaser status`, whose stale-reader scan reads every
        process's open files on the machine (~20 ms a call on a busy one)."""
        try:
            with open(self.live, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            return None

    def releases(self) -> list[dict[str, Any]]:
        return self.cli_json("releases")

    def start_agent(self, argv: list[str] | None = None,
                    env: dict[str, str] | None = None) -> None:
        """`releaser agent` (or argv, a test-side wrapper) as a real subprocess."""
        cmd = argv or [str(RELEASER_BIN), "--config", str(self.config), "-v", "agent"]
        # dies with the test worker too (a timeout or crash must not leave agents polling)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True,
                                     env={**os.environ, **(env or {})},
                                     preexec_fn=die_with_parent)

    def signal_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop_agent(self, sig: int = signal.SIGTERM, *, signalled: bool = False) -> str:
        """Signal the agent (unless signalled already) and wait for it; its output."""
        if not signalled:
            self.signal_agent(sig)
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        out, _ = proc.communicate(timeout=20)
        return out


@dataclass
class Fleet:
    tmp: Path
    url: str
    endpoint: str
    bucket: Bucket
    key: Path
    pub: Path
    build: Host = field(init=False)
    hosts: list[Host] = field(default_factory=list)
    # {channel: {key: (etag, ack)}}: acks() GETs only the acks whose listed ETag changed
    _acks: dict[str, dict[str, tuple[str, dict[str, Any]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keygen(self.key, self.pub)
        self.build = self.host("build", channel="staging", signing=True)

    def section(self, name: str, channel: str, signing: bool, poll_s: float,
                keys: list[Path] | None = None, extra: str = "") -> str:
        pubs = json.dumps([str(p) for p in (keys or [self.pub])])
        lines = ["[fleet]", f'url = "{self.url}"', f'endpoint_url = "{self.endpoint}"',
                 'region = "us-east-1"', f'channel = "{channel}"', f'host_id = "{name}"',
                 f"poll_s = {poll_s}", f"public_keys = {pubs}"]
        if signing:
            lines.append(f'signing_key = "{self.key}"')
        return "\n".join(lines) + "\n" + extra

    def host(self, name: str, *, channel: str = "staging", signing: bool = False,
             poll_s: float = 0.3, keys: list[Path] | None = None, extra: str = "") -> Host:
        base = self.tmp / name
        base.mkdir(parents=True, exist_ok=True)
        h = Host(name, base / "releaser.toml", base / "app" / "tags.db", base / "store")
        h.config.write_text(config_text(h.live, h.root,
                                        self.section(name, channel, signing, poll_s, keys,
                                                     extra)))
        if name != "build":
            self.hosts.append(h)
        return h

    def make_db(self, name: str, rows: int = 2000, seed: int = 1) -> Path:
        path = self.tmp / "builds" / name
        write_sample(path, rows=rows, seed=seed)
        return path

    def push(self, db: Path, channel: str = "staging", expect: int | None = 0,
             note: str = "test") -> Any:
        result = self.build.cli("fleet", "push", str(db), "--channel", channel, "--note",
                                note, "--json", expect=expect)
        return json.loads(result.stdout)["data"] if result.exit_code == 0 else result

    def first_release(self, hosts: list[Host]) -> dict:
        """one.db (2,100 rows) pushed, then every host's agent started and applied on it:
        the release a wave rollout goes on from."""
        first = self.push(self.make_db("one.db", rows=2100, seed=1), note="first")
        for h in hosts:
            h.start_agent()
        self.wait_all(hosts, "applied", first["seq"])
        return first

    def fleet_json(self, *args: str, expect: int | None = 0) -> Any:
        return self.build.cli_json("fleet", *args, expect=expect)

    def acks(self, channel: str = "staging") -> dict[str, dict[str, Any]]:
        """Every host's ack as in the bucket now: one LIST, and a GET of each ack that is
        new or whose ETag (the MD5 of its bytes) changed since the last call."""
        seen = self._acks.setdefault(channel, {})
        out, fresh = {}, {}
        for item in self.bucket.listing(f"status/{channel}/"):
            etag, ack = seen.get(item.name, ("", {}))
            if not etag or item.etag.strip('"') != etag:
                obj = self.bucket.get(item.name)
                etag, ack = obj.etag.strip('"'), json.loads(obj.body)
            fresh[item.name] = (etag, ack)
            out[ack["host_id"]] = ack
        self._acks[channel] = fresh
        return out

    def wait_all(self, hosts: list[Host], state: str, seq: int, channel: str = "staging",
                 timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        names = {h.name for h in hosts}

        def done() -> dict[str, dict[str, Any]] | None:
            acks = {k: v for k, v in self.acks(channel).items() if k in names}
            ok = len(acks) == len(names) and all(
                a["state"] == state and a["seq"] == seq for a in acks.values())
            return acks if ok else None

        try:
            return wait_for(f"{sorted(names)} {state} seq {seq}", done, timeout)
        except AssertionError:
            logs = {h.name: h.stop_agent() for h in hosts if h.proc is not None}
            raise AssertionError(f"acks: {self.acks(channel)}\nagent logs: {logs}") from None

    def stop_all(self) -> None:
        """SIGTERM every agent, then wait for each: they shut down side by side."""
        for h in self.hosts:
            h.signal_agent()
        for h in self.hosts:
            h.stop_agent(signalled=True)


def python_argv(script: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / script), *args]
