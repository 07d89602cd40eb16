"""Load and check releaser.toml into plain frozen dataclasses.

Every section is a dataclass; a small typed converter walks the TOML tables
against the dataclass fields so that an unknown key, a wrong type or a bad
value is an error naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import promql
from .errors import ConfigError
from .fleet.settings import Fleet

ENV_CONFIG = "RELEASER_CONFIG"
# [[analysis.prometheus]] reduce rules (a vector of several series -> one number)
REDUCERS = ("max", "min", "sum", "avg")
SYSTEM_CONFIG = Path("/etc/releaser/releaser.toml")


@dataclass(frozen=True)
class Bounds:
    """Inclusive range; None means unbounded on that side."""

    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")

    def contains(self, value: float) -> bool:
        if self.min is not None and value < self.min:
            return False
        return not (self.max is not None and value > self.max)

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"[{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f">= {self.min:g}"
        if self.max is not None:
            return f"<= {self.max:g}"
        return "any"

    @property
    def empty(self) -> bool:
        return self.min is None and self.max is None


@dataclass(frozen=True)
class Change:
    """Allowed change against the live release's recorded value."""

    max_drop_pct: float | None = None
    max_growth_pct: float | None = None
    max_delta: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_drop_pct", "max_growth_pct", "max_delta"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")

    @property
    def empty(self) -> bool:
        return self.max_drop_pct is None and self.max_growth_pct is None and self.max_delta is None


@dataclass(frozen=True)
class Check:
    """A SQL query returning one number, with fail/warn bounds and change limits."""

    name: str
    sql: str
    fail: Bounds = field(default_factory=Bounds)
    warn: Bounds = field(default_factory=Bounds)
    change: Change = field(default_factory=Change)


@dataclass(frozen=True)
class Probe:
    """A query the app runs; timed over probe_runs, p95 against budget_ms."""

    name: str
    sql: str
    budget_ms: float = 100.0
    min_rows: int = 0
    params: tuple[str | int | float, ...] = ()

    def __post_init__(self) -> None:
        if self.budget_ms <= 0:
            raise ValueError(f"budget_ms must be > 0, got {self.budget_ms}")
        if self.min_rows < 0:
            raise ValueError(f"min_rows must be >= 0, got {self.min_rows}")


@dataclass(frozen=True)
class Gates:
    integrity: str = "quick"
    probe_runs: int = 20
    query_timeout_ms: int = 5000
    # integrity passes read the whole file, so they get their own, larger limit
    integrity_timeout_ms: int = 600_000
    # table -> columns the app needs
    required: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.integrity not in ("quick", "full"):
            raise ValueError(f'integrity must be "quick" or "full", got "{self.integrity}"')
        if self.probe_runs < 1:
            raise ValueError(f"probe_runs must be >= 1, got {self.probe_runs}")
        for name in ("query_timeout_ms", "integrity_timeout_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Monitor:
    interval_s: float = 300.0
    # full sha256 of the live file every N checks (cheap stat comparison otherwise)
    hash_every: int = 12
    # PRAGMA quick_check every N checks
    integrity_every: int = 12
    failures_before_revert: int = 2
    metrics_listen: str = "127.0.0.1:9464"
    misfire_grace_s: float = 60.0

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        for name in ("hash_every", "integrity_every", "failures_before_revert"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        host, _, port = self.metrics_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f'metrics_listen must be "HOST:PORT", got "{self.metrics_listen}"')


@dataclass(frozen=True)
class Watch:
    inbox: Path | None = None
    settle_s: float = 5.0
    polling: bool = False
    # the store lock was busy: try the same file again after this long
    lock_retry_s: float = 5.0
    # processed files (and their NAME.reason.json) older than this are deleted; 0 keeps all
    keep_done_days: float = 30.0
    keep_rejected_days: float = 30.0

    def __post_init__(self) -> None:
        if self.settle_s < 0:
            raise ValueError(f"settle_s must be >= 0, got {self.settle_s}")
        if self.lock_retry_s <= 0:
            raise ValueError(f"lock_retry_s must be > 0, got {self.lock_retry_s}")
        for key in ("keep_done_days", "keep_rejected_days"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 keeps everything), got "
                                 f"{getattr(self, key)}")


@dataclass(frozen=True)
class HttpTarget:
    """An HTTP endpoint called with a per-attempt deadline and retries."""

    url: str
    timeout_s: float = 5.0
    retries: int = 3
    # first retry after this long (webhooks double it each time)
    retry_delay_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f'url must start with http:// or https://, got "{self.url}"')
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0 or self.retry_delay_s < 0:
            raise ValueError("retries and retry_delay_s must be >= 0")


@dataclass(frozen=True)
class HttpProbe(HttpTarget):
    """[[verify.http]]: the app answers expect_status (and the body checks) when healthy."""

    expect_status: int = 200
    # dotted path into a JSON body, and the value it must equal (optional)
    json_field: str | None = None
    json_value: str | int | float | bool | None = None
    body_contains: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.json_value is not None and self.json_field is None:
            raise ValueError("json_value needs json_field (the dotted path it applies to)")


@dataclass(frozen=True)
class Command:
    """An argv list run without a shell, under a time limit."""

    argv: tuple[str, ...]
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("argv must not be empty")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


class ExecProbe(Command):
    """[[verify.exec]]: exit 0 means the app is healthy on the new release."""


@dataclass(frozen=True)
class Verify:
    window_s: float = 0.0
    # one round of all probes every interval_s inside the window
    interval_s: float = 5.0
    http: tuple[HttpProbe, ...] = ()
    exec: tuple[ExecProbe, ...] = ()

    def __post_init__(self) -> None:
        if self.window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {self.window_s}")
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")


class Hook(Command):
    """[hooks]: run at a step of publish/rollback with RELEASER_* in the environment."""


@dataclass(frozen=True)
class Hooks:
    before_swap: tuple[Hook, ...] = ()
    after_swap: tuple[Hook, ...] = ()
    after_rollback: tuple[Hook, ...] = ()
    on_reject: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class Webhook(HttpTarget):
    """[[notify.webhook]]: a JSON POST for each event that matters."""

    # which actions to send (reject, publish, rollback, auto-revert,
    # fleet-rollout-aborted); empty means all
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        # fleet-rollout-aborted: sent by agents (releaser/fleet/rollout.py)
        unknown = sorted(set(self.events) - {"reject", "publish", "rollback", "auto-revert",
                                             "fleet-rollout-aborted"})
        if unknown:
            raise ValueError(f"events: unknown action {unknown[0]!r} (known: reject, publish, "
                             "rollback, auto-revert, fleet-rollout-aborted)")


@dataclass(frozen=True)
class Notify:
    webhook: tuple[Webhook, ...] = ()


@dataclass(frozen=True)
class Schema:
    allow_contract: bool = False
    # a probe plan that fully scans a table with more rows than this is a warning
    scan_rows_max: int = 100_000

    def __post_init__(self) -> None:
        if self.scan_rows_max < 0:
            raise ValueError(f"scan_rows_max must be >= 0, got {self.scan_rows_max}")


@dataclass(frozen=True)
class Diff:
    group_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class History:
    """[history]: keep_events 0 keeps every event; N > 0 compacts state.db after each
    publish to the newest N events (and the release rows none of them names)."""

    keep_events: int = 0

    def __post_init__(self) -> None:
        if self.keep_events < 0:
            raise ValueError(f"keep_events must be >= 0 (0: keep all), got {self.keep_events}")


@dataclass(frozen=True)
class PrometheusQuery:
    """[[analysis.prometheus]]: one PromQL instant query held to fail bounds."""

    name: str
    address: str
    query: str
    fail: Bounds = field(default_factory=Bounds)
    # how a vector of several series becomes one number; None: the query must
    # provably return at most one series (promql.at_most_one)
    reduce: str | None = None
    # an empty answer is inconclusive (default); false: it counts as a pass
    inconclusive_when_empty: bool = True
    # failed evaluations in one run before the analysis fails
    failure_limit: int = 1
    interval_s: float = 30.0
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.address.startswith(("http://", "https://")):
            raise ValueError(f'address must start with http:// or https://, got '
                             f'"{self.address}"')
        if self.fail.empty:
            raise ValueError("fail needs min or max (the bounds a healthy value stays in)")
        if self.reduce is not None and self.reduce not in REDUCERS:
            raise ValueError(f'reduce must be one of {", ".join(REDUCERS)}, got '
                             f'"{self.reduce}"')
        if self.failure_limit < 1:
            raise ValueError(f"failure_limit must be >= 1, got {self.failure_limit}")
        if self.interval_s <= 0 or self.timeout_s <= 0:
            raise ValueError("interval_s and timeout_s must be > 0")
        unknown = sorted(promql.template_names(self.query) - set(promql.TEMPLATE_VARS))
        if unknown:
            raise ValueError(f"query: unknown template variable {{{unknown[0]}}} (known: "
                             + ", ".join(f"{{{v}}}" for v in promql.TEMPLATE_VARS) + ")")
        sample = promql.render(self.query, promql.SAMPLE_VALUES)
        if self.reduce is None and not promql.at_most_one(sample):
            raise ValueError(
                "query may return several series and has no reduction rule: add "
                'reduce = "max", "min", "sum" or "avg", or aggregate it to one series '
                "(e.g. sum(...) without by)")


@dataclass(frozen=True)
class Analysis:
    """[analysis]: the queries, the monitor's watch after a publish, inconclusive limit."""

    # the monitor analyses a release for this long after a publish made it live
    watch_s: float = 300.0
    # inconclusive evaluations of one entry in a run before the run is inconclusive
    inconclusive_limit: int = 3
    prometheus: tuple[PrometheusQuery, ...] = ()

    def __post_init__(self) -> None:
        if self.watch_s < 0:
            raise ValueError(f"watch_s must be >= 0, got {self.watch_s}")
        if self.inconclusive_limit < 1:
            raise ValueError(f"inconclusive_limit must be >= 1, got {self.inconclusive_limit}")
        names = [q.name for q in self.prometheus]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"prometheus: duplicate name {dupes[0]!r}")


@dataclass(frozen=True)
class Config:
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


# --------------------------------------------------------------------------
# converter


class _Invalid(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return "a list"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            Path: "a path string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, key: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for arg in args:
            try:
                return _convert(arg, value, key, base)
            except _Invalid:
                continue
        raise _Invalid(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise _Invalid(key, f"expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{key}[{i}]", base) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid(key, f"expected a table, got {value!r}")
        _k, v_tp = typing.get_args(tp)
        return {k: _convert(v_tp, v, f"{key}.{k}", base) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Invalid(key, f"expected a table, got {value!r}")
        return _build(tp, value, key, base)
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid(key, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise _Invalid(key, f"expected a path string, got {value!r}")
        p = Path(value).expanduser()
        # relative paths resolve against the config file's folder
        return p if p.is_absolute() else (base / p)
    raise _Invalid(key, f"unsupported type {tp!r}")  # pragma: no cover - programming error


def _build(cls: Any, data: dict[str, Any], prefix: str, base: Path) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise _Invalid(full, f"unknown key (known keys here: {known})")
        kwargs[key] = _convert(hints[key], value, full, base)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise _Invalid(f"{prefix}.{name}" if prefix else name, "is required")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise _Invalid(prefix or "(top level)", str(exc)) from None


def parse_config(data: dict[str, Any], *, source: Path | None = None) -> Config:
    """Build a Config from already-parsed TOML data."""
    base = source.parent if source else Path.cwd()
    where = str(source) if source else "config"
    try:
        config = _build(Config, data, "", base)
    except _Invalid as exc:
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
