"""[gates], [[checks]], [[probes]], [schema], [diff]: what a build is judged by.

Frozen dataclasses only; each checks its own values in __post_init__ and
raises ValueError with a message naming the key, which the converter
(config_convert) turns into one line naming the file. Nothing here reads a
file or a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True, eq=False, repr=False)
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

    def describe(self) -> str:
        parts = []
        if self.max_drop_pct is not None:
            parts.append(f"drop <= {self.max_drop_pct:g}%")
        if self.max_growth_pct is not None:
            parts.append(f"growth <= {self.max_growth_pct:g}%")
        if self.max_delta is not None:
            parts.append(f"change <= {self.max_delta:g}")
        return ", ".join(parts)


@dataclass(frozen=True, eq=False, repr=False)
class Check:
    """A SQL query returning one number, with fail/warn bounds and change limits."""

    name: str
    sql: str
    fail: Bounds = field(default_factory=Bounds)
    warn: Bounds = field(default_factory=Bounds)
    change: Change = field(default_factory=Change)


@dataclass(frozen=True, eq=False, repr=False)
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


@dataclass(frozen=True, eq=False, repr=False)
class Gates:
    """[gates]: integrity mode, probe runs, query limits and the required schema."""

    integrity: str = "quick"
    probe_runs: int = 20
    query_timeout_ms: int = 5000
    # integrity passes read the whole file, so they get their own, larger limit
    integrity_timeout_ms: int = 600_000
    # table -> columns the app needs
    required: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # SQLite's memory cap while reading a candidate: a file that needs more is rejected
    sqlite_heap_limit_mb: int = 64

    def __post_init__(self) -> None:
        if self.integrity not in ("quick", "full"):
            raise ValueError(f'integrity must be "quick" or "full", got "{self.integrity}"')
        if self.probe_runs < 1:
            raise ValueError(f"probe_runs must be >= 1, got {self.probe_runs}")
        for name in ("query_timeout_ms", "integrity_timeout_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sqlite_heap_limit_mb < 16:
            raise ValueError(
                f"sqlite_heap_limit_mb must be >= 16 (the gates' own connections need "
                f"about 2 MB each), got {self.sqlite_heap_limit_mb}")


@dataclass(frozen=True, eq=False, repr=False)
class Schema:
    """[schema]: which schema changes pass, and when a probe's plan warns."""

    allow_contract: bool = False
    # a probe plan that fully scans a table with more rows than this is a warning
    scan_rows_max: int = 100_000

    def __post_init__(self) -> None:
        if self.scan_rows_max < 0:
            raise ValueError(f"scan_rows_max must be >= 0, got {self.scan_rows_max}")


@dataclass(frozen=True, eq=False, repr=False)
class Diff:
    """[diff]: the columns `releaser diff` groups its row counts by."""

    group_by: tuple[str, ...] = ()
