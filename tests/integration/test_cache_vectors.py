"""Semantic matching's vector stores, in memory and on a real redis-server: one suite for both.

The property test embeds generated prompts with the mock provider's embedding function (the far side
of the network, ours: a bag of seeded word vectors, so paraphrases are close and unrelated prompts
near orthogonal), names their partitions with `semantic_query` as the request path does, and checks
over more than 1,000 prompt pairs that a paraphrase hits its entry in its own partition and that no
search ever returns an entry of another partition.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from rediscluster import RedisCluster
from redisserver import RedisServer

from tollway.mockprovider.content import embedding_vector
from tollway_sidecar.cache.redis_store import RedisCacheStore
from tollway_sidecar.cache.redis_vectors import RedisVectorStore
from tollway_sidecar.cache.semantic_key import semantic_query
from tollway_sidecar.cache.vectors import (
    SCAN_SLICE,
    MemoryVectorStore,
    Vector,
    VectorStore,
    pack,
    unit,
    unpack,
)
from tollway_sidecar.config.models import VirtualKey

NOW = 1_760_000_000_000
DIMS = 128
THRESHOLD = Decimal("0.9")


# A fresh cluster client's first command also learns the slots and connects to the primaries; on a
# busy 2-core machine that can pass the store's 0.5 s default. These tests are about what the store
# keeps; its timeout is tested on `private_redis` in test_cache_store.py.
FUNCTIONAL_TIMEOUT_S = 5.0


@pytest.fixture(params=["memory", "redis", "cluster"])
async def vectors(request: pytest.FixtureRequest) -> AsyncIterator[VectorStore]:
    if request.param == "memory":
        yield MemoryVectorStore(max_per_partition=8)
        return
    # On a Redis Cluster too: each entry's keys (and each partition's) share one hash tag.
    server: RedisServer | RedisCluster = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    store = RedisCacheStore(server.url, timeout_s=FUNCTIONAL_TIMEOUT_S)
    try:
        yield RedisVectorStore(store, max_per_partition=8)
    finally:
        await store.close()


def vec(text: str) -> Vector:
    found = unit(embedding_vector(text, DIMS))
    assert found is not None
    return found


@pytest.fixture
def partition() -> str:
    return uuid.uuid4().hex


def test_pack_round_trip_and_bad_values() -> None:
    vector = vec("hello world")
    decoded = unpack(pack(vector, NOW))
    assert decoded is not None
    assert decoded[1] == NOW and len(decoded[0]) == DIMS
    assert all(abs(a - b) < 1e-6 for a, b in zip(decoded[0], vector, strict=True))
    assert unpack(b"") is None and unpack(pack(vector, NOW)[:-1]) is None
    assert unit([0.0, 0.0]) is None and unit([]) is None


async def test_the_nearest_vector_of_the_partition(vectors: VectorStore, partition: str) -> None:
    assert await vectors.nearest(partition, vec("anything"), NOW) is None
    await vectors.add(partition, "france", vec("what is the capital of france"), 60_000, NOW)
    await vectors.add(partition, "bread", vec("how do I bake sourdough bread"), 60_000, NOW)
    match = await vectors.nearest(partition, vec("What is the capital city of France?"), NOW + 1)
    assert match is not None and match.entry_id == "france"
    assert match.similarity > 0.85
    match = await vectors.nearest(partition, vec("Bread, sourdough: bake I do HOW"), NOW + 1)
    assert match is not None and match.entry_id == "bread" and match.similarity > 0.99


async def test_a_large_partition_is_scanned_in_slices_with_the_same_result(
    vectors: VectorStore, partition: str
) -> None:
    dims = SCAN_SLICE // 3  # three vectors a slice: the 8 are scanned in three slices
    texts = [f"alpha beta gamma delta {i} w{i}" for i in range(8)]
    for i, text in enumerate(texts):
        found = unit(embedding_vector(text, dims))
        assert found is not None
        await vectors.add(partition, f"e{i}", found, 60_000, NOW)
    query = unit(embedding_vector("W5 5 alpha beta gamma delta", dims))
    assert query is not None
    match = await vectors.nearest(partition, query, NOW)
    assert match is not None and match.entry_id == "e5" and match.similarity > 0.99


async def test_another_partition_is_never_searched(vectors: VectorStore, partition: str) -> None:
    text = "what is the capital of france"
    await vectors.add(partition, "france", vec(text), 60_000, NOW)
    assert await vectors.nearest(uuid.uuid4().hex, vec(text), NOW) is None


async def test_a_vector_expires_with_its_entry(vectors: VectorStore, partition: str) -> None:
    await vectors.add(partition, "short", vec("one two three"), 1_000, NOW)
    await vectors.add(partition, "long", vec("four five six"), 60_000, NOW)
    match = await vectors.nearest(partition, vec("one two three"), NOW + 999)
    assert match is not None and match.entry_id == "short"
    match = await vectors.nearest(partition, vec("one two three"), NOW + 1_000)
    assert match is not None and match.entry_id == "long"  # the expired one is not a candidate


async def test_the_oldest_are_dropped_beyond_the_bound(vectors: VectorStore, partition: str) -> None:
    for i in range(10):  # the bound is 8
        await vectors.add(partition, f"e{i}", vec(f"prompt number {i} zz{i}"), 60_000, NOW + i)
    for i in range(10):
        match = await vectors.nearest(partition, vec(f"prompt number {i} zz{i}"), NOW + 20)
        assert match is not None
        assert (match.entry_id == f"e{i}") == (i >= 2), i  # e0 and e1 are gone


async def test_a_refill_replaces_the_vector(vectors: VectorStore, partition: str) -> None:
    await vectors.add(partition, "e", vec("alpha beta"), 60_000, NOW)
    await vectors.add(partition, "e", vec("gamma delta"), 60_000, NOW + 1)
    match = await vectors.nearest(partition, vec("gamma delta"), NOW + 2)
    assert match is not None and match.entry_id == "e" and match.similarity > 0.99


async def test_vectors_of_other_dimensions_are_skipped(vectors: VectorStore, partition: str) -> None:
    other = unit(embedding_vector("alpha beta", 16))
    assert other is not None
    await vectors.add(partition, "small", other, 60_000, NOW)
    assert await vectors.nearest(partition, vec("alpha beta"), NOW) is None


async def test_redis_keys_share_a_hash_tag_and_expire(redis_server: RedisServer, partition: str) -> None:
    import redis.asyncio

    store = RedisCacheStore(redis_server.url)
    try:
        vectors = RedisVectorStore(store)
        await vectors.add(partition, "e", vec("alpha"), 5_000, NOW)
        client = redis.asyncio.Redis.from_url(redis_server.url)
        keys = sorted(k.decode() for k in await client.keys(f"*{partition}*"))
        assert keys == [f"twc:{{{partition}}}:o", f"twc:{{{partition}}}:v"]
        assert all(0 < ttl <= 5_000 for ttl in [await client.pttl(k) for k in keys])
        await vectors.add(partition, "f", vec("beta"), 1_000, NOW)  # a shorter one never shortens
        assert all(ttl > 1_000 for ttl in [await client.pttl(k) for k in keys])
        await client.aclose()
    finally:
        await store.close()


# ---- the cross-partition property

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "fi", "gu", "ha", "je"]


def _prompts(count: int, rng: random.Random) -> list[list[str]]:
    vocabulary = sorted({"".join(rng.choices(_SYLLABLES, k=3)) for _ in range(6000)})
    return [rng.sample(vocabulary, 9) for _ in range(count)]


def _paraphrase(words: list[str], rng: random.Random) -> str:
    shuffled = words[:]
    rng.shuffle(shuffled)  # another order, another spelling, one word more
    return "Please, " + " ".join(w.upper() if rng.random() < 0.3 else w for w in shuffled) + "?"


KEYS = [
    VirtualKey(name="a", namespace="ns1", key_sha256="a" * 64, owner_team="ml"),
    VirtualKey(name="b", namespace="ns1", key_sha256="b" * 64, owner_team="ml"),
    VirtualKey(name="c", namespace="ns2", key_sha256="c" * 64, owner_team="ml"),
]


def _partitions() -> list[str]:
    """Four partitions of one route and body: two keys, a team of another namespace, a seed."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    named = []
    for key, partition, parts in [
        (KEYS[0], "Key", ()),
        (KEYS[1], "Key", ()),
        (KEYS[2], "Team", ()),
        (KEYS[0], "Key", (("seed", "7"),)),
    ]:
        found = semantic_query(
            api="chat",
            partition=partition,  # type: ignore[arg-type]
            key=key,
            route_id="chat",
            client_model="m",
            path="/v1/chat/completions",
            body=body,
            extra_parts=parts,
        )
        assert found is not None
        named.append(found.partition)
    assert len(set(named)) == 4
    return named


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_paraphrases_hit_in_their_partition_and_never_across(
    store_kind: str, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(1234)
    redis_store = None
    if store_kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis_store = RedisCacheStore(server.url, prefix=f"twc{uuid.uuid4().hex[:6]}:")
        vectors: VectorStore = RedisVectorStore(redis_store)
    else:
        vectors = MemoryVectorStore()
    partitions = _partitions()
    prompts = _prompts(4 * 100 + 100, rng)
    stored, unrelated = prompts[:400], prompts[400:]
    owner: dict[str, str] = {}  # entry id → the partition it was stored in
    for index, words in enumerate(stored):
        home = partitions[index % 4]
        owner[f"entry-{index}"] = home
        await vectors.add(home, f"entry-{index}", vec(" ".join(words)), 60_000, NOW)

    same_hits = same_pairs = cross_hits = cross_pairs = unrelated_hits = 0
    for index, words in enumerate(stored):
        query = vec(_paraphrase(words, rng))
        for partition in partitions:
            match = await vectors.nearest(partition, query, NOW + 1)
            hit = match is not None and Decimal(match.similarity) >= THRESHOLD
            assert match is None or owner[match.entry_id] == partition  # nothing comes from elsewhere
            if partition == owner[f"entry-{index}"]:
                same_pairs += 1
                same_hits += hit and match is not None and match.entry_id == f"entry-{index}"
            else:
                cross_pairs += 1
                cross_hits += hit
    for words in unrelated:
        for partition in partitions:
            match = await vectors.nearest(partition, vec(" ".join(words)), NOW + 1)
            unrelated_hits += match is not None and Decimal(match.similarity) >= THRESHOLD
    if redis_store is not None:
        await redis_store.close()

    assert same_pairs + cross_pairs >= 1_000
    assert cross_hits == 0, f"{cross_hits} of {cross_pairs} cross-partition pairs hit"
    assert same_hits == same_pairs, f"{same_pairs - same_hits} of {same_pairs} paraphrases missed"
    assert unrelated_hits == 0


async def test_the_memory_store_is_bounded_by_bytes_least_recently_written_first() -> None:
    store = MemoryVectorStore(max_bytes=4 * DIMS * 5)  # five vectors' worth
    for i in range(3):
        await store.add("old", f"o{i}", vec(f"old {i} q{i}"), 60_000, NOW)
    for i in range(3):
        await store.add("new", f"n{i}", vec(f"new {i} r{i}"), 60_000, NOW)
    assert store.bytes == 4 * DIMS * 5
    assert (store.count("old"), store.count("new")) == (2, 3)  # the oldest of "old" went first
    for i in range(3, 6):
        await store.add("new", f"n{i}", vec(f"new {i} r{i}"), 60_000, NOW)
    assert (store.count("old"), store.count("new")) == (0, 5)
    assert store.bytes == 4 * DIMS * 5
