"""Semantic matching's search cost: one linear scan of a full partition, in memory and on Redis.

    .venv/bin/python -m bench.semantic_bench [--ops 50]

Fills one partition with 256 random unit vectors (the bound) at 256 and 1536 dimensions and times
`nearest` (the scan, pure Python: numpy is not a dependency) on the memory store and on a Redis
started here (one HGETALL of the partition, the unpacking, the scan), one `add` on Redis (the
script that stores a vector and drops the oldest), and one slice of a scan (the longest the scan
holds the event loop before other calls run). Prints median and p99 in microseconds; loopback,
2 shared cores: compare rows, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

from bench.cache_bench import timed, timed_async
from bench.quota_bench import start_redis
from tollway_sidecar.cache.redis_store import RedisCacheStore
from tollway_sidecar.cache.redis_vectors import RedisVectorStore
from tollway_sidecar.cache.vectors import (
    DEFAULT_MAX_PER_PARTITION,
    SCAN_SLICE,
    MemoryVectorStore,
    Vector,
    VectorStore,
    nearest,
    unit,
)

NOW = 1_760_000_000_000


def random_unit(rng: random.Random, dims: int) -> Vector:
    vector = unit([rng.uniform(-1, 1) for _ in range(dims)])
    assert vector is not None
    return vector


async def fill(store: VectorStore, partition: str, dims: int, rng: random.Random) -> None:
    for i in range(DEFAULT_MAX_PER_PARTITION):
        await store.add(partition, f"{i:064x}", random_unit(rng, dims), 600_000, NOW + i)


async def main_async(ops: int) -> None:
    rng = random.Random(7)
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        process, port = start_redis(Path(workdir))
        redis_store = RedisCacheStore(f"redis://127.0.0.1:{port}/0", timeout_s=5)
        try:
            for dims in (256, 1536):
                query = random_unit(rng, dims)
                for store in (MemoryVectorStore(), RedisVectorStore(redis_store)):
                    partition = f"bench-{dims}"
                    await fill(store, partition, dims, rng)
                    name = f"{store.name}: nearest, 256 x {dims}"
                    rows[name] = await timed_async(
                        ops, lambda s=store, p=partition, q=query: s.nearest(p, q, NOW)
                    )
                vectors = RedisVectorStore(redis_store)
                counter = iter(range(10**9))
                rows[f"redis: add (bound 256), {dims}"] = await timed_async(
                    ops,
                    lambda v=vectors, d=dims, c=counter, q=query: v.add(
                        f"bench-{d}", f"n{next(c)}", q, 600_000, NOW + 1_000
                    ),
                )
        finally:
            await redis_store.close()
            process.terminate()
            process.wait()
    query = random_unit(rng, 1536)
    piece = [(f"{i}", random_unit(rng, 1536), NOW + 1) for i in range(SCAN_SLICE // 1536)]
    rows["one scan slice (21 x 1536), the loop held"] = timed(ops, lambda: nearest(query, piece, NOW))
    print(f"{'operation':<44} {'p50 µs':>9} {'p99 µs':>9}")
    for name, (p50, p99) in rows.items():
        print(f"{name:<44} {p50:>9.1f} {p99:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=50)
    asyncio.run(main_async(parser.parse_args().ops))


if __name__ == "__main__":
    main()
