"""Find and load releaser.toml into one frozen, validated Config.

Every section is a frozen dataclass (config_gates, config_services,
config_calls, config_analysis, fleet.settings; [history] and the top level
here); config_convert walks the TOML tables against their fields so that an
unknown key, a wrong type or a bad value is one ConfigError naming the key
and the file. Loading reads the file once and writes nothing.

Sections are frozen with eq=False, repr=False: nothing compares or prints a
section, and each method dataclass() generates is compiled again by every
command at start-up (Bounds keeps its __eq__ and __repr__, a value in tests).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_analysis import Analysis
from .config_calls import Hooks, Notify, Verify
from .config_convert import Invalid, build
from .config_gates import Check, Diff, Gates, Probe, Schema
from .config_services import Monitor, Watch
from .errors import ConfigError
from .fleet.settings import Fleet

ENV_CONFIG = "RELEASER_CONFIG"
SYSTEM_CONFIG = Path("/etc/releaser/releaser.toml")


@dataclass(frozen=True, eq=False, repr=False)
class History:
    """[history]: keep_events 0 keeps every event; N > 0 compacts state.db after each
    publish to the newest N events (and the release rows none of them names), and
    rotates journal.jsonl to a checkpoint once it is over journal_max_bytes."""

    keep_events: int = 0
    journal_max_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.keep_events < 0:
            raise ValueError(f"keep_events must be >= 0 (0: keep all), got {self.keep_events}")
        if self.journal_max_bytes < 1:
            raise ValueError(f"journal_max_bytes must be >= 1, got {self.journal_max_bytes}")


@dataclass(frozen=True, eq=False, repr=False)
class Config:
    """The whole releaser.toml: the store's paths and every section, validated."""

    live_path: Path
    root: Path
    keep_releases: int = 5
    gates: Gates = field(default_factory=Gates)
    checks: tuple[Check, ...] = ()
    probes: tuple[Probe, ...] = ()
    monitor: Monitor = field(default_factory=Monitor)
    watch: Watch = field(default_factory=Watch)
    verify: Verify = field(default_factory=Verify)
    hooks: Hooks = field(default_factory=Hooks)
    notify: Notify = field(default_factory=Notify)
    schema: Schema = field(default_factory=Schema)
    diff: Diff = field(default_factory=Diff)
    fleet: Fleet = field(default_factory=Fleet)
    analysis: Analysis = field(default_factory=Analysis)
    history: History = field(default_factory=History)
    # where the config came from (None: built in code)
    source: Path | None = None

    def __post_init__(self) -> None:
        if self.keep_releases < 2:
            raise ValueError(f"keep_releases must be >= 2, got {self.keep_releases}")
        for kind, items in (("checks", self.checks), ("probes", self.probes)):
            names = [i.name for i in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate name {dupes[0]!r}")


def parse_config(data: dict[str, Any], *, source: Path | None = None) -> Config:
    """Build a Config from already-parsed TOML data."""
    base = source.parent if source else Path.cwd()
    where = str(source) if source else "config"
    try:
        config = build(Config, data, "", base)
    except Invalid as exc:
        raise ConfigError(f"{where}: {exc.key}: {exc.message}") from None
    return dataclasses.replace(config, source=source)


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--config PATH, else $RELEASER_CONFIG, else ./releaser.toml, else /etc/releaser/."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    local = Path("releaser.toml")
    if local.is_file():
        return local.resolve()
    if SYSTEM_CONFIG.is_file():
        return SYSTEM_CONFIG
    return None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    live: str | os.PathLike[str] | None = None,
) -> Config:
    """Load the config found by find_config_path, then apply --root/--live overrides."""
    found = find_config_path(path)
    data: dict[str, Any] = {}
    source: Path | None = None
    if found is not None:
        source = found.absolute()
        try:
            with open(source, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(
                f"{source}: config file not found; pass --config PATH or set {ENV_CONFIG}"
            ) from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a folder, not a TOML config file") from None
        except PermissionError:
            raise ConfigError(f"{source}: permission denied reading the config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    # command-line overrides are relative to the working directory
    if root is not None:
        data["root"] = str(Path(root).absolute())
    if live is not None:
        data["live_path"] = str(Path(live).absolute())
    if source is None and ("root" not in data or "live_path" not in data):
        raise ConfigError(
            "no config file found (looked at --config, $RELEASER_CONFIG, ./releaser.toml, "
            f"{SYSTEM_CONFIG}); pass --config PATH, or both --root DIR and --live PATH"
        )
    return parse_config(data, source=source)
