"""Prometheus metrics, /healthz and /status; the shipped alert rules and dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from releaser import views
from releaser.config import load_config
from releaser.metrics import PROBE_BUCKETS, CheckStats, Metrics, MetricsServer

from .conftest import REPO, Env
from .monitorproc import MonitorProc, parse_metrics, set_config

ALERTS = REPO / "config" / "prometheus" / "releaser-alerts.yml"
DASHBOARDS = sorted((REPO / "config" / "grafana").glob("*.json"))
PROMTOOL = shutil.which("promtool")
# under CI=true a missing promtool fails the test instead of skipping it
needs_promtool = pytest.mark.skipif(PROMTOOL is None and os.environ.get("CI") != "true",
                                    reason="promtool not on PATH "
                                    "(Debian package prometheus; .ci/run installs it)")

NAMES = {
    "releaser_live_release_info", "releaser_health_check_success",
    "releaser_health_check_duration_seconds", "releaser_probe_query_duration_seconds",
    "releaser_health_checks_total", "releaser_health_check_failures_total",
    "releaser_health_check_last_success_timestamp_seconds", "releaser_publishes_total",
    "releaser_publish_failures_total", "releaser_rollbacks_total",
    "releaser_auto_reverts_total", "releaser_auto_revert_failures_total",
}


def exposition(env: Env, stats: CheckStats | None = None) -> dict[str, float]:
    metrics = Metrics(load_config(env.config), stats or CheckStats())
    body, ctype = metrics.exposition()
    assert ctype.startswith("text/plain")
    return parse_metrics(body.decode())


def test_counters_come_from_the_event_log(published: Env) -> None:
    env = published
    env.cli("rollback", "--reason", "test")
    env.cli("publish", str(env.make_db("empty.db", seed=3, sql="DELETE FROM tags_final")),
            expect=1)
    m = exposition(env)
    assert m["releaser_publishes_total"] == 2
    assert m["releaser_publish_failures_total"] == 1
    assert m["releaser_rollbacks_total"] == 1
    assert m["releaser_auto_reverts_total"] == 0
    assert m["releaser_stale_readers"] == 0
    sha1 = env.status()["live"]["sha256"]
    assert m[f'releaser_live_release_info{{release_id="1",sha256="{sha1}",slot="blue"}}'] == 1
    # another process (a restarted monitor) reads the same totals: they survive restarts
    assert exposition(env)["releaser_publishes_total"] == 2
    # no check run yet: no success gauge rather than a made-up value
    assert "releaser_health_check_success" not in m


def test_health_check_counters_come_from_state_db(published: Env) -> None:
    """`releaser check` runs count too, and another process reads the same totals."""
    env = published
    env.cli("check")
    live = Path(env.status()["live"]["path"])
    os.chmod(live, 0o644)
    os.truncate(live, live.stat().st_size - 100)
    env.cli("check", expect=1)
    m = exposition(env)
    assert m["releaser_health_checks_total"] == 2
    assert m["releaser_health_check_failures_total"] == 1
    assert exposition(env)["releaser_health_checks_total"] == 2


def test_a_store_without_counters_table_is_upgraded(published: Env) -> None:
    env = published
    conn = sqlite3.connect(env.root / "state.db")
    conn.execute("DROP TABLE counters")
    conn.close()
    env.cli("check")
    assert exposition(env)["releaser_health_checks_total"] == 1


def test_check_stats_and_probe_histogram(published: Env) -> None:
    config = load_config(published.config)
    stats = CheckStats(checks_total=5, last_ok=False, last_duration_s=0.25,
                       last_success_ts=1700000000.0, consecutive_failures=2)
    metrics = Metrics(config, stats)
    metrics.observe_probe("high_freq", 0.0003)
    metrics.observe_probe("high_freq", 0.02)
    m = parse_metrics(metrics.exposition()[0].decode())
    # the totals are state.db's, not this process's: no check was recorded yet
    assert m["releaser_health_checks_total"] == 0
    assert m["releaser_health_check_failures_total"] == 0
    assert m["releaser_health_check_success"] == 0
    assert m["releaser_health_check_duration_seconds"] == 0.25
    assert m["releaser_health_check_last_success_timestamp_seconds"] == 1700000000.0
    assert PROBE_BUCKETS[0] == 0.00001  # 10 microseconds: probes take 0.03-0.2 ms
    assert m['releaser_probe_query_duration_seconds_bucket{le="0.0005",probe="high_freq"}'] == 1
    assert m['releaser_probe_query_duration_seconds_count{probe="high_freq"}'] == 2
    # configured probes are exported (at 0) before they ever ran
    assert m['releaser_probe_query_duration_seconds_count{probe="lookup_by_name"}'] == 0


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_http_endpoints(published: Env) -> None:
    config = load_config(published.config)
    stats = CheckStats()
    server = MetricsServer("127.0.0.1:0", config, stats, Metrics(config, stats))
    server.start()
    try:
        # before the first check the live release is not known to be healthy
        code, _ctype, body = _get(server.url + "/healthz")
        assert code == 503 and json.loads(body)["ok"] is None
        with stats.lock:
            stats.last_ok, stats.last_release_id = True, 2
        code, ctype, body = _get(server.url + "/healthz")
        assert code == 200 and ctype == "application/json"
        assert json.loads(body) == {"ok": True, "release_id": 2, "reasons": [],
                                    "critical": False}
        code, _ctype, body = _get(server.url + "/status")
        assert code == 200
        assert json.loads(body) == json.loads(json.dumps(views.status(config), default=str))
        code, ctype, body = _get(server.url + "/metrics")
        assert code == 200 and "releaser_publishes_total 2.0" in body
        code, _ctype, body = _get(server.url + "/nope")
        assert code == 404 and "/metrics" in json.loads(body)["error"]
    finally:
        server.stop()


@needs_promtool
def test_promtool_accepts_the_real_exposition(published: Env) -> None:
    env = published
    set_config(env)
    with MonitorProc(env, "monitor") as mon:
        mon.wait_listening()
        mon.wait_healthy()
        _code, ctype, text = mon.get("/metrics")
        _code, om_ctype, om_text = mon.get(
            "/metrics", accept="application/openmetrics-text; version=1.0.0")
        assert mon.stop() == 0
    assert ctype.startswith("text/plain")
    assert om_ctype.startswith("application/openmetrics-text") and om_text.endswith("# EOF\n")
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    families = {re.sub(r"\{.*", "", line.split()[0]) for line in text.splitlines()
                if line and not line.startswith("#")}
    for name in NAMES - {"releaser_probe_query_duration_seconds"}:
        assert name in families, name
    assert "releaser_probe_query_duration_seconds_bucket" in families


@needs_promtool
def test_alert_rules_pass_promtool(tmp_path: Path) -> None:
    proc = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and they fire: a series where an auto-revert happens and the live release goes critical
    # (on a copy without annotations: promtool compares those verbatim)
    rules = tmp_path / "rules.yml"
    rules.write_text(re.sub(r"(?m)^ {8}annotations:\n(?:^ {10,}.*\n)*", "", ALERTS.read_text()))
    proc = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
    tests = tmp_path / "alerts.test.yml"
    tests.write_text(f"""
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'releaser_auto_reverts_total{{instance="h:9464",job="releaser-monitor"}}'
        values: '0 0 1 1 1'
      - series: 'releaser_live_critical{{instance="h:9464",job="releaser-monitor"}}'
        values: '0 0 0 1 1'
      - series: 'releaser_publish_failures_total{{instance="h:9464",job="releaser-monitor"}}'
        values: '0 0 0 0 0'
      - series: 'releaser_auto_revert_failures_total{{instance="h:9464",job="releaser-monitor"}}'
        values: '0 0 0 1 1'
      - series: 'releaser_analysis_evaluations_total{{instance="h:9464",job="releaser-monitor",analysis="error_rate",outcome="inconclusive"}}'
        values: '0 2 4 6 8'
    alert_rule_test:
      - eval_time: 3m
        alertname: ReleaserAutoReverted
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "h:9464", job: releaser-monitor}}
      - eval_time: 4m
        alertname: ReleaserLiveCritical
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "h:9464", job: releaser-monitor}}
      - eval_time: 4m
        alertname: ReleaserPublishFailures
        exp_alerts: []
      - eval_time: 2m
        alertname: ReleaserAutoRevertFailed
        exp_alerts: []
      - eval_time: 4m
        alertname: ReleaserAutoRevertFailed
        exp_alerts:
          - exp_labels: {{severity: critical, instance: "h:9464", job: releaser-monitor}}
      - eval_time: 4m
        alertname: ReleaserAnalysisInconclusive
        exp_alerts:
          - exp_labels: {{severity: warning, instance: "h:9464", job: releaser-monitor, analysis: error_rate}}
""")
    proc = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _metric_names(expr: str) -> set[str]:
    return {n for n in re.findall(r"\breleaser_[a-z_]+", expr)}


def test_alerts_and_dashboard_use_exported_metrics() -> None:
    exported = NAMES | {"releaser_live_critical", "releaser_health_check_consecutive_failures",
                        "releaser_probe_query_duration_seconds_bucket", "releaser_stale_readers",
                        "releaser_analysis_evaluations_total", "releaser_state_db_usable"}
    alert_names = _metric_names(ALERTS.read_text())
    assert alert_names and alert_names <= exported, alert_names - exported
    assert DASHBOARDS, "no Grafana dashboard in config/grafana"
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["title"] and dash["panels"]
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        used = set().union(*(_metric_names(e) for e in exprs))
        assert used and used <= exported, (path, used - exported)


def test_readme_names_every_metric() -> None:
    """Each metric the monitor or the agent exports is named in README.md (a counter with
    its _total, an info with its _info; `releaser_{a,b}_total` lists count)."""
    import itertools
    import re
    from pathlib import Path

    repo = Path(__file__).parent.parent
    names = set()
    for source in ("releaser/metrics.py", "releaser/fleet/agentmetrics.py"):
        names |= set(re.findall(r'"(releaser_[a-z_]+)"', (repo / source).read_text()))
    assert {"releaser_state_db_usable", "releaser_agent_applied_seq"} <= names
    readme = (repo / "README.md").read_text()
    named = set()
    for word in re.findall(r"releaser_[a-z_{},]+", readme):
        word = re.sub(r"\{[a-z_,]*\}$", "", word)  # labels: releaser_x{probe}
        parts = re.split(r"\{([a-z_,]+)\}", word)  # expand releaser_{a,b}_total
        choices = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
        named |= {"".join(c) for c in itertools.product(*choices)}
    missing = sorted(n for n in names
                     if not {n, f"{n}_total", f"{n}_info"} & named)
    assert missing == [], "metrics not named in README.md"
