"""The response cache: per-request policy, keys, entries and their replay, stores, coalescing.

The wiring's whole surface (docs/caching.md, "Integration API"): `decide` a call's `CacheDecision`
from its route's `CacheSettings` and headers (a Responses call only if `responses_uncacheable` finds
nothing against it), name its entry with `cache_key`, `Coalescer.lookup`
it, and on a miss fill the entry with `entry_from_json` or a `StreamFill`, then end the `Fill`.
"""

from tollway_sidecar.cache.coalesce import Coalescer, Fill, Lookup, wall_ms
from tollway_sidecar.cache.entry import Api, CacheEntry, CorruptEntry, decode_entry
from tollway_sidecar.cache.fill import StreamFill, entry_from_json
from tollway_sidecar.cache.key import cache_key
from tollway_sidecar.cache.memory import MemoryCacheStore
from tollway_sidecar.cache.request_policy import BadCacheHeader, CacheDecision, CacheOutcome, decide
from tollway_sidecar.cache.responses import responses_uncacheable
from tollway_sidecar.cache.store import CacheStore, CacheUnavailable
from tollway_sidecar.cache.unstorable import Unstorable

__all__ = [
    "Api",
    "BadCacheHeader",
    "CacheDecision",
    "CacheEntry",
    "CacheOutcome",
    "CacheStore",
    "CacheUnavailable",
    "Coalescer",
    "CorruptEntry",
    "Fill",
    "Lookup",
    "MemoryCacheStore",
    "StreamFill",
    "Unstorable",
    "cache_key",
    "decide",
    "decode_entry",
    "entry_from_json",
    "responses_uncacheable",
    "wall_ms",
]
