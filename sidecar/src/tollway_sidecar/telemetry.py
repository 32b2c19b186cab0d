"""Prometheus metrics for the sidecar (served on the admin port).

Labels are bounded: key name, model, backend, route — never end-user ids, never key material.
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tollway_sidecar.config.models import GatewayConfig


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tollway_requests",
            "Calls answered, by key, model, backend and HTTP status.",
            ["key", "model", "backend", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "gen_ai_client_token_usage",
            "Tokens used, by type (input, output).",
            ["key", "model", "backend", "type"],
            registry=self.registry,
        )
        self.cost = Counter(
            "tollway_cost_usd",
            "Spend in USD (exact values are in /spend; this is for graphs).",
            ["key", "model", "backend"],
            registry=self.registry,
        )
        self.denials = Counter(
            "tollway_denials",
            "Calls the gateway refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.unpriced = Counter(
            "tollway_unpriced_responses",
            "Responses whose usage could not be read.",
            ["backend"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from request to the end of the response.",
            ["model", "backend"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.config_info = Gauge(
            "tollway_config_info",
            "The loaded GatewayConfig (value 1), labelled by version.",
            ["version"],
            registry=self.registry,
        )
        self.config_objects = Gauge(
            "tollway_config_objects",
            "Objects in the loaded config.",
            ["kind"],
            registry=self.registry,
        )

    def config_loaded(self, config: GatewayConfig) -> None:
        self.config_info.clear()
        self.config_info.labels(version=config.version or "empty").set(1)
        self.config_objects.labels(kind="keys").set(len(config.keys))
        self.config_objects.labels(kind="budgets").set(len(config.budgets))
        self.config_objects.labels(kind="routes").set(len(config.routes))

    def observe_call(
        self,
        *,
        key: str,
        model: str,
        backend: str,
        status: int,
        input_tokens: int | None,
        output_tokens: int | None,
        cost: Decimal | None,
        seconds: float,
    ) -> None:
        self.requests.labels(key, model, backend, str(status)).inc()
        if input_tokens is not None:
            self.tokens.labels(key, model, backend, "input").inc(input_tokens)
        if output_tokens is not None:
            self.tokens.labels(key, model, backend, "output").inc(output_tokens)
        if cost is not None:
            self.cost.labels(key, model, backend).inc(float(cost))
        self.duration.labels(model, backend).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
