"""Shared fixtures: tiny real tag databases and a real store in tmp_path."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from releaser.cli import cli
from tests import sample
from tests.promserver import prom_stack  # noqa: F401 - a session fixture (analysis)
from tests.sample import write_sample

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "config" / "releaser.toml"
RELEASER_BIN = Path(sys.executable).parent / "releaser"


def config_text(live_path: Path, root: Path, extra: str = "", **replace: str) -> str:
    """The documented default config with live_path/root pointed into tmp_path.

    extra is appended (TOML tables); replace swaps `key = ...` top-level lines.
    """
    text = DEFAULT_CONFIG.read_text()
    text = re.sub(r'(?m)^live_path = .*$', f'live_path = "{live_path}"', text)
    text = re.sub(r'(?m)^root = .*$', f'root = "{root}"', text)
    for key, value in replace.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    return text + "\n" + extra


@dataclass
class Env:
    """A store in tmp_path: config file, paths, and helpers to drive the CLI."""

    tmp: Path
    config: Path
    live: Path
    root: Path

    def make_db(self, name: str = "tags.db", rows: int = 3000, seed: int = 1,
                sql: str | None = None, **kwargs: object) -> Path:
        """A real tags.db (builds/NAME); sql runs on it afterwards to break it on purpose."""
        path = self.tmp / "builds" / name
        write_sample(path, rows=rows, seed=seed, **kwargs)  # type: ignore[arg-type]
        if sql:
            conn = sqlite3.connect(path)
            conn.executescript(sql)
            conn.commit()
            conn.close()
        return path

    def write_config(self, extra: str = "", **replace: str) -> None:
        self.config.write_text(config_text(self.live, self.root, extra, **replace))

    def cli(self, *args: str, expect: int | None = 0) -> Result:
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args],
                                    catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code} != {expect}\nstdout:\n{result.stdout}\n"
                f"stderr:\n{result.stderr}")
        return result

    def cli_json(self, *args: str, expect: int | None = 0) -> object:
        """The data of the --json envelope ({version, command, outcome, data})."""
        doc = json.loads(self.cli(*args, "--json", expect=expect).stdout)
        assert doc["version"] == 1 and "outcome" in doc, doc
        return doc["data"]

    def run(self, *args: str, expect: int | None = 0, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The installed `releaser` in a real subprocess."""
        proc = subprocess.run(
            [str(RELEASER_BIN), "--config", str(self.config), *args],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **(env or {})},
        )
        if expect is not None:
            assert proc.returncode == expect, (
                f"exit {proc.returncode} != {expect}\nstdout:\n{proc.stdout}\n"
                f"stderr:\n{proc.stderr}")
        return proc

    def status(self) -> dict:
        return self.cli_json("status")  # type: ignore[return-value]

    def history(self) -> list[dict]:
        return self.cli_json("history", "--limit", "1000")  # type: ignore[return-value]

    def live_sha(self) -> str | None:
        return self.status()["live"]["sha256"]

    def snapshot(self) -> dict:
        """What must not change when an operation is refused."""
        slots = {
            p.relative_to(self.root).as_posix(): p.stat().st_ino
            for p in sorted((self.root / "slots").rglob("*")) if p.is_file()
        }
        return {
            "live_target": os.readlink(self.live) if self.live.is_symlink() else None,
            "live_sha": self.live_sha(),
            "slots": slots,
        }


# The longest tests go first, longest first: under `make test`'s `--dist worksteal` the
# worker that takes them starts them at once and the others take over the rest of its
# share, so they run beside the suite instead of after it. One systemd-nspawn boot (40-90 s),
# then two that mostly wait: a monitor watching an error rate for 20 s, and an agent
# restarted mid-bake (~15 s). Started last, the 20 s one was the suite's tail (~20 s).
FIRST = (
    "tests/test_systemd_real.py::",
    "tests/test_analysis_release.py::test_error_rate_rising_20_s_after_publish",
    "tests/fleet/test_waves_analysis.py::test_an_agent_restarted_mid_bake",
)


def _first_rank(item: pytest.Item) -> int:
    return next((i for i, prefix in enumerate(FIRST) if item.nodeid.startswith(prefix)),
                len(FIRST))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_first_rank)  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def _sample_builds_once(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each sample build is generated once per session and copied (see tests/sample.py).

    Under xdist the folder is the session's, shared by its workers (pytest-N/).
    """
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "sample-builds"
    folder.mkdir(exist_ok=True)
    sample.cache_dir = folder


def env_in(tmp: Path) -> Env:
    """An Env with its config written, its store and live path under tmp."""
    e = Env(tmp=tmp, config=tmp / "releaser.toml", live=tmp / "app" / "tags.db",
            root=tmp / "store")
    e.write_config()
    return e


def publish_two(env: Env, builds: tuple[Path, Path] | None = None) -> Env:
    """init, then two good releases: 1 (idle) and 2 (live), published in-process from
    builds (default: the 3,000-row samples seeds 1 and 2)."""
    env.cli("init")
    for build in builds or (env.make_db("one.db", seed=1), env.make_db("two.db", seed=2)):
        env.cli("publish", str(build))
    return env


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return env_in(tmp_path)


@pytest.fixture
def store(env: Env) -> Env:
    """An initialised store with no release yet."""
    env.cli("init")
    return env


@pytest.fixture
def published(env: Env) -> Env:
    """A store with two good releases: 1 (idle) and 2 (live)."""
    return publish_two(env)


MakeDb = Callable[..., Path]
