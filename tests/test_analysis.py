"""Release analysis against a real Prometheus scraping a real test app.

One Prometheus (1 s scrapes) and one app per module; each test points the app at
its own live_path and sets the fault it needs.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from releaser import analysis
from releaser.config import Analysis, Bounds, PrometheusQuery
from tests.sample import write_sample

from .promserver import Fault, LoadGen, PromServer, TestApp, VHost, free_port, need_prometheus

# the share of 5xx answers of the app on {host} over the last 5 s (0 when none)
ERROR_RATE = ('(sum(rate(http_requests_total{host="{host}",status=~"5.."}[5s]))'
              ' or vector(0)) / sum(rate(http_requests_total{host="{host}"}[5s]))')
BY_STATUS = 'sum by (status) (rate(http_requests_total{host="{host}"}[5s]))'


@dataclass
class Stack:
    app: TestApp
    prom: PromServer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need_prometheus()
    app = TestApp()
    prom = PromServer(tmp_path_factory.mktemp("prom"), [app.target])
    try:
        yield Stack(app, prom.start())
    finally:
        prom.stop()
        app.close()


@pytest.fixture
def prom(stack: Stack) -> PromServer:
    return stack.prom


@pytest.fixture
def app(stack: Stack, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[VHost]:
    """This test's own healthy host of the app, under load, with data in Prometheus."""
    name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[-40:]
    db = tmp_path / "healthy.db"
    write_sample(db, rows=200, seed=1)
    host = stack.app.add_host(name, db)
    load = LoadGen(stack.app, name)
    try:
        # two scrapes with traffic: rate() has an answer
        stack.prom.wait_for(f'sum(rate(http_requests_total{{host="{name}"}}[5s]))',
                            lambda v: v and v[0] > 0)
        yield host
    finally:
        load.stop()


def entry(prom: str, query: str = ERROR_RATE, **kw: object) -> PrometheusQuery:
    values: dict[str, object] = {"name": "error_rate", "address": prom, "query": query,
                                 "fail": Bounds(max=0.05), "interval_s": 1.0, "timeout_s": 3.0}
    values.update(kw)
    return PrometheusQuery(**values)  # type: ignore[arg-type]


def ctx(cfg: Analysis, app: VHost | None = None, rid: int = 7) -> dict[str, str]:
    return analysis.context(cfg, rid, host=app.name if app else "app1",
                            channel="production")


def test_healthy_app_passes_and_a_rising_error_rate_fails_the_run(app: VHost,
                                                                 prom: PromServer) -> None:
    e = entry(prom.url)
    cfg = Analysis(prometheus=(e,))
    m = analysis.evaluate(e, ctx(cfg, app))
    assert (m.outcome, m.value) == ("pass", 0.0), m
    app.fault = Fault(error_ratio=0.5, start=time.monotonic() + 2)
    t0 = time.monotonic()
    verdict = analysis.run_window(cfg, ctx(cfg, app), window_s=20)
    assert verdict.outcome == "fail", verdict
    assert time.monotonic() - t0 < 15
    [failed] = verdict.measurements
    assert failed.value is not None and failed.value > 0.05
    assert f'host="{app.name}"' in failed.query and failed.threshold == "<= 0.05"
    assert "observed" in verdict.reasons[0] and failed.query in verdict.reasons[0]


def test_failure_limit_needs_that_many_failed_evaluations(app: VHost,
                                                          prom: PromServer) -> None:
    app.fault = Fault(error_ratio=0.5)
    cfg = Analysis(prometheus=(entry(prom.url, failure_limit=3, interval_s=0.5),))
    prom.wait_for(analysis.render(ERROR_RATE, ctx(cfg, app)), lambda v: v and v[0] > 0.2)
    run = analysis.AnalysisRun(cfg, ctx(cfg, app))
    outcomes = []
    while run.verdict().outcome == "pass":
        time.sleep(max(0.0, run.next_due() - time.monotonic()))
        outcomes += [m.outcome for m in run.step()]
    assert outcomes == ["fail", "fail", "fail"]
    assert "3 failed of 3 evaluations, failure_limit 3" in run.verdict().reasons[0]


def test_prometheus_unreachable_is_inconclusive_never_a_failure() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    m = analysis.evaluate(entry(dead), {"host": "x"})
    assert m.outcome == "inconclusive" and "did not answer" in m.detail
    cfg = Analysis(inconclusive_limit=2, prometheus=(entry(dead, interval_s=0.2),))
    verdict = analysis.run_window(cfg, ctx(cfg), window_s=5)
    assert verdict.outcome == "inconclusive"
    assert "inconclusive 2 times" in verdict.reasons[0]


def test_a_stopped_prometheus_is_inconclusive(tmp_path: Path, stack: Stack) -> None:
    own = PromServer(tmp_path / "prom", [stack.app.target]).start()
    e = entry(own.url, query="vector(0.5)", fail=Bounds(max=1))
    try:
        assert analysis.evaluate(e, {}).outcome == "pass"
    finally:
        own.stop()
    m = analysis.evaluate(e, {})
    assert m.outcome == "inconclusive", m


def test_no_data_is_inconclusive_unless_configured_as_a_pass(prom: PromServer) -> None:
    q = 'sum(rate(http_requests_total{status="418"}[5s]))'
    assert prom.query(q)["result"] == []
    assert analysis.evaluate(entry(prom.url, q), {}).outcome == "inconclusive"
    m = analysis.evaluate(entry(prom.url, q, inconclusive_when_empty=False), {})
    assert m.outcome == "pass" and m.value is None


def test_several_series_need_a_reduce_rule(app: VHost, prom: PromServer) -> None:
    app.fault = Fault(error_ratio=0.5)
    values = {"host": app.name}
    # the premise, from the real Prometheus: this query answers one series per status
    seen = prom.wait_for(analysis.render(BY_STATUS, values),
                         lambda v: len(v) == 2 and min(v) > 0)
    with pytest.raises(ValueError, match="several series and has no reduction rule"):
        entry(prom.url, BY_STATUS)
    m = analysis.evaluate(entry(prom.url, BY_STATUS, reduce="max", fail=Bounds(max=1000)),
                          values)
    assert m.outcome == "pass" and m.value is not None
    assert min(seen) < m.value  # the larger of the two series
    total = analysis.evaluate(entry(prom.url, BY_STATUS, reduce="sum",
                                    fail=Bounds(max=1000)), values)
    assert total.value is not None and total.value > m.value
    # should several series come back anyway (at_most_one bypassed here), the
    # evaluation is a config error, never a failure of the release
    e = entry(prom.url, "vector(1)", fail=Bounds(max=0))
    object.__setattr__(e, "query", BY_STATUS)
    m = analysis.evaluate(e, values)
    assert m.outcome == "error" and "2 series and no reduce rule" in m.detail


def test_a_query_prometheus_rejects_is_an_error(prom: PromServer) -> None:
    e = entry(prom.url, "sum(rate(http_requests_total[5s]) + ", reduce="max")
    m = analysis.evaluate(e, {})
    assert m.outcome == "error" and "bad_data" in m.detail


def test_templating_selects_the_release(prom: PromServer) -> None:
    e = entry(prom.url, "sum(vector({release_id}))", fail=Bounds(max=100))
    assert analysis.evaluate(e, ctx(Analysis(), rid=42)).value == 42.0
    e = entry(prom.url, 'count(up{job="{channel}"}) or vector(0)', fail=Bounds(max=100))
    assert analysis.evaluate(e, {"channel": "nope"}).value == 0.0
    # a value that is not a plain word never reaches Prometheus
    bad = analysis.evaluate(e, {"channel": 'x"} or vector(9) #'})
    assert bad.outcome == "error" and "not a plain word" in bad.detail


def test_run_window_stops_early_when_asked(prom: PromServer) -> None:
    e = entry(prom.url, "vector(0)", interval_s=0.5)
    cfg = Analysis(prometheus=(e,))
    stop = threading.Event()
    threading.Timer(1.2, stop.set).start()
    t0 = time.monotonic()
    verdict = analysis.run_window(cfg, ctx(cfg), window_s=30, stop=stop)
    assert time.monotonic() - t0 < 5
    assert verdict.outcome == "pass" and len(verdict.measurements) == 1


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="unknown template variable {release}"):
        entry("http://p:9090", 'sum(x{r="{release}"})')
    with pytest.raises(ValueError, match="fail needs min or max"):
        entry("http://p:9090", fail=Bounds())
    with pytest.raises(ValueError, match='reduce must be one of max, min, sum, avg'):
        entry("http://p:9090", reduce="median")
    with pytest.raises(ValueError, match="address must start with http"):
        entry("p:9090")
    with pytest.raises(ValueError, match="duplicate name 'error_rate'"):
        Analysis(prometheus=(entry("http://p"), entry("http://p")))
    # the histogram quantile over buckets summed by le is one series: no reduce needed
    entry("http://p", "histogram_quantile(0.95, sum by (le) "
          "(rate(http_request_duration_seconds_bucket[5m])))")
