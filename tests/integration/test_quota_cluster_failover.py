"""A Redis Cluster primary killed (SIGKILL) under the quota store: calls to its slots fail fast as
`StoreUnavailable` (the failure policy decides) until its replica is promoted, then succeed again;
what the primary had replicated before it died (checked with WAIT) is all still counted."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from rediscluster import RedisCluster
from test_quota_store import at, budget_fields, make_budget, make_key, plan_for

from tollway_sidecar.contract.redis_counters import BoundedCluster
from tollway_sidecar.quota.plan import budget_key
from tollway_sidecar.quota.redis_store import RedisStore
from tollway_sidecar.quota.store import StoreUnavailable


async def test_a_killed_primary_fails_calls_fast_then_its_replica_serves_every_replicated_count(
    tmp_path: Path,
) -> None:
    cluster = RedisCluster(tmp_path / "cluster")
    cluster.start()
    store = RedisStore(cluster.url, timeout_s=1.0, cooldown_s=0.05)
    try:
        namespace = f"t{uuid.uuid4().hex[:12]}"
        budget = make_budget(namespace, "100.00")
        key = make_key(namespace, budgets=("cap",))
        now = at("2026-03-14T12:00:00")
        for _ in range(10):
            assert (await store.reserve(plan_for(key, now, budgets=(budget,)))).admitted
        cap = budget_key(budget, datetime.fromtimestamp(now / 1000, tz=UTC))
        client = store._redis
        assert isinstance(client, BoundedCluster)
        primary = client.nodes_manager.get_node_from_slot(client.keyslot(cap))
        # Asynchronous replication: only what a replica acknowledged survives the primary.
        assert cluster.cli(primary.port, "WAIT", "1", "2000").strip() == "1"
        victim = next(s for s in cluster.servers if s.port == primary.port)
        assert victim.process is not None
        os.kill(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        victim.process = None

        failures, slowest, deadline = 0, 0.0, time.monotonic() + 30
        while True:
            started = time.monotonic()
            try:
                fields = await budget_fields(store, budget, now)
                break
            except StoreUnavailable:
                failures += 1
            slowest = max(slowest, time.monotonic() - started)
            assert time.monotonic() < deadline, "the replica was not promoted within 30 s"
            await asyncio.sleep(0.05)
        assert failures >= 1  # the dead primary was met, not avoided
        assert slowest < 1.5  # each failed call within the store's timeout, never a hang
        assert fields == {"usd": 3_000_000_000, "usd_r": 3_000_000_000}  # ten $0.30 reservations
        now_primary = client.nodes_manager.get_node_from_slot(client.keyslot(cap))
        assert now_primary.port != primary.port
        assert (await store.reserve(plan_for(key, now, budgets=(budget,)))).admitted
    finally:
        await store.close()
        cluster.stop()
