"""Release analysis: judge a live release by the app's own metrics in Prometheus.

Each `[[analysis.prometheus]]` entry is an instant query (`/api/v1/query`) that
comes down to one number, held to `fail = { min, max }` every `interval_s`.

Invariants:
- An evaluation never raises for anything Prometheus or the network does, and
  ends within the entry's timeout_s (one deadline for connect, send and answer).
- Its outcome is `pass`, `fail`, `inconclusive` or `error`. Only a number outside
  `fail` is a failure. No data (an empty answer, NaN), a Prometheus that does not
  answer or answers with an error are `inconclusive`; a query Prometheus rejects
  (syntax) or whose answer is not one number (several series and no `reduce`, a
  range vector, a string) is `error`, a config problem. Neither is ever the
  release's fault: they never revert anything by themselves; they are reported
  and counted, and `inconclusive_limit` of them make a run inconclusive.
- A run (a verify window, the monitor's watch of one release, a fleet wave)
  fails once one entry has failed `failure_limit` evaluations (not necessarily
  in a row). The first evaluation of an entry is one `interval_s` after the run
  starts, so its rate windows see the new release rather than the old one.
- Queries are templated with `{release_id}`, `{host}` and `{channel}` only;
  values are checked to be plain words, so a template cannot inject PromQL.

Used by verify.run_window (publish's window, with an AnalysisRun), by
analysis_watch (the monitor), by `releaser analyze` (evaluate_all) and, as a
fleet wave's promotion condition, by fleet/bake.py (an AnalysisRun stepped on
each agent poll): "pass" promotes, "fail" halts (roll back), "inconclusive"
pauses the rollout. analysis_record.py turns a run into what status shows.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import promql
from .config import Config
from .config_analysis import REDUCERS as REDUCER_NAMES
from .config_analysis import Analysis, PrometheusQuery
from .config_analysis import enabled as enabled  # analysis.enabled, for its callers
from .errors import ConfigError
from .httpclient import NoAnswer, http_request
from .state import utcnow

log = logging.getLogger("releaser.analysis")

REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "max": max, "min": min, "sum": math.fsum, "avg": lambda v: math.fsum(v) / len(v)}
assert tuple(REDUCERS) == REDUCER_NAMES
# read at most this much of an answer (a query reduced to one number is tiny)
ANSWER_MAX = 4 << 20

PASS, FAIL, INCONCLUSIVE, ERROR = "pass", "fail", "inconclusive", "error"
OUTCOMES = (PASS, FAIL, INCONCLUSIVE, ERROR)


def evaluate_all(cfg: Analysis, values: dict[str, str]) -> list[Measurement]:
    """Every entry once, now (`releaser analyze`, publish's preflight)."""
    return [evaluate(q, values) for q in cfg.prometheus]


def preflight(config: Config, release_id: int | None) -> list[Measurement]:
    """Before a publish changes anything: ask Prometheus each query once.

    A query Prometheus rejects, or whose answer is not one number, is a config
    error (exit 2, nothing changed). A Prometheus that does not answer only
    warns: the window's evaluations will say whether it came back."""
    found = evaluate_all(config.analysis, context(config, release_id))
    for m in found:
        if m.outcome == ERROR:
            raise ConfigError(f"[[analysis.prometheus]] {m.name}: {m.detail}; query: {m.query}")
        if m.outcome == INCONCLUSIVE:
            log.warning("analysis %s: inconclusive before the publish: %s", m.name, m.detail)
    return found


# -- one evaluation ------------------------------------------------------------


def context(config: Config | None, release_id: int | None, *, host: str | None = None,
            channel: str | None = None) -> dict[str, str]:
    """The template values for a release on this host: {host} is [fleet] host_id, else
    the host name; {channel} is [fleet] channel (a fleet wave passes its own)."""
    fleet = config.fleet if config is not None else None
    if host is None:
        host = (fleet.host_id if fleet is not None else "") or socket.gethostname()
    if channel is None:
        channel = fleet.channel if fleet is not None else ""
    return {"release_id": "" if release_id is None else str(release_id),
            "host": host, "channel": channel}


render = promql.render


@dataclass
class Measurement:
    """One evaluation of one entry."""

    name: str
    query: str  # as sent, templated
    outcome: str
    value: float | None
    threshold: str  # the fail bounds, e.g. "<= 0.05"
    detail: str
    at: str
    duration_ms: float = 0.0

    @property
    def inconclusive(self) -> bool:
        return self.outcome in (INCONCLUSIVE, ERROR)

    def as_dict(self) -> dict[str, Any]:
        value = self.value
        if value is not None and not math.isfinite(value):
            value = str(value)  # JSON has no Inf
        return {"name": self.name, "query": self.query, "outcome": self.outcome,
                "value": value, "threshold": self.threshold, "detail": self.detail,
                "at": self.at, "duration_ms": self.duration_ms}


class _Answer(Exception):
    def __init__(self, outcome: str, detail: str, value: float | None = None) -> None:
        super().__init__(detail)
        self.outcome, self.detail, self.value = outcome, detail, value


def evaluate(entry: PrometheusQuery, values: dict[str, str]) -> Measurement:
    """Run the entry's query once; never raises for Prometheus or network trouble."""
    t0 = time.perf_counter()
    at = utcnow()
    threshold = entry.fail.describe()
    try:
        query = render(entry.query, values)
    except ValueError as exc:
        return Measurement(entry.name, entry.query, ERROR, None, threshold, str(exc), at)
    try:
        value = _one_number(entry, query)
    except _Answer as ans:
        outcome, detail, value = ans.outcome, ans.detail, ans.value
    else:
        if entry.fail.contains(value):
            outcome, detail = PASS, "within bounds"
        else:
            outcome, detail = FAIL, f"outside {threshold}"
    return Measurement(entry.name, query, outcome, value, threshold, detail, at,
                       round((time.perf_counter() - t0) * 1000, 3))


def _one_number(entry: PrometheusQuery, query: str) -> float:
    data = query_prometheus(entry.address, query, timeout_s=entry.timeout_s)
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        samples = [result]
    elif kind == "vector" and isinstance(result, list):
        samples = [s.get("value") for s in result if isinstance(s, dict)]
    else:
        raise _Answer(ERROR, f"the answer is a {kind}, not a number or an instant vector "
                             "(a range vector needs e.g. max_over_time(...))")
    values: list[float] = []
    for sample in samples:
        try:
            values.append(float(sample[1]))
        except (TypeError, ValueError, IndexError):
            raise _Answer(INCONCLUSIVE, f"unreadable sample {sample!r}") from None
    if len(values) > 1 and entry.reduce is None:
        raise _Answer(ERROR, f"{len(values)} series and no reduce rule (config error: "
                             'add reduce = "max", "min", "sum" or "avg")')
    values = [v for v in values if not math.isnan(v)]
    if not values:
        if entry.inconclusive_when_empty:
            raise _Answer(INCONCLUSIVE, "no data")
        raise _Answer(PASS, "no data (counts as a pass: inconclusive_when_empty = false)")
    return REDUCERS[entry.reduce](values) if entry.reduce else values[0]


def query_prometheus(address: str, query: str, *, timeout_s: float) -> dict[str, Any]:
    """The `data` of a successful /api/v1/query answer; raises _Answer otherwise."""
    url = address.rstrip("/") + "/api/v1/query"
    form = urllib.parse.urlencode({"query": query, "timeout": f"{timeout_s:g}s"}).encode()
    try:
        status, body = http_request(
            url, timeout_s=timeout_s, data=form, method="POST", body_max=ANSWER_MAX,
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "User-Agent": "releaser-analysis"})
    except NoAnswer as exc:
        raise _Answer(INCONCLUSIVE, f"Prometheus at {address} did not answer: {exc}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise _Answer(INCONCLUSIVE, f"Prometheus at {address}: HTTP {status}, not a "
                                    "Prometheus API answer") from None
    if not isinstance(doc, dict):
        raise _Answer(INCONCLUSIVE, f"Prometheus at {address}: HTTP {status}, unexpected "
                                    "answer")
    if doc.get("status") != "success" or not isinstance(doc.get("data"), dict):
        kind, error = doc.get("errorType", "?"), doc.get("error", "")
        # bad_data: Prometheus rejects the query itself, which no retry will fix
        outcome = ERROR if kind == "bad_data" else INCONCLUSIVE
        raise _Answer(outcome, f"Prometheus at {address}: HTTP {status}, {kind}: {error}")
    return doc["data"]


# -- a run ---------------------------------------------------------------------


@dataclass
class _EntryState:
    entry: PrometheusQuery
    next_due: float
    evaluations: int = 0
    failures: int = 0
    inconclusive: int = 0
    last: Measurement | None = None
    last_failure: Measurement | None = None


@dataclass
class Verdict:
    """The state of a run: pass (so far), fail, or inconclusive."""

    outcome: str  # pass | fail | inconclusive
    reasons: list[str]
    measurements: list[Measurement]

    @property
    def ok(self) -> bool:
        return self.outcome == PASS

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reasons": self.reasons,
                "measurements": [m.as_dict() for m in self.measurements]}


class AnalysisRun:
    """The entries of [analysis] evaluated on their own intervals from `start`.

    step() evaluates the entries that are due; verdict() says whether the run
    failed (an entry reached failure_limit) or is inconclusive (an entry reached
    inconclusive_limit without failing). on_measure sees every measurement (the
    monitor counts them in metrics)."""

    def __init__(self, cfg: Analysis, values: dict[str, str], *, start: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_measure: Callable[[Measurement], None] | None = None) -> None:
        self.cfg = cfg
        self.values = values
        self.clock = clock
        self.start = clock() if start is None else start
        self.on_measure = on_measure
        self.entries = [_EntryState(e, self.start + e.interval_s) for e in cfg.prometheus]
        self.measurements: list[Measurement] = []

    def next_due(self) -> float:
        return min((s.next_due for s in self.entries), default=math.inf)

    def step(self) -> list[Measurement]:
        """Evaluate the entries that are due; returns their measurements."""
        return self._evaluate([s for s in self.entries if s.next_due <= self.clock()])

    def finish(self) -> list[Measurement]:
        """Evaluate, now, every entry not evaluated yet (a window shorter than its interval)."""
        return self._evaluate([s for s in self.entries if s.evaluations == 0])

    def _evaluate(self, states: list[_EntryState]) -> list[Measurement]:
        now = self.clock()
        done: list[Measurement] = []
        for s in states:
            m = evaluate(s.entry, self.values)
            s.evaluations += 1
            s.last = m
            if m.outcome == FAIL:
                s.failures += 1
                s.last_failure = m
            elif m.inconclusive:
                s.inconclusive += 1
            # the next one an interval after this one was due (no drift, no burst)
            s.next_due = max(s.next_due + s.entry.interval_s, now + s.entry.interval_s / 2)
            _log(m)
            done.append(m)
            self.measurements.append(m)
            if self.on_measure is not None:
                self.on_measure(m)
        return done

    def verdict(self) -> Verdict:
        failed = [s for s in self.entries if s.failures >= s.entry.failure_limit]
        if failed:
            reasons = [_fail_reason(s) for s in failed]
            return Verdict(FAIL, reasons, [s.last_failure for s in failed if s.last_failure])
        unsure = [s for s in self.entries if s.inconclusive >= self.cfg.inconclusive_limit]
        if unsure:
            reasons = [f"analysis {s.entry.name}: inconclusive {s.inconclusive} times "
                       f"(inconclusive_limit {self.cfg.inconclusive_limit}): "
                       f"{s.last.detail if s.last else ''}" for s in unsure]
            return Verdict(INCONCLUSIVE, reasons, self._last_of(unsure))
        return Verdict(PASS, [], [s.last for s in self.entries if s.last])

    @staticmethod
    def _last_of(states: list[_EntryState]) -> list[Measurement]:
        return [s.last for s in states if s.last is not None]

    def inconclusive_notes(self) -> list[str]:
        """One line per entry that had inconclusive evaluations (for warnings)."""
        return [f"analysis {s.entry.name}: {s.inconclusive} of {s.evaluations} evaluations "
                f"inconclusive ({s.last.detail if s.last else ''})"
                for s in self.entries if s.inconclusive]


def _fail_reason(s: _EntryState) -> str:
    """Which query, the value that tipped the run, and the threshold."""
    m = s.last_failure
    assert m is not None
    return (f"analysis {s.entry.name} failed: observed {_num(m.value)}, healthy "
            f"{m.threshold} ({s.failures} failed of {s.evaluations} evaluations, "
            f"failure_limit {s.entry.failure_limit}); query: {m.query}")


def _num(value: float | None) -> str:
    return "no value" if value is None else f"{value:g}"


def _log(m: Measurement) -> None:
    if m.outcome == PASS:
        log.info("analysis %s: %s (healthy %s)", m.name, _num(m.value), m.threshold)
    elif m.outcome == FAIL:
        log.warning("analysis %s: %s is outside %s; query: %s", m.name, _num(m.value),
                    m.threshold, m.query)
    elif m.outcome == ERROR:
        log.error("analysis %s: config problem: %s; query: %s", m.name, m.detail, m.query)
    else:
        log.warning("analysis %s: inconclusive: %s", m.name, m.detail)


def run_window(cfg: Analysis, values: dict[str, str], window_s: float, *,
               start: float | None = None, stop: threading.Event | None = None,
               sleep: Callable[[float], None] = time.sleep,
               on_measure: Callable[[Measurement], None] | None = None) -> Verdict:
    """Analyse for window_s (e.g. a fleet wave's promotion condition).

    Returns at the first failure, or when an entry becomes inconclusive, or at the
    end of the window; an entry not yet evaluated by then is evaluated once at
    the end, so every entry has a say. stop: return early with the verdict so far.
    A wave promotes on "pass", halts on "fail", pauses on "inconclusive".
    """
    run = AnalysisRun(cfg, values, start=start, on_measure=on_measure)
    end = run.start + window_s
    while True:
        run.step()
        verdict = run.verdict()
        if verdict.outcome != PASS:
            return verdict
        now = run.clock()
        if now >= end or (stop is not None and stop.is_set()):
            break
        pause = max(0.0, min(run.next_due(), end) - now)
        if stop is not None:
            if stop.wait(pause):
                break
        else:
            sleep(pause)
    if not (stop is not None and stop.is_set()):
        run.finish()
    return run.verdict()
