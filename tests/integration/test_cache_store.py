"""One suite, both cache stores: the in-memory LRU and a real redis-server must behave the same, and
coalescing over either makes one upstream call for many identical misses (two "replicas" included).

Expiry is driven by the clock the stores are given, never by sleeping. Each test uses its own keys,
so the Redis tests share the session's server; the ones that change the server's memory policy or
stop it start a private one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio
from rediscluster import RedisCluster
from redisserver import RedisServer

from tollway_sidecar.cache import (
    CacheDecision,
    CacheEntry,
    CacheStore,
    Coalescer,
    Lookup,
    MemoryCacheStore,
    decide,
    wall_ms,
)
from tollway_sidecar.cache.chat import ChatAnswer, ChatChoice
from tollway_sidecar.cache.redis_store import RedisCacheStore
from tollway_sidecar.cache.store import CacheUnavailable
from tollway_sidecar.config.models import CacheSettings
from tollway_sidecar.providers.usage import TokenUsage

NOW = 1_760_000_000_000
SETTINGS = CacheSettings(mode="Exact", ttl_s=60)
DECISION = decide(SETTINGS, {})


def entry(text: str = "Hello!", *, created_ms: int = NOW, padding: int = 0) -> CacheEntry:
    choice = ChatChoice(index=0, finish_reason="stop", content=text + "." * padding)
    answer = ChatAnswer(id="chatcmpl-1", model="gpt-4o-mini", created=1, choices=(choice,))
    return CacheEntry(answer, TokenUsage(10, 5), cost_nano=42_000, created_ms=created_ms)


# A fresh cluster client's first command also learns the slots and connects to the primaries; on a
# busy 2-core machine that can pass the store's 0.5 s default. These tests are about what the store
# keeps; its timeout is tested on `private_redis` below.
FUNCTIONAL_TIMEOUT_S = 5.0


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    if request.param == "memory":
        yield MemoryCacheStore()
        return
    # On a Redis Cluster too: each entry's keys (and each partition's) share one hash tag.
    server: RedisServer | RedisCluster = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    redis_store = RedisCacheStore(server.url, timeout_s=FUNCTIONAL_TIMEOUT_S)
    try:
        yield redis_store
    finally:
        await redis_store.close()


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


# ---- the store


async def test_an_entry_is_stored_and_read_back(store: CacheStore, key: str) -> None:
    assert await store.get(key, NOW) is None
    assert await store.put(key, entry(), 60_000, NOW)
    assert await store.get(key, NOW + 1) == entry()


async def test_an_entry_expires_by_the_callers_clock(store: CacheStore, key: str) -> None:
    await store.put(key, entry(), 1_000, NOW)
    assert await store.get(key, NOW + 999) == entry()
    assert await store.get(key, NOW + 1_000) is None


async def test_a_put_replaces_the_entry_and_its_expiry(store: CacheStore, key: str) -> None:
    await store.put(key, entry("old"), 1_000, NOW)
    await store.put(key, entry("new"), 5_000, NOW + 500)
    assert await store.get(key, NOW + 2_000) == entry("new")


async def test_delete(store: CacheStore, key: str) -> None:
    await store.put(key, entry(), 60_000, NOW)
    await store.delete(key)
    assert await store.get(key, NOW) is None


async def test_a_zero_ttl_stores_nothing(store: CacheStore, key: str) -> None:
    assert not await store.put(key, entry(), 0, NOW)
    assert await store.get(key, NOW) is None


async def test_a_lease_is_held_by_one_token_until_released_or_expired(store: CacheStore, key: str) -> None:
    assert await store.try_lease(key, "a", 60_000, NOW)
    assert not await store.try_lease(key, "b", 60_000, NOW)
    await store.release(key, "b")  # not its lease: nothing happens
    assert (await store.poll(key, NOW)).leased
    await store.release(key, "a")
    assert not (await store.poll(key, NOW)).leased
    assert await store.try_lease(key, "b", 50, NOW)
    await asyncio.sleep(0.06)  # Redis expires a lease by its own clock: both clocks move on
    assert await store.try_lease(key, "c", 60_000, NOW + 60)


async def test_a_put_with_the_lease_token_stores_and_ends_the_lease_in_one_step(
    store: CacheStore, key: str
) -> None:
    await store.try_lease(key, "a", 60_000, NOW)
    await store.put(key, entry(), 60_000, NOW, lease_token="a")
    polled = await store.poll(key, NOW)
    assert (polled.entry, polled.leased) == (entry(), False)
    await store.try_lease(key, "b", 60_000, NOW)
    await store.put(key, entry("x"), 60_000, NOW, lease_token="a")  # a stale token ends no lease
    assert (await store.poll(key, NOW)).leased


async def test_an_entry_over_the_stores_own_bound_is_refused(redis_server: RedisServer, key: str) -> None:
    size = len(entry().encoded)
    memory = MemoryCacheStore(max_entry_bytes=size + len(key) - 1)
    redis_store = RedisCacheStore(redis_server.url, max_entry_bytes=size - 1)
    try:
        for bounded in (memory, redis_store):
            await bounded.try_lease(key, "t", 60_000, NOW)
            assert not await bounded.put(key, entry(), 60_000, NOW, lease_token="t")
            polled = await bounded.poll(key, NOW)
            assert (polled.entry, polled.leased) == (None, False)  # waiters are not kept waiting
    finally:
        await redis_store.close()


# ---- the memory store's LRU


async def test_the_memory_store_keeps_its_byte_bound_by_dropping_the_least_recently_used() -> None:
    one = len(entry("k0").encoded) + 2
    memory = MemoryCacheStore(max_bytes=one * 3, max_entry_bytes=one)
    for i in range(3):
        await memory.put(f"k{i}", entry(f"k{i}"), 60_000, NOW)
    assert await memory.get("k0", NOW) is not None  # k0 is now the most recently used
    await memory.put("k3", entry("k3"), 60_000, NOW)
    assert [await memory.get(f"k{i}", NOW) is not None for i in range(4)] == [True, False, True, True]
    assert memory.bytes <= one * 3 and len(memory) == 3


# ---- Redis specifics: keys, corruption, eviction, outages


async def test_redis_keys_carry_the_prefix_and_one_hash_tag_for_entry_and_lease(
    redis_server: RedisServer,
) -> None:
    store = RedisCacheStore(redis_server.url, prefix="twc:")
    assert store.entry_key("ab") == "twc:{ab}:e" and store.lease_key("ab") == "twc:{ab}:l"
    await store.close()


async def test_redis_sets_a_ttl_on_what_it_stores(redis_server: RedisServer, key: str) -> None:
    store = RedisCacheStore(redis_server.url)
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await store.put(key, entry(), 60_000, NOW)
        await store.try_lease(key, "t", 30_000, NOW)
        assert 59_000 < await client.pttl(store.entry_key(key)) <= 60_000
        assert 29_000 < await client.pttl(store.lease_key(key)) <= 30_000
    finally:
        await client.aclose()
        await store.close()


@pytest.mark.parametrize(
    "value",
    [b"garbage", b"\xff\xfe\x00", b"99999999999999:{not json", b"99999999999999:" + b'{"v":1,"api":"x"}'],
)
async def test_a_corrupt_redis_entry_is_a_miss_and_is_deleted(
    redis_server: RedisServer, key: str, value: bytes
) -> None:
    store = RedisCacheStore(redis_server.url)
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await client.set(store.entry_key(key), value)
        assert await store.get(key, NOW) is None
        assert await client.exists(store.entry_key(key)) == 0
        await client.set(store.entry_key(key), value)
        assert (await store.poll(key, NOW)).entry is None
        assert await client.exists(store.entry_key(key)) == 0
    finally:
        await client.aclose()
        await store.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_under_maxmemory_eviction_an_evicted_entry_is_just_a_miss(private_redis: RedisServer) -> None:
    client = redis.asyncio.Redis.from_url(private_redis.url)
    await client.config_set("maxmemory", "3mb")
    await client.config_set("maxmemory-policy", "allkeys-lru")
    store = RedisCacheStore(private_redis.url)
    try:
        keys = [f"k{i}" for i in range(400)]
        for k in keys:  # ~20 KB each: 8 MB into 3 MB
            assert await store.put(k, entry(k, padding=20_000), 600_000, NOW)
        found = [await store.get(k, NOW) for k in keys]
        assert found[-1] == entry(keys[-1], padding=20_000)
        assert 0 < sum(f is None for f in found) < len(keys)  # some evicted, read as misses
    finally:
        await client.aclose()
        await store.close()


async def test_with_noeviction_an_entry_that_does_not_fit_is_not_stored_and_is_no_error(
    private_redis: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(private_redis.url)
    store = RedisCacheStore(private_redis.url)
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        for i in range(100):
            await store.put(f"fill{i}", entry(padding=20_000), 600_000, NOW)
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory", str(used))
        assert await store.try_lease("k", "t", 60_000, NOW)  # no lease can be taken: go upstream alone
        assert not await store.put("k", entry(padding=50_000), 600_000, NOW, lease_token="t")
        assert await store.get("fill0", NOW) is not None  # reads still work
        assert await store.get("k", NOW) is None
    finally:
        await client.aclose()
        await store.close()


async def test_redis_down_is_cache_unavailable_and_caching_resumes_when_it_is_back(
    private_redis: RedisServer,
) -> None:
    store = RedisCacheStore(private_redis.url, timeout_s=0.3, cooldown_s=0.2)
    coalescer = Coalescer(store, clock=lambda: NOW)
    try:
        await store.put("k", entry(), 600_000, NOW)
        private_redis.stop()
        with pytest.raises(CacheUnavailable, match=r"Redis at redis://127\.0\.0\.1"):
            await store.get("k", NOW)
        started = time.monotonic()
        looked = await coalescer.lookup("k", DECISION, wait_s=5)
        assert (looked.outcome, looked.unavailable, looked.entry, looked.fill) == ("BYPASS", True, None, None)
        assert time.monotonic() - started < 0.5  # in cooldown: fails at once, never waits out a timeout
        private_redis.start()  # same port, empty (no persistence)
        await asyncio.sleep(0.25)  # past the cooldown
        looked = await coalescer.lookup("k", DECISION, wait_s=5)
        assert looked.outcome == "MISS" and looked.fill is not None and not looked.unavailable
        await looked.fill.complete(entry())
        assert (await coalescer.lookup("k", DECISION, wait_s=5)).outcome == "HIT"
    finally:
        await store.close()


async def test_a_hung_redis_is_unavailable_within_the_timeout(private_redis: RedisServer) -> None:
    store = RedisCacheStore(private_redis.url, timeout_s=0.2)
    try:
        await store.ping()
        private_redis.pause()
        started = time.monotonic()
        with pytest.raises(CacheUnavailable, match="timed out"):
            await store.get("k", NOW)
        assert time.monotonic() - started < 1.0
    finally:
        private_redis.resume()
        await store.close()


# ---- coalescing


@dataclass
class Upstream:
    """A stand-in for the provider: counts the calls that reach it."""

    calls: int = 0
    delay_s: float = 0.05
    fail: bool = False

    async def serve(
        self, coalescer: Coalescer, key: str, decision: CacheDecision, wait_s: float = 10
    ) -> Lookup:
        looked = await coalescer.lookup(key, decision, wait_s=wait_s)
        if looked.entry is None:
            self.calls += 1
            await asyncio.sleep(self.delay_s)
            assert looked.fill is not None or not decision.write
            if looked.fill is not None:
                if self.fail:
                    await looked.fill.abandon()
                else:
                    await looked.fill.complete(entry(created_ms=NOW))
        return looked


def clock() -> int:
    return NOW


async def test_50_concurrent_identical_misses_make_one_upstream_call(store: CacheStore, key: str) -> None:
    upstream = Upstream()
    coalescer = Coalescer(store, clock=clock)
    results = await asyncio.gather(*(upstream.serve(coalescer, key, DECISION) for _ in range(50)))
    assert upstream.calls == 1
    assert sorted(r.outcome for r in results) == ["HIT"] * 49 + ["MISS"]
    assert {r.entry for r in results if r.entry is not None} == {entry()}
    assert sum(r.waited for r in results) == 49


async def test_two_replicas_on_one_redis_still_make_one_upstream_call(
    redis_server: RedisServer, key: str
) -> None:
    stores = [RedisCacheStore(redis_server.url), RedisCacheStore(redis_server.url)]
    replicas = [Coalescer(s, clock=clock) for s in stores]
    upstream = Upstream(delay_s=0.1)
    try:
        results = await asyncio.gather(*(upstream.serve(replicas[i % 2], key, DECISION) for i in range(50)))
    finally:
        for s in stores:
            await s.close()
    assert upstream.calls == 1
    assert sorted(r.outcome for r in results) == ["HIT"] * 49 + ["MISS"]


async def test_two_coalescers_over_one_memory_store_make_one_upstream_call(key: str) -> None:
    store = MemoryCacheStore()
    replicas = [Coalescer(store, clock=clock), Coalescer(store, clock=clock)]
    upstream = Upstream()
    await asyncio.gather(*(upstream.serve(replicas[i % 2], key, DECISION) for i in range(20)))
    assert upstream.calls == 1


@pytest.mark.parametrize("replicas", [1, 2])
async def test_a_filler_that_fails_releases_its_waiters_promptly(
    redis_server: RedisServer, key: str, replicas: int
) -> None:
    stores = [RedisCacheStore(redis_server.url) for _ in range(replicas)]
    coalescers = [Coalescer(s, clock=clock) for s in stores]
    upstream = Upstream(delay_s=0.1, fail=True)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(upstream.serve(coalescers[i % replicas], key, DECISION, wait_s=30) for i in range(20))
        )
        elapsed = time.monotonic() - started
    finally:
        for s in stores:
            await s.close()
    # The failed filler's waiters each went upstream themselves, at once: not after the 30 s bound.
    assert upstream.calls == 20 and elapsed < 2.0
    assert all(r.outcome == "MISS" and r.fill is not None for r in results)


async def test_a_waiter_goes_upstream_itself_after_its_bound(store: CacheStore, key: str) -> None:
    coalescer = Coalescer(store, clock=clock)
    first = await coalescer.lookup(key, DECISION, wait_s=10)
    assert first.fill is not None  # the filler never finishes within the waiter's bound
    started = time.monotonic()
    second = await coalescer.lookup(key, DECISION, wait_s=0.2)
    assert 0.15 < time.monotonic() - started < 1.0
    assert second.outcome == "MISS" and second.fill is not None and second.waited
    await first.fill.abandon()


async def test_a_replica_waits_for_another_replicas_fill_and_gets_its_answer(
    store: CacheStore, key: str
) -> None:
    filler, waiter = Coalescer(store, clock=clock), Coalescer(store, clock=clock)
    first = await filler.lookup(key, DECISION, wait_s=10)
    assert first.fill is not None
    pending = asyncio.create_task(waiter.lookup(key, DECISION, wait_s=10))
    await asyncio.sleep(0.05)
    assert not pending.done()
    await first.fill.complete(entry())
    second = await asyncio.wait_for(pending, 1.0)
    assert (second.outcome, second.entry, second.waited) == ("HIT", entry(), True)


async def test_refresh_read_only_bypass_and_max_age(store: CacheStore, key: str) -> None:
    coalescer = Coalescer(store, clock=clock)
    await store.put(key, entry("old", created_ms=NOW - 30_000), 60_000, NOW)
    assert (await coalescer.lookup(key, DECISION, wait_s=1)).entry == entry("old", created_ms=NOW - 30_000)

    off = await coalescer.lookup(key, decide(SETTINGS, {"x-tollway-cache": "off"}), wait_s=1)
    assert (off.outcome, off.entry, off.fill) == ("BYPASS", None, None)

    young = await coalescer.lookup(key, decide(SETTINGS, {"cache-control": "max-age=10"}), wait_s=1)
    assert young.outcome == "MISS" and young.entry is None and young.fill is not None  # 30 s old > 10 s
    await young.fill.abandon()

    read_only = decide(SETTINGS, {"x-tollway-cache": "read-only"})
    assert (await coalescer.lookup(key, read_only, wait_s=1)).outcome == "HIT"
    await store.delete(key)
    missed = await coalescer.lookup(key, read_only, wait_s=1)
    assert (missed.outcome, missed.fill) == ("MISS", None)  # a read-only miss stores nothing

    refresh = await coalescer.lookup(key, decide(SETTINGS, {"x-tollway-cache": "refresh"}), wait_s=1)
    assert (refresh.outcome, refresh.entry) == ("REFRESH", None) and refresh.fill is not None
    await refresh.fill.complete(entry("new"))
    assert (await coalescer.lookup(key, DECISION, wait_s=1)).entry == entry("new")


async def test_a_fill_stores_with_the_decisions_ttl(store: CacheStore, key: str) -> None:
    now = [NOW]
    coalescer = Coalescer(store, clock=lambda: now[0])
    looked = await coalescer.lookup(key, decide(SETTINGS, {"cache-control": "max-age=5"}), wait_s=1)
    assert looked.fill is not None
    await looked.fill.complete(entry())
    now[0] = NOW + 4_999
    assert (await coalescer.lookup(key, DECISION, wait_s=1)).outcome == "HIT"
    now[0] = NOW + 5_000
    late = await coalescer.lookup(key, DECISION, wait_s=1)
    assert late.outcome == "MISS"
    assert late.fill is not None
    await late.fill.abandon()


async def test_a_cancelled_leader_hands_the_lead_to_a_waiter(store: CacheStore, key: str) -> None:
    filler, replica = Coalescer(store, clock=clock), Coalescer(store, clock=clock)
    held = await filler.lookup(key, DECISION, wait_s=30)  # another replica's fill in flight
    assert held.fill is not None
    leader = asyncio.create_task(replica.lookup(key, DECISION, wait_s=30))  # polls the store
    await asyncio.sleep(0.02)
    follower = asyncio.create_task(replica.lookup(key, DECISION, wait_s=30))  # awaits the leader
    await asyncio.sleep(0.02)
    leader.cancel()  # its client went away: the follower now polls in its place
    await asyncio.sleep(0.05)
    assert not follower.done()
    await held.fill.complete(entry())
    followed = await asyncio.wait_for(follower, 1.0)
    assert (followed.outcome, followed.entry, followed.waited) == ("HIT", entry(), True)


async def test_a_read_only_leader_with_nothing_in_flight_hands_the_lead_on(
    store: CacheStore, key: str
) -> None:
    upstream = Upstream()
    coalescer = Coalescer(store, clock=clock)
    read_only = decide(SETTINGS, {"x-tollway-cache": "read-only"})
    first = asyncio.create_task(upstream.serve(coalescer, key, read_only))
    others = [asyncio.create_task(upstream.serve(coalescer, key, DECISION)) for _ in range(20)]
    results = await asyncio.gather(first, *others)
    # The read-only call goes upstream without storing; the next one leads and fills for the rest.
    # (On Redis the others wait on the read-only leader while it reads; the memory store never
    # suspends, so there they find no leader at all. The counts are the same.)
    assert upstream.calls == 2
    assert sorted(r.outcome for r in results) == ["HIT"] * 19 + ["MISS"] * 2


async def test_a_fill_ends_once(store: CacheStore, key: str) -> None:
    looked = await Coalescer(store, clock=clock).lookup(key, DECISION, wait_s=5)
    assert looked.fill is not None
    assert await looked.fill.complete(entry("first"))
    assert not await looked.fill.complete(entry("second"))
    await looked.fill.abandon()  # after complete: nothing happens
    assert await store.get(key, NOW) == entry("first")


async def test_a_fill_whose_store_went_down_still_serves_its_local_waiters(
    private_redis: RedisServer,
) -> None:
    store = RedisCacheStore(private_redis.url, timeout_s=0.3)
    coalescer = Coalescer(store, clock=clock)
    try:
        first = await coalescer.lookup("k", DECISION, wait_s=5)
        assert first.fill is not None
        waiter = asyncio.create_task(coalescer.lookup("k", DECISION, wait_s=5))
        await asyncio.sleep(0.02)
        private_redis.stop()
        assert not await first.fill.complete(entry())  # not stored, and no error
        second = await asyncio.wait_for(waiter, 1.0)
        assert (second.outcome, second.entry) == ("HIT", entry())
    finally:
        await store.close()


async def test_a_decision_that_neither_reads_nor_writes_does_not_touch_the_store(
    private_redis: RedisServer,
) -> None:
    store = RedisCacheStore(private_redis.url, timeout_s=0.3)
    private_redis.stop()
    try:
        looked = await Coalescer(store, clock=clock).lookup(
            "k", decide(SETTINGS, {"x-tollway-cache": "off"}), wait_s=1
        )
        assert (looked.outcome, looked.unavailable, looked.fill) == ("BYPASS", False, None)
    finally:
        await store.close()


async def test_a_fill_lease_lasts_lease_s_not_the_waiters_bound(store: CacheStore, key: str) -> None:
    # Real time for both stores here: Redis expires leases by its own clock.
    filler, replica = Coalescer(store, clock=wall_ms), Coalescer(store, clock=wall_ms)
    long = await filler.lookup(key, DECISION, wait_s=0.05, lease_s=30)
    assert long.fill is not None and long.fill.token is not None
    await asyncio.sleep(0.1)
    behind = await replica.lookup(key, DECISION, wait_s=0.1)
    assert behind.waited and behind.fill is not None and behind.fill.token is None  # still leased
    await long.fill.abandon()

    short = await filler.lookup(key, DECISION, wait_s=0.05)  # the lease lasts wait_s by default
    assert short.fill is not None and short.fill.token is not None
    await asyncio.sleep(0.1)
    after = await replica.lookup(key, DECISION, wait_s=0.1)
    assert not after.waited and after.fill is not None and after.fill.token is not None
    await after.fill.abandon()
