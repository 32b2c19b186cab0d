"""The meter on a real 3-primary Redis Cluster: every namespace's usage stream (each in its own
slot) reaches the ledger, once."""

from __future__ import annotations

import asyncio
import uuid

from ledger_events import spread
from rediscluster import RedisCluster
from test_consumer import totals

from tollway_meter.consumer import ConsumerOptions
from tollway_meter.ledger import Ledger
from tollway_meter.shards import ShardedConsumer, discover
from tollway_sidecar.contract.counters import usage_stream_for
from tollway_sidecar.contract.redis_counters import BoundedCluster, bounded_client
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM


def done(meter: ShardedConsumer, events: int) -> bool:
    """Every event ingested, and the duplicate in `tollway:usage` read too. The meter's own counts:
    the ledger's one connection is the meter's while it runs, so the test reads it only after."""
    return meter.stats.ingested >= events and meter.stats.duplicates >= 1


async def test_every_shards_stream_reaches_the_ledger_once(
    redis_cluster: RedisCluster, ledger: Ledger
) -> None:
    client = bounded_client(redis_cluster.url, timeout_s=5.0, max_connections=16, decode_responses=False)
    assert isinstance(client, BoundedCluster)
    run = uuid.uuid4().hex[:8]
    streams = [usage_stream_for(f"ns{i}-{run}", sharded=True) for i in range(6)]
    events = spread(60)
    for i, event in enumerate(events):
        await client.xadd(streams[i % len(streams)], {USAGE_FIELD: event.to_json()})
    await client.xadd(USAGE_STREAM, {USAGE_FIELD: events[0].to_json()})  # a duplicate, elsewhere
    # The namespaces' streams live on more than one primary: the meter must read across nodes.
    assert len({client.nodes_manager.get_node_from_slot(client.keyslot(s)).name for s in streams}) > 1
    assert set(streams) <= set(await discover(client))
    meter = ShardedConsumer(
        client, ledger, ConsumerOptions(consumer="m", batch=7, block_ms=50), discover_s=0.2
    )
    stop = asyncio.Event()
    task = asyncio.create_task(meter.run(stop))
    try:
        for _ in range(300):  # 30 s
            if done(meter, len(events)):
                break
            await asyncio.sleep(0.1)
        for stream in streams:  # all acknowledged, so all trimmed
            assert await client.xlen(stream) == 0
    finally:
        stop.set()
        await task
        await client.aclose()
    assert totals(ledger) == (60, sum(e.data.cost_nanos for e in events))
    assert meter.stats.duplicates == 1
    assert meter.stats.ingested == 60
