"""Analysis deciding real releases: publish's verify window and the monitor's watch,
with a real Prometheus scraping a real app that reads the live release.

The app's host for each test serves from the store's live_path; a Fault tied to a
release id makes it fail only while that release is live, as a bad build would.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from releaser.config import load_config
from releaser.monitor import Monitor

from . import promserver
from .conftest import Env
from .monitorproc import MonitorProc, set_config, wait_for
from .promserver import Fault, PromServer, Stack, app_host

stack = promserver.stack  # fixture: the session's Prometheus and app

# the share of 5xx answers of the release on this test's host, over 5 s
ERROR_RATE = ('(sum(rate(http_requests_total{{host="{host}",release="{{release_id}}",'
              'status=~"5.."}}[5s])) or vector(0)) / sum(rate(http_requests_total'
              '{{host="{host}",release="{{release_id}}"}}[5s]))')


def analysis_toml(address: str, query: str, *, window_s: float = 0, watch_s: float = 300,
                  interval_s: float = 1, inconclusive_limit: int = 3,
                  reduce: str | None = None) -> str:
    verify = f"[verify]\nwindow_s = {window_s}\ninterval_s = 1\n\n" if window_s else ""
    return (f"{verify}[analysis]\nwatch_s = {watch_s}\n"
            f"inconclusive_limit = {inconclusive_limit}\n\n"
            f"[[analysis.prometheus]]\nname = \"error_rate\"\naddress = \"{address}\"\n"
            f"query = {json.dumps(query)}\nfail = {{ max = 0.05 }}\n"
            f"interval_s = {interval_s}\ntimeout_s = 3\n"
            + (f'reduce = "{reduce}"\n' if reduce else ""))


def counter(env: Env, name: str) -> int:
    conn = sqlite3.connect(f"file:{env.root / 'state.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    finally:
        conn.close()
    return int(row[0]) if row else 0


def test_error_rate_rising_in_the_verify_window_swaps_back(
        store: Env, stack: Stack) -> None:
    store.cli("publish", str(store.make_db("one.db", seed=1)))
    with app_host(stack, store.live) as host:
        query = ERROR_RATE.format(host=host.name)
        host.fault = Fault(error_ratio=0.5, release_id=2)  # a bad build: every 2nd answer 500
        store.write_config(analysis_toml(stack.prom.url, query, window_s=30))
        proc = store.run("publish", str(store.make_db("two.db", seed=2)), "--json", expect=1)
    doc = json.loads(proc.stdout)["data"]
    assert doc["outcome"] == "reverted" and doc["release_id"] == 2
    # stopped at the failure, long before the 30 s window ends
    assert doc["verify"]["duration_ms"] < 25_000
    assert doc["verify"]["analysis"]["outcome"] == "fail"
    assert doc["reasons"][0].startswith("analysis error_rate failed: observed ")
    assert "verification failed" in proc.stderr and "swapped back" in proc.stderr
    assert store.status()["live"]["release_id"] == 1
    event = store.history()[0]
    assert (event["action"], event["outcome"], event["release_id"]) == ("publish", "reverted", 2)
    # the history names the query (templated for release 2), the value and the threshold
    assert 'release="2"' in event["reason"] and "healthy <= 0.05" in event["reason"]
    [m] = event["detail"]["analysis"]["measurements"]
    assert m["name"] == "error_rate" and m["value"] > 0.05 and m["threshold"] == "<= 0.05"
    assert m["query"] == query.replace("{release_id}", "2")
    assert f"observed {m['value']:g}" in event["reason"]
    text = store.cli("history").stdout
    assert "analysis error_rate failed: observed" in text
    # status: what the window found, about a release no longer live
    [record] = store.status()["analysis"]
    assert (record["who"], record["outcome"], record["release_id"], record["live"]) == (
        "publish", "fail", 2, False)
    assert record["entries"][0]["last"]["threshold"] == "<= 0.05"
    assert ("analysis:  verify window of release 2 (not live): failed: analysis error_rate "
            "failed: observed") in store.cli("status").stdout


def test_error_rate_rising_20_s_after_publish_is_reverted_by_the_monitor(
        store: Env, stack: Stack) -> None:
    store.cli("publish", str(store.make_db("one.db", seed=1)))
    with app_host(stack, store.live) as host:
        name = host.name
        set_config(store, monitor={"interval_s": 1}, extra=analysis_toml(
            stack.prom.url, ERROR_RATE.format(host=name), window_s=3, watch_s=45))
        # release 2 fails 20 s after its publish starts (its window and the monitor's
        # start are inside those 20 s)
        fault_at = time.time() + 20
        host.fault = Fault(error_ratio=0.5, release_id=2, start=time.monotonic() + 20)
        # a healthy release passes its window: it stays
        doc = store.cli_json("publish", str(store.make_db("two.db", seed=2)))
        assert doc["outcome"] == "published"  # type: ignore[index]
        assert doc["verify"]["analysis"]["outcome"] == "pass"  # type: ignore[index]
        assert time.time() < fault_at - 10  # the monitor watches it healthy first
        by_publish = counter(store, "analysis:error_rate:pass")
        assert by_publish >= 1  # the publish's window evaluations are counted too
        with MonitorProc(store, "monitor") as mon:
            mon.wait_listening()
            passes = 'releaser_analysis_evaluations_total{analysis="error_rate",outcome="pass"}'
            # the monitor analyses release 2 while it is healthy and keeps it
            wait_for("monitor analysis passes",
                     lambda: mon.metrics().get(passes, 0) >= by_publish + 5, timeout=18,
                     proc=mon)
            doc = store.status()
            assert doc["live"]["release_id"] == 2
            watch = next(r for r in doc["analysis"] if r["who"] == "monitor")
            assert (watch["outcome"], watch["release_id"], watch["live"]) == ("running", 2,
                                                                           True)
            assert "monitor watch of release 2: watching until " in store.cli(
                "status").stdout

            # the monitor's log line of an auto-revert, written once it is recorded (polling
            # history in-process for ~20 s cost seconds of CPU)
            wait_for("the auto-revert", lambda: "auto-revert: live release 2 -> 1"
                     in mon.stderr(), timeout=40, proc=mon)
            event = next(e for e in store.history() if e["action"] == "auto-revert")
            metrics = mon.metrics()
            assert mon.stop() == 0
    assert datetime.fromisoformat(event["at"]).timestamp() >= fault_at
    assert (event["outcome"], event["actor"], event["from_release_id"], event["release_id"]) \
        == ("ok", "monitor", 2, 1)
    assert event["reason"].startswith("analysis error_rate failed: observed ")
    assert f'host="{name}",release="2"' in event["reason"]
    assert "healthy <= 0.05" in event["reason"]
    [m] = event["detail"]["analysis"]["measurements"]
    assert m["value"] > 0.05
    assert store.status()["live"]["release_id"] == 1
    assert metrics.get(
        'releaser_analysis_evaluations_total{analysis="error_rate",outcome="fail"}', 0) >= 1
    assert "auto-revert" in store.cli("history").stdout
    watch = next(r for r in store.status()["analysis"] if r["who"] == "monitor")
    assert (watch["outcome"], watch["release_id"], watch["live"]) == ("fail", 2, False)
    assert watch["reasons"] == [event["reason"]]


def test_a_stopped_prometheus_is_inconclusive_and_never_reverts(
        store: Env, stack: Stack, tmp_path: Path) -> None:
    store.cli("publish", str(store.make_db("one.db", seed=1)))
    own = PromServer(tmp_path / "own-prom", [stack.app.target]).start()
    # a query with an answer whatever the app does: only Prometheus matters here
    store.write_config(analysis_toml(own.url, "vector(0)", window_s=1, interval_s=0.2,
                                     inconclusive_limit=2))
    try:
        [m] = store.cli_json("analyze")["measurements"]  # type: ignore[index]
        assert (m["outcome"], m["value"]) == ("pass", 0.0)
    finally:
        own.stop()
    doc = store.cli_json("publish", str(store.make_db("two.db", seed=2)))
    assert doc["outcome"] == "published"  # type: ignore[index]
    assert doc["verify"]["analysis"]["outcome"] == "inconclusive"  # type: ignore[index]
    assert any("inconclusive" in w and "did not answer" in w
               for w in doc["warnings"])  # type: ignore[index]
    # --strict: inconclusive_limit inconclusive evaluations fail the publish
    result = store.cli("publish", str(store.make_db("three.db", seed=3)), "--strict", "--json",
                       expect=1)
    strict = json.loads(result.stdout)["data"]
    assert strict["outcome"] == "reverted"
    assert "inconclusive analysis fails a publish with --strict" in strict["reasons"]
    assert store.status()["live"]["release_id"] == 2
    # the monitor watching release 2: inconclusive, counted, never a revert
    monitor = Monitor(load_config(store.config))
    for _ in range(4):
        time.sleep(0.25)
        assert monitor.analysis_once() is False
    assert store.status()["live"]["release_id"] == 2
    assert not [e for e in store.history() if e["action"] == "auto-revert"]
    text = monitor.metrics.exposition()[0].decode()
    counted = re.search(r'releaser_analysis_evaluations_total\{analysis="error_rate",'
                        r'outcome="inconclusive"\} (\d+)', text)
    # counted in state.db: the publishes' windows and the monitor's four ticks
    assert counted and int(counted.group(1)) >= 2 + 4


def test_several_series_without_reduce_and_rejected_queries_are_config_errors(
        store: Env, stack: Stack) -> None:
    store.cli("publish", str(store.make_db("one.db", seed=1)))
    before = store.snapshot()
    # (test_analysis.py shows the real Prometheus answering several series to it)
    by_status = "sum by (status) (rate(http_requests_total[5s]))"
    store.write_config(analysis_toml(stack.prom.url, by_status, window_s=5))
    for args in (("publish", str(store.make_db("two.db", seed=2))), ("analyze",),
                 ("monitor",)):
        result = store.cli(*args, expect=2)
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"Error: {store.config}: analysis.prometheus[0]: query may "
                               "return several series and has no reduction rule: add reduce")
    # a query Prometheus refuses: exit 2 from publish before anything changes
    store.write_config(analysis_toml(stack.prom.url, "sum(rate(http_requests_total[5s]) +",
                                     window_s=5, reduce="max"))
    proc = store.run("publish", str(store.make_db("two.db", seed=2)), expect=2)
    assert "[[analysis.prometheus]] error_rate:" in proc.stderr and "bad_data" in proc.stderr
    assert store.snapshot() == before
    assert [e["action"] for e in store.history()] == ["publish"]


def test_the_watch_covers_watch_s_after_a_publish_and_never_a_rollback(
        store: Env, stack: Stack) -> None:
    """A query that always fails: it reverts only inside watch_s after a publish."""
    store.write_config(analysis_toml(stack.prom.url, "vector(1)", watch_s=1,
                                     interval_s=0.2).replace("max = 0.05", "max = 0"))
    for n in (1, 2):
        store.cli("publish", str(store.make_db(f"r{n}.db", seed=n)))
    monitor = Monitor(load_config(store.config))
    time.sleep(1.2)  # release 2's watch is over before the monitor first sees it
    assert monitor.analysis_once() is False
    assert store.status()["live"]["release_id"] == 2
    store.cli("publish", str(store.make_db("r3.db", seed=3)))
    time.sleep(0.3)
    assert monitor.analysis_once() is True  # inside release 3's watch: reverted
    event = store.history()[0]
    assert (event["action"], event["from_release_id"], event["release_id"]) == \
        ("auto-revert", 3, 2)
    assert event["detail"]["analysis"]["measurements"][0]["query"] == "vector(1)"
    # release 2 is live again by an auto-revert, release 1 by a rollback: not watched
    time.sleep(0.3)
    assert monitor.analysis_once() is False
    store.cli("rollback")
    time.sleep(0.3)
    assert monitor.analysis_once() is False
    assert store.status()["live"]["release_id"] == 1
    assert [e["action"] for e in store.history()].count("auto-revert") == 1
