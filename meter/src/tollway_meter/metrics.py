"""Prometheus metrics for the meter, read from its `MeterStats` at scrape time (one source of truth).

Served by `tollway meter run --metrics-port` at /metrics from prometheus_client's own thread, so a
scrape never waits for a batch.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from tollway_meter.consumer import MeterStats


class StatsCollector(Collector):
    def __init__(self, stats: MeterStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        events = CounterMetricFamily(
            "tollway_meter_events",
            "Stream entries by what the meter did: inserted, duplicate (already in the ledger), "
            "dead_lettered (malformed or unknown version); adjustment counts inserted late events.",
            labels=["result"],
        )
        for result, value in (
            ("inserted", s.ingested),
            ("duplicate", s.duplicates),
            ("dead_lettered", s.dead_lettered),
            ("adjustment", s.adjustments),
        ):
            events.add_metric([result], value)
        yield events
        yield CounterMetricFamily(
            "tollway_meter_batches", "Batches committed and acknowledged.", value=s.batches
        )
        yield CounterMetricFamily(
            "tollway_meter_claimed", "Entries claimed from consumers presumed dead.", value=s.claimed
        )
        yield CounterMetricFamily(
            "tollway_meter_lost",
            "Pending entries deleted from the stream by someone else before they were ingested.",
            value=s.lost,
        )
        yield CounterMetricFamily(
            "tollway_meter_ledger_errors",
            "Batches the database could not take (retried).",
            value=s.ledger_errors,
        )


def serve_metrics(stats: MeterStats, port: int, host: str = "0.0.0.0") -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    start_http_server(port, addr=host, registry=registry)
    return registry
