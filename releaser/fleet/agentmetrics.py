"""The agent's Prometheus metrics, on [fleet] metrics_listen (own registry).

  releaser_agent_applied_seq           seq of the pointer whose release is live here
  releaser_agent_download_bytes_total  compressed bytes downloaded
  releaser_agent_poll_errors_total     polls or applies that failed for a transient reason
  releaser_agent_pointer_expired       1 while the channel pointer is past `expires`
                                       (alert: nobody re-signed it, or the bucket froze)
  releaser_agent_analysis_evaluations_total{analysis,outcome}
                                       bake analysis evaluations (fleet/bake.py) by
                                       outcome: pass, fail, inconclusive, error
  releaser_agent_bucket_requests_total{op}
                                       HTTP requests to the bucket by S3 operation
                                       (ListObjectsV2, GetObject, PutObject...), retries
                                       and LIST pages included: a poll is one GetObject
                                       (the pointer; 304 when unchanged), plus during a
                                       rollout one LIST and a GET per changed ack
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.applied_seq = Gauge("releaser_agent_applied_seq",
                                 "Seq of the channel pointer whose release is live here",
                                 registry=self.registry)
        self.download_bytes = Counter("releaser_agent_download_bytes",
                                      "Compressed release bytes downloaded from the bucket",
                                      registry=self.registry)
        self.poll_errors = Counter("releaser_agent_poll_errors",
                                   "Polls that failed (bucket unreachable, store busy)",
                                   registry=self.registry)
        self.pointer_expired = Gauge("releaser_agent_pointer_expired",
                                     "1 while the channel pointer is past its expiry",
                                     registry=self.registry)
        self.analysis = Counter("releaser_agent_analysis_evaluations",
                                "Bake analysis evaluations by query and outcome",
                                ["analysis", "outcome"], registry=self.registry)
        self.bucket_requests = Counter("releaser_agent_bucket_requests",
                                       "HTTP requests to the bucket by S3 operation",
                                       ["op"], registry=self.registry)

    def count_request(self, op: str) -> None:
        """Bucket.on_request callback."""
        self.bucket_requests.labels(op).inc()

    def count_analysis(self, m: Any) -> None:
        """on_measure of the bake's AnalysisRun (an analysis.Measurement)."""
        self.analysis.labels(m.name, m.outcome).inc()

    def serve(self, listen: str) -> str | None:
        """Start the HTTP endpoint; its URL, or None when listen is empty."""
        if not listen:
            return None
        from prometheus_client import start_http_server

        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                            registry=self.registry)
        bound = server.server_address[1]
        return f"http://{listen.rpartition(':')[0]}:{bound}/metrics"
