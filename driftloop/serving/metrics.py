"""Prometheus metrics of one service (its own registry: several apps in one process never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Requests, errors and scoring latency per variant and model version; shadow drops."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("variant", "model_version")
        self.requests = Counter(
            "driftloop_predict_requests", "Scoring calls", labels, registry=self.registry
        )
        self.errors = Counter(
            "driftloop_predict_errors", "Failed scoring calls", labels, registry=self.registry
        )
        self.latency = Histogram(
            "driftloop_predict_latency_seconds",
            "Scoring latency",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.client_errors = Counter(
            "driftloop_client_errors",
            "Refused requests",
            ("path", "status"),
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "driftloop_shadow_dropped", "Shadow rows dropped (queue full)", registry=self.registry
        )

    def observe(self, variant: str, version: str, seconds: float, ok: bool) -> None:
        self.requests.labels(variant, version).inc()
        self.latency.labels(variant, version).observe(seconds)
        if not ok:
            self.errors.labels(variant, version).inc()

    def client_error(self, path: str, status: int) -> None:
        self.client_errors.labels(path, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
