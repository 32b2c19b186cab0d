"""The stored-response records against a real redis-server, and the in-memory store beside it:
read back, per namespace, removed, expiring (30 days on Redis), bounded in memory."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redisserver import RedisServer

from tollway_sidecar.extproc.response_store import (
    TTL_S,
    MemoryResponseStore,
    RedisResponseStore,
    ResponseStore,
    ResponseStoreUnavailable,
    StoredResponse,
)

RECORD = StoredResponse(key="team-a/app", route="pair", backend="second")


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ResponseStore]:
    if request.param == "memory":
        yield MemoryResponseStore()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_store = RedisResponseStore(server.url, timeout_s=2.0)
    try:
        yield redis_store
    finally:
        await redis_store.close()


@pytest.fixture
def response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


async def test_a_record_is_read_back_in_its_namespace_only(store: ResponseStore, response_id: str) -> None:
    assert await store.get("team-a", response_id) is None
    await store.put("team-a", response_id, RECORD)
    assert await store.get("team-a", response_id) == RECORD
    assert await store.get("team-b", response_id) is None


async def test_a_forgotten_record_is_gone(store: ResponseStore, response_id: str) -> None:
    await store.put("team-a", response_id, RECORD)
    await store.forget("team-a", response_id)
    assert await store.get("team-a", response_id) is None
    await store.forget("team-a", response_id)  # twice is no error


async def test_redis_keeps_a_record_30_days_under_its_namespaces_hash_tag(
    redis_server: RedisServer, response_id: str
) -> None:
    store = RedisResponseStore(redis_server.url, timeout_s=2.0)
    client = aioredis.from_url(redis_server.url)
    try:
        await store.put("team-a", response_id, RECORD)
        key = f"tw:resp:{{team-a}}:{response_id}"
        assert RedisResponseStore.key("team-a", response_id) == key
        assert TTL_S - 60 < await client.ttl(key) <= TTL_S == 30 * 24 * 3600
        await client.set(key, "not a record")
        assert await store.get("team-a", response_id) is None  # read as unknown, never an error
    finally:
        await client.aclose()
        await store.close()


async def test_an_unreachable_redis_is_unavailable_not_unknown() -> None:
    store = RedisResponseStore("redis://127.0.0.1:1", timeout_s=0.5)
    try:
        with pytest.raises(ResponseStoreUnavailable, match=re.escape("127.0.0.1:1")):
            await store.get("team-a", "resp_1")
        with pytest.raises(ResponseStoreUnavailable):
            await store.put("team-a", "resp_1", RECORD)
    finally:
        await store.close()


async def test_memory_forgets_the_oldest_past_its_limit_and_expires() -> None:
    store = MemoryResponseStore(limit=2)
    for name in ("a", "b", "c"):
        await store.put("ns", name, RECORD)
    assert [await store.get("ns", name) for name in ("a", "b", "c")] == [None, RECORD, RECORD]
    short = MemoryResponseStore(ttl_s=0.05)
    await short.put("ns", "a", RECORD)
    await asyncio.sleep(0.1)
    assert await short.get("ns", "a") is None
