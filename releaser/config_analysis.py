"""[analysis]: Prometheus queries that judge a release, and how long the monitor watches.

Frozen dataclasses only. A query is checked when the config loads: its
template variables are known ones, it has fail bounds, and it either has a
reduce rule or provably returns at most one series (promql.at_most_one), so
a bad query is a config error, never a surprise during a publish.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config_gates import Bounds

# [[analysis.prometheus]] reduce rules (a vector of several series -> one number)
REDUCERS = ("max", "min", "sum", "avg")


@dataclass(frozen=True, eq=False, repr=False)
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
        from . import promql  # its regexes compile only for a config that has a query

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


@dataclass(frozen=True, eq=False, repr=False)
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


def enabled(cfg: Analysis) -> bool:
    """Any [[analysis.prometheus]] entry (publish imports the HTTP client only then)."""
    return bool(cfg.prometheus)
