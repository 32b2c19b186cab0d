"""The meter on a Redis Cluster: each namespace's usage stream (`tw:{<namespace>}:usage`, in the
slot of its counters) is read by its own `MeterConsumer`, with `tollway:usage` (events of no
namespace, and what a single Redis wrote before the move) beside them.

Streams are found with SCAN `MATCH tw:{*}:usage TYPE stream` on every primary, at start and every
`discover_s`: a new namespace's first events wait in its stream until the next discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from tollway_meter.consumer import ConsumerOptions, MeterConsumer, MeterStats
from tollway_meter.ledger import Ledger
from tollway_meter.stream_scan import text
from tollway_sidecar.contract.counters import SHARDED_STREAM_PATTERN
from tollway_sidecar.contract.usage_event import USAGE_STREAM

log = logging.getLogger("tollway.meter")

DISCOVER_S = 10.0


async def discover(client: RedisCluster) -> list[str]:
    """Every usage stream on the cluster: `tollway:usage` and each namespace's."""
    found = {USAGE_STREAM}
    async for key in client.scan_iter(match=SHARDED_STREAM_PATTERN, _type="stream", count=1000):
        found.add(text(key))
    return sorted(found)


class ShardedConsumer:
    """One `MeterConsumer` per stream, sharing the ledger and `stats` (summed over streams)."""

    def __init__(
        self,
        client: RedisCluster,
        ledger: Ledger,
        options: ConsumerOptions | None = None,
        *,
        discover_s: float = DISCOVER_S,
    ) -> None:
        self.redis = client
        self.ledger = ledger
        self.options = options or ConsumerOptions()
        self.discover_s = discover_s
        self.stats = MeterStats()
        self.consumers: dict[str, MeterConsumer] = {}
        self._ledger_lock = asyncio.Lock()

    def _consumer(self, stream: str) -> MeterConsumer:
        consumer = MeterConsumer(
            self.redis,  # type: ignore[arg-type]  # the cluster client has the same stream commands
            self.ledger,
            dataclasses.replace(self.options, stream=stream),
        )
        consumer.stats = self.stats  # one set of counters for the meter's metrics
        consumer.ledger_lock = self._ledger_lock
        return consumer

    async def run(self, stop: asyncio.Event) -> None:
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                try:
                    streams = await discover(self.redis)
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning("meter: finding the usage streams failed: %s", exc)
                    streams = []
                for stream in streams:
                    if stream in tasks and tasks[stream].done() and tasks[stream].exception():
                        log.error("meter: reading %s failed: %s", stream, tasks[stream].exception())
                    if stream not in tasks or tasks[stream].done():
                        consumer = self.consumers.setdefault(stream, self._consumer(stream))
                        tasks[stream] = asyncio.create_task(consumer.run(stop))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.discover_s)
        finally:
            stop.set()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
