"""What one gate says about a candidate, and the report of all of them: plain data.

A GateResult is one check's outcome (pass | warn | fail | error), what it observed
and against what; a GateReport holds them in the order they ran. No I/O here, and
as_dict() is the --json shape the README documents.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, WARN, FAIL, ERROR = "pass", "warn", "fail", "error"
STRUCTURAL = ("file", "integrity", "foreign_keys", "schema")


@dataclass
class GateResult:
    """One gate's verdict on a candidate: what it saw against its limit."""

    name: str
    kind: str  # file | integrity | foreign_keys | schema | check | probe
    outcome: str  # pass | warn | fail | error
    observed: Any = None
    threshold: str | None = None
    duration_ms: float = 0.0
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reason(self) -> str:
        text = f"{self.kind} {self.name}: {self.outcome}"
        if self.detail:
            text += f": {self.detail}"
        elif self.threshold is not None:
            text += f": observed {fmt(self.observed)}, expected {self.threshold}"
        return text


@dataclass
class GateReport:
    """Every gate result for one candidate file."""

    path: str
    results: list[GateResult] = field(default_factory=list)

    def blocking(self, strict: bool = False) -> list[GateResult]:
        bad = (FAIL, ERROR, WARN) if strict else (FAIL, ERROR)
        return [r for r in self.results if r.outcome in bad]

    def passed(self, strict: bool = False) -> bool:
        return not self.blocking(strict)

    def warnings(self) -> list[GateResult]:
        return [r for r in self.results if r.outcome == WARN]

    def check_values(self) -> dict[str, float]:
        return {
            r.name: r.observed for r in self.results
            if r.kind == "check" and isinstance(r.observed, int | float)
        }

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "checks": [r.as_dict() for r in self.results]}


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "NULL" if value is None else str(value)


@contextmanager
def timed(result: GateResult) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        result.duration_ms = round((time.perf_counter() - t0) * 1000, 3)
