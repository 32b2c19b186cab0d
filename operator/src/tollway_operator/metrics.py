"""Prometheus metrics for the operator: reconcile passes, their errors, and config publishes.

Served on TOLLWAY_OPERATOR_METRICS_PORT (default 8082) at /metrics, from a small thread of
prometheus_client's own, so it answers even while a pass is running.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tollway_operator.compile import CompileResult


class OperatorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.passes = Counter(
            "tollway_operator_reconciles",
            "Reconcile passes, by result (ok, temporary_error, permanent_error, error).",
            ["result"],
            registry=r,
        )
        self.duration = Histogram(
            "tollway_operator_reconcile_duration_seconds",
            "Time of one reconcile pass.",
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.publishes = Counter(
            "tollway_operator_config_publishes",
            "GatewayConfig Secrets written (only when the checksum changes).",
            registry=r,
        )
        self.config_info = Gauge(
            "tollway_operator_config_info",
            "The last compiled GatewayConfig (value 1), by version.",
            ["version"],
            registry=r,
        )
        self.resources = Gauge(
            "tollway_operator_resources",
            "Resources seen in the last pass, by kind and whether accepted.",
            ["kind", "accepted"],
            registry=r,
        )
        self.compile_errors = Gauge(
            "tollway_operator_compile_errors",
            "Errors in the last compile (each names a resource and field).",
            registry=r,
        )

    def compiled(self, result: CompileResult, kinds: dict[str, int]) -> None:
        self.config_info.clear()
        self.config_info.labels(version=result.config.version).set(1)
        self.compile_errors.set(len(result.errors))
        accepted: dict[str, int] = {}
        for kind, _namespace, _name in result.accepted:
            accepted[kind] = accepted.get(kind, 0) + 1
        for kind, total in kinds.items():
            self.resources.labels(kind=kind, accepted="true").set(accepted.get(kind, 0))
            self.resources.labels(kind=kind, accepted="false").set(total - accepted.get(kind, 0))

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
