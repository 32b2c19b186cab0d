"""Response cache costs in process: a hit's lookup on each store, a replay's rendering, a miss's extra.

    .venv/bin/python -m bench.cache_bench [--ops 3000]

Starts its own redis-server (scripts/tools/redis.sh, as `quota_bench` does) and times, one at a time:

1. The lookup of a hit: `decide` + `cache_key` for a typical chat request, then `Coalescer.lookup`
   on the memory store and on Redis (one GET and the entry's decode), and the store's `get` alone.
2. Rendering a stored ~2 KB answer (chat and messages): `to_json()`, `to_sse()`, and the stored
   form's decode.
3. What a miss pays extra with caching on: `StreamFill` over the answer's ~2 KB stream (the events
   re-read, joined and the entry encoded), `entry_from_json` for a JSON answer, and the `put`.

Prints median and p99 in microseconds. Loopback, 2 shared cores: compare rows, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.quota_bench import start_redis
from tollway_sidecar.cache import (
    CacheEntry,
    Coalescer,
    MemoryCacheStore,
    StreamFill,
    cache_key,
    decide,
    decode_entry,
    entry_from_json,
)
from tollway_sidecar.cache.redis_store import RedisCacheStore
from tollway_sidecar.cache.store import CacheStore
from tollway_sidecar.config.models import CacheSettings, VirtualKey

NOW = 1_760_000_000_000
SETTINGS = CacheSettings(mode="Exact")
KEY = VirtualKey(name="bench", namespace="bench", key_sha256="0" * 64)
REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a concise assistant. " * 8},
        {"role": "user", "content": "Explain what a response cache in an LLM gateway does. " * 4},
    ],
    "temperature": 0,
    "stream": True,
}
HEADERS = {"content-type": "application/json", "x-tollway-cache-seed": "bench"}
TEXT = ("A response cache answers a repeated question from a stored answer instead of the model. " * 22)[
    :1800
]
CHAT_ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_760_000_000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": TEXT},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 120, "completion_tokens": 400, "total_tokens": 520},
}
MESSAGES_ANSWER = {
    "id": "msg_bench",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [{"type": "text", "text": TEXT}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 120, "output_tokens": 400},
}


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(ops: int, fn: Callable[[], object]) -> tuple[float, float]:
    for _ in range(min(200, ops)):
        fn()
    samples = []
    for _ in range(ops):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return stats(samples)


async def timed_async(ops: int, fn: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    for _ in range(min(200, ops)):
        await fn()
    samples = []
    for _ in range(ops):
        start = time.perf_counter_ns()
        await fn()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return stats(samples)


def entry_of(api: Any, answer: dict[str, Any]) -> CacheEntry:
    body = json.dumps(answer).encode()
    return entry_from_json(api, 200, body, cost_nano=123_456, created_ms=NOW, max_entry_bytes=1 << 20)


def fill_stream(stream: bytes) -> CacheEntry:
    fill = StreamFill("chat", max_entry_bytes=1 << 20)
    for start in range(0, len(stream), 512):
        fill.feed(stream[start : start + 512])
    return fill.finish(status=200, cost_nano=123_456, created_ms=NOW)


async def lookups(ops: int, store: CacheStore, entry: CacheEntry) -> dict[str, tuple[float, float]]:
    coalescer = Coalescer(store, clock=lambda: NOW)
    key = cache_key(
        partition="Key",
        key=KEY,
        route_id="bench/chat",
        client_model="gpt-4o-mini",
        path="/v1/chat/completions",
        body=REQUEST,
    )
    await store.put(key, entry, 3_600_000, NOW)
    decision = decide(SETTINGS, HEADERS)

    async def lookup() -> None:
        found = await coalescer.lookup(key, decision, wait_s=1)
        assert found.entry is not None

    return {
        f"{store.name}: store.get (hit)": await timed_async(ops, lambda: store.get(key, NOW)),
        f"{store.name}: Coalescer.lookup (hit)": await timed_async(ops, lookup),
        f"{store.name}: put (miss's store)": await timed_async(
            ops, lambda: store.put(key, entry, 3_600_000, NOW)
        ),
    }


async def main_async(ops: int) -> None:
    chat, messages = entry_of("chat", CHAT_ANSWER), entry_of("messages", MESSAGES_ANSWER)
    stream = chat.to_sse(include_usage=True)
    rows: dict[str, tuple[float, float]] = {}

    def policy_and_key() -> str:
        decision = decide(SETTINGS, HEADERS)
        return cache_key(
            partition="Key",
            key=KEY,
            route_id="bench/chat",
            client_model="gpt-4o-mini",
            path="/v1/chat/completions",
            body=REQUEST,
            extra_parts=decision.partition_parts,
        )

    rows["decide + cache_key"] = timed(ops, policy_and_key)
    rows |= await lookups(ops, MemoryCacheStore(), chat)
    with tempfile.TemporaryDirectory() as workdir:
        process, port = start_redis(Path(workdir))
        store = RedisCacheStore(f"redis://127.0.0.1:{port}/0")
        try:
            rows |= await lookups(ops, store, chat)
        finally:
            await store.close()
            process.terminate()
            process.wait()
    rows["decode_entry (stored form)"] = timed(ops, lambda: decode_entry(chat.encoded))
    rows["chat to_json"] = timed(ops, chat.to_json)
    rows["chat to_sse(include_usage)"] = timed(ops, lambda: chat.to_sse(include_usage=True))
    rows["messages to_json"] = timed(ops, messages.to_json)
    rows["messages to_sse"] = timed(ops, lambda: messages.to_sse(include_usage=True))
    rows["miss: entry_from_json"] = timed(ops, lambda: entry_of("chat", CHAT_ANSWER).encoded)
    rows["miss: StreamFill (feed+finish)"] = timed(ops, lambda: fill_stream(stream).encoded)

    print(f"answer: {len(chat.to_json())} B as JSON, {len(stream)} B as SSE, {len(chat.encoded)} B stored")
    print(f"{'operation':<36} {'p50 µs':>9} {'p99 µs':>9}")
    for name, (p50, p99) in rows.items():
        print(f"{name:<36} {p50:>9.1f} {p99:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ops", type=int, default=3000)
    asyncio.run(main_async(parser.parse_args().ops))


if __name__ == "__main__":
    main()
