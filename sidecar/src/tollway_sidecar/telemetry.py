"""Prometheus metrics for the sidecar (served on the admin port at /metrics).

Named after the OpenTelemetry GenAI metrics where one exists (`gen_ai.client.token.usage`,
`gen_ai.server.request.duration`, `gen_ai.server.time_to_first_token`,
`gen_ai.server.time_per_output_token`), with `tollway_*` for the rest. Labels are bounded: key name,
model, provider, backend, route — never end-user ids, never key material.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tollway_sidecar.config.models import GatewayConfig
from tollway_sidecar.contract.money import from_nano

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def multiprocess_metrics() -> bool:
    """Several workers (`tollway_sidecar.workers`): each writes its metrics to files that /metrics
    aggregates, set up before prometheus_client was imported."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._multiprocess = multiprocess_metrics()
        # Gauges read from a function at scrape time; copied into their files with several workers.
        self._functions: list[tuple[Gauge, Callable[[], float]]] = []
        self._version: str | None = None
        self.requests = Counter(
            "tollway_requests",
            "Calls answered, by key, model, backend and HTTP status.",
            ["key", "model", "backend", "status"],
            registry=r,
        )
        self.tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per call, by type (input, output).",
            ["key", "model", "provider", "backend", "gen_ai_token_type"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.cost = Counter(
            "tollway_cost_usd",
            "Spend in USD (exact values are in /spend; this is for graphs).",
            ["key", "model", "backend"],
            registry=r,
        )
        self.denials = Counter(
            "tollway_denials", "Calls the gateway refused, by reason.", ["reason"], registry=r
        )
        self.fallbacks = Counter(
            "tollway_fallbacks",
            "Calls that needed more than one attempt, by route.",
            ["route"],
            registry=r,
        )
        self.response_store_errors = Counter(
            "tollway_response_store_errors",
            "Stored-response records the gateway could not write or remove (the call itself went on).",
            ["operation"],
            registry=r,
        )
        self.unpriced = Counter(
            "tollway_unpriced_responses",
            "Responses whose usage could not be read.",
            ["backend"],
            registry=r,
        )
        self.unpriced_calls = Counter(
            "tollway_unpriced_calls",
            "Successful answers charged without provider usage (the prompt, plus what a stream "
            "carried), by backend and reason: bad_body (not JSON or empty: the client got a 502), "
            "body_cut (the body never completed), no_usage, invalid_usage, stream_cut (a stream "
            "ended before its usage), no_answer (the call ended before any answer).",
            ["backend", "reason"],
            registry=r,
        )
        self.attempts = Counter(
            "tollway_upstream_attempts",
            "Upstream attempts (a fallback is one more), by route, backend and outcome: the HTTP "
            "status, or no_response for a refused, reset or timed-out attempt.",
            ["route", "backend", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from the request to the end of the response.",
            ["model", "provider", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Streaming: time from the request to the first chunk.",
            ["model", "provider", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.per_token = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "Streaming: time per output token after the first.",
            ["model", "provider", "backend"],
            buckets=_PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.streams = Counter(
            "tollway_extproc_streams",
            "ext_proc streams served, by filter (router: one per call; upstream: one per attempt on "
            "routes with several backends) and sidecar worker process.",
            ["filter", "worker"],
            registry=r,
        )
        self.open_reservations = Gauge(
            "tollway_open_reservations",
            "Calls admitted and not yet settled.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_requests = Counter(
            "tollway_cache_requests",
            "Calls on routes whose response cache is on, by the answer's x-tollway-cache value.",
            ["result"],
            registry=r,
        )
        self.cache_unavailable = Counter(
            "tollway_cache_unavailable",
            "Cache lookups that bypassed the cache because its store (Redis) failed.",
            registry=r,
        )
        self.cost_saved = Counter(
            "tollway_cost_saved_usd",
            "USD not spent thanks to cache hits: what the calls that filled the entries cost "
            "(for graphs; each hit's exact amount is its x-tollway-cost-saved-usd header).",
            ["key", "model"],
            registry=r,
        )
        self.config_info = Gauge(
            "tollway_config_info",
            "The loaded GatewayConfig (value 1), labelled by version.",
            ["version"],
            registry=r,
            # Several workers: 1 for each version some live worker serves (0 for ones it left).
            multiprocess_mode="livemax",
        )
        self.config_objects = Gauge(
            "tollway_config_objects",
            "Objects in the loaded config.",
            ["kind"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def track_open(self, count: Callable[[], int]) -> None:
        self.track(self.open_reservations, lambda: float(count()))

    def track(self, gauge: Gauge, value: Callable[[], float]) -> None:
        """Export `value()` as `gauge`: at each scrape, or with several workers at each `refresh`."""
        if self._multiprocess:
            self._functions.append((gauge, value))
            gauge.set(value())
        else:
            gauge.set_function(value)

    def refresh(self) -> None:
        for gauge, value in self._functions:
            gauge.set(value())

    def config_loaded(self, config: GatewayConfig) -> None:
        version = config.version or "empty"
        if not self._multiprocess:
            self.config_info.clear()
        elif self._version is not None and self._version != version:
            self.config_info.labels(version=self._version).set(0)  # files keep every label set
        self._version = version
        self.config_info.labels(version=version).set(1)
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
        provider: str = "",
        ttft: float | None = None,
        route: str = "",
        attempts: int = 1,
    ) -> None:
        self.requests.labels(key, model, backend, str(status)).inc()
        if input_tokens is not None:
            self.tokens.labels(key, model, provider, backend, "input").observe(input_tokens)
        if output_tokens is not None:
            self.tokens.labels(key, model, provider, backend, "output").observe(output_tokens)
        if cost is not None:
            self.cost.labels(key, model, backend).inc(float(cost))
        self.duration.labels(model, provider, backend).observe(seconds)
        if ttft is not None:
            self.ttft.labels(model, provider, backend).observe(ttft)
            if output_tokens is not None and output_tokens > 1:
                self.per_token.labels(model, provider, backend).observe(
                    max(seconds - ttft, 0.0) / (output_tokens - 1)
                )
        if attempts > 1 and route:
            self.fallbacks.labels(route).inc()

    def cache_looked_up(self, result: str, *, unavailable: bool = False) -> None:
        self.cache_requests.labels(result).inc()
        if unavailable:
            self.cache_unavailable.inc()

    def saved(self, *, key: str, model: str, nano_usd: int) -> None:
        """A hit's saving; `nano_usd` is exact, the counter a float like `tollway_cost_usd`."""
        self.cost_saved.labels(key, model).inc(float(from_nano(nano_usd)))

    def render(self) -> bytes:
        """The exposition: this process's metrics, or with several workers all of theirs summed
        (counters, histograms) or combined by each gauge's mode."""
        if not self._multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
