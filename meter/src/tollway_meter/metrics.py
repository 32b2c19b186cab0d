"""Prometheus metrics for the meter, read from its `MeterStats` at scrape time (one source of truth).

Served by `tollway meter run --metrics-port` at /metrics from prometheus_client's own thread, so a
scrape never waits for a batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from tollway_meter.consumer import MeterStats
from tollway_meter.content import ContentState
from tollway_meter.maintenance import MaintenanceState


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


class MaintenanceCollector(Collector):
    """Lag and period state, as the maintenance task last measured them (every few seconds)."""

    def __init__(self, state: MaintenanceState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state
        entries = GaugeMetricFamily(
            "tollway_meter_lag_entries",
            "Stream entries not yet acknowledged: undelivered (XINFO GROUPS lag) or pending (read, "
            "not yet acknowledged).",
            labels=["state"],
        )
        entries.add_metric(["undelivered"], s.lag.undelivered)
        entries.add_metric(["pending"], s.lag.pending)
        yield entries
        # Computed at scrape time from the oldest entry's stream id, so it grows between refreshes.
        yield GaugeMetricFamily(
            "tollway_meter_lag_seconds",
            "Age of the oldest stream entry not yet acknowledged (0: none).",
            value=s.lag.seconds(int(time.time() * 1000)),
        )
        periods = GaugeMetricFamily(
            "tollway_meter_period_closed",
            "1 for a closed (frozen) period, 0 for an open one.",
            labels=["period"],
        )
        for period, closed in s.periods.items():
            periods.add_metric([period], 1 if closed else 0)
        yield periods
        yield CounterMetricFamily(
            "tollway_meter_periods_auto_closed",
            "Periods this meter closed by --close-after.",
            value=s.auto_closed,
        )
        yield CounterMetricFamily(
            "tollway_meter_months_retired",
            "Months whose event detail retention dropped (--retain-months).",
            value=s.months_retired,
        )
        yield CounterMetricFamily(
            "tollway_meter_maintenance_errors",
            "Maintenance passes that failed (Redis or the database unreachable; retried).",
            value=s.errors,
        )


class ContentCollector(Collector):
    """Captured content's retention (its own task, in every meter mode)."""

    def __init__(self, state: ContentState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "tollway_meter_content_expired",
            "Captured content rows deleted because their route's retentionDays had passed.",
            value=self.state.expired,
        )
        yield CounterMetricFamily(
            "tollway_meter_content_expiry_errors",
            "Captured content expiry passes that failed (the database unreachable; retried).",
            value=self.state.errors,
        )


def serve_metrics(
    stats: MeterStats,
    port: int,
    host: str = "0.0.0.0",
    maintenance: MaintenanceState | None = None,
    content: ContentState | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    if maintenance is not None:
        registry.register(MaintenanceCollector(maintenance))
    if content is not None:
        registry.register(ContentCollector(content))
    start_http_server(port, addr=host, registry=registry)
    return registry
