"""Release analysis against a real Prometheus scraping a real test app.

One Prometheus (1 s scrapes) and one app per test session (xdist worker); each test
has a host of the app of its own and sets the fault it needs.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from releaser import analysis, promql
from releaser.config_analysis import Analysis, PrometheusQuery
from releaser.config_gates import Bounds

from . import promserver
from .conftest import DEFAULT_CONFIG, Env
from .promserver import Fault, LoadGen, PromServer, Stack, VHost, free_port

# fixtures: the session's Prometheus and app; prom; app, a host of the test's own
stack, prom, app = promserver.stack, promserver.prom, promserver.app

# the share of 5xx answers of the app on {host} over the last 5 s (0 when none)
ERROR_RATE = ('(sum(rate(http_requests_total{host="{host}",status=~"5.."}[5s]))'
              ' or vector(0)) / sum(rate(http_requests_total{host="{host}"}[5s]))')
BY_STATUS = 'sum by (status) (rate(http_requests_total{host="{host}"}[5s]))'


def entry(prom: str, query: str = ERROR_RATE, **kw: object) -> PrometheusQuery:
    values: dict[str, object] = {"name": "error_rate", "address": prom, "query": query,
                                 "fail": Bounds(max=0.05), "interval_s": 1.0, "timeout_s": 3.0}
    values.update(kw)
    return PrometheusQuery(**values)  # type: ignore[arg-type]


def ctx(cfg: Analysis, app: VHost | None = None, rid: int = 7) -> dict[str, str]:
    return analysis.context(None, rid, host=app.name if app else "app1",
                            channel="production")


def test_healthy_app_passes_and_a_rising_error_rate_fails_the_run(app: VHost,
                                                                 prom: PromServer) -> None:
    e = entry(prom.url, failure_limit=2, interval_s=0.5)
    cfg = Analysis(prometheus=(e,))
    m = analysis.evaluate(e, ctx(cfg, app))
    assert (m.outcome, m.value) == ("pass", 0.0), m
    app.fault = Fault(error_ratio=0.5, start=time.monotonic() + 1)
    seen: list[analysis.Measurement] = []
    verdict = analysis.run_window(cfg, ctx(cfg, app), window_s=20, on_measure=seen.append)
    assert verdict.outcome == "fail", verdict
    # failure_limit 2: the run fails at the second failed evaluation, not the first
    outcomes = [m.outcome for m in seen]
    assert outcomes[0] == "pass" and outcomes[-2:] == ["fail", "fail"]
    assert outcomes.count("fail") == 2
    assert seen[-1].at > seen[0].at and len(seen) < 20 / 0.5  # ended at the failure
    [failed] = verdict.measurements
    assert failed is seen[-1] and failed.value is not None and failed.value > 0.05
    assert f'host="{app.name}"' in failed.query and failed.threshold == "<= 0.05"
    assert verdict.reasons[0] == (
        f"analysis error_rate failed: observed {failed.value:g}, healthy <= 0.05 (2 failed "
        f"of {len(seen)} evaluations, failure_limit 2); query: {failed.query}")


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
    e = entry(prom.url, "vector(0)", interval_s=0.3)
    cfg = Analysis(prometheus=(e,))
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
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


def test_the_shipped_examples_judge_the_three_seed_triggers(store: Env, app: VHost,
                                                            stack: Stack) -> None:
    """config/releaser.toml's commented [analysis] examples, uncommented, against the app
    (its `host` label standing for the job, 3 s rate windows instead of 1 m)."""
    text = DEFAULT_CONFIG.read_text()
    lines = text[text.index("# [analysis]"):].splitlines()
    toml = "\n".join(line[2:] if line.startswith("# ") else "" for line in lines)
    toml = (toml.replace('job="prompt-scribe"', f'host="{app.name}"')
            .replace("[1m]", "[3s]").replace("http://127.0.0.1:9090", stack.prom.url))
    store.write_config(toml)
    doc = store.cli_json("analyze")
    found = {m["name"]: m for m in doc["measurements"]}  # type: ignore[index]
    assert set(found) == {"error_rate", "db_connections", "p95_latency"}
    assert {m["outcome"] for m in found.values()} == {"pass"}, found
    assert found["db_connections"]["value"] == 0.3
    # every 2nd answer a 500, each after 2.2 s, 9 of 10 connections in use
    app.connections_in_use = 9
    app.fault = Fault(error_ratio=0.5, latency_s=2.2)
    slow_clients = LoadGen(stack.app, app.name, rate=5, clients=6)
    try:
        deadline = time.monotonic() + 25
        while True:
            result = store.cli("analyze", "--json", expect=None)
            found = {m["name"]: m for m in json.loads(result.stdout)["data"]["measurements"]}
            if {m["outcome"] for m in found.values()} == {"fail"} or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        slow_clients.stop()
    assert result.exit_code == 1, found
    assert found["error_rate"]["value"] > 0.05
    assert found["db_connections"]["value"] == 0.9
    assert found["p95_latency"]["value"] > 2.0
    assert "Error: analysis error_rate: fail: outside <= 0.05" in result.stderr


@pytest.mark.parametrize("query, one", [
    ("1", True), ("vector(0)", True), ("scalar(up)", True), ("time() - max(x)", True),
    ('sum(rate(a{s=~"5.."}[1m])) / sum(rate(a[1m]))', True),
    ('(sum(rate(a{s=~"5.."}[1m])) or vector(0)) / sum(rate(a[1m]))', True),
    ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m])))", True),
    ("histogram_quantile(0.95, sum(rate(h_bucket[5m])) by (le))", True),
    ("max(in_use / pool_max)", True), ("topk(1, up)", True), ("sum by () (up)", True),
    ("max_over_time(sum(up)[5m:1m])", True), ("sum(up) > bool 0.5", True),
    ("sum(up offset 5m) and on() vector(1)", True), ("clamp_max(sum(up), 1)", True),
    ("up", False), ('up{job="x"}', False), ("rate(a[1m])", False), ("in_use / pool_max", False),
    ("sum by (status) (a)", False), ("sum without (instance) (a)", False),
    ("sum(a) by (le)", False), ("histogram_quantile(0.95, sum by (le, route) (h))", False),
    ("histogram_quantile(0.95, rate(h_bucket[5m]))", False), ("topk(3, up)", False),
    ('count_values("v", up)', False), ("up and on() sum(up)", False), ("sum(", False),
])
def test_which_queries_need_a_reduce_rule(query: str, one: bool) -> None:
    """promql.at_most_one: True only when the shape guarantees one series at most."""
    assert promql.at_most_one(query) is one
