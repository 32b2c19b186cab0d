"""The cache key of a call: a SHA-256 over everything that may change its answer or its audience. Pure.

Hashed, as one canonical JSON array: a format version; the partition (who may read the entry: the
key, its team within its namespace, or its namespace, plus the namespace and seed headers); the
RouteRule and the client's model (not the backend: a fallback to another backend answers the same
question, so it does not split the cache); the path; and the request body re-serialised with sorted
keys, compact separators and `ensure_ascii=False`, without `stream`, `stream_options` and `user`
(so a streamed and a non-streamed call share one entry, and end users of one key share its entries).

The body is the client's, parsed before the gateway rewrites it (`stream_options` added, a model
renamed). Numbers keep their JSON spelling as Python reads it, so `1` and `1.0` are two keys: a
missed hit, never a wrong one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from tollway_sidecar.config.models import CachePartition, VirtualKey

__all__ = ["IGNORED_FIELDS", "KEY_VERSION", "cache_key", "canonical_body", "partition_of"]

KEY_VERSION: Final = 1  # bump when what is hashed changes: old entries then simply stop matching
IGNORED_FIELDS: Final = frozenset({"stream", "stream_options", "user"})


def canonical_body(body: Mapping[str, Any]) -> str:
    """The request body as the key sees it."""
    kept = {name: value for name, value in body.items() if name not in IGNORED_FIELDS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def partition_of(partition: CachePartition, key: VirtualKey) -> tuple[str, ...]:
    """Who shares entries. A key without a team is a partition of its own under `Team`; a team is
    named within its namespace, since two namespaces (tenants) may each have a team called `ml`."""
    if partition == "Namespace":
        return ("namespace", key.namespace)
    if partition == "Team" and key.owner_team:
        return ("team", key.namespace, key.owner_team)
    return ("key", key.id)


def cache_key(
    *,
    partition: CachePartition,
    key: VirtualKey,
    route_id: str,
    client_model: str,
    path: str,
    body: Mapping[str, Any],
    extra_parts: tuple[tuple[str, str], ...] = (),
) -> str:
    """The hex SHA-256 that names a call's entry. `extra_parts` are `CacheDecision.partition_parts`."""
    material = [
        KEY_VERSION,
        list(partition_of(partition, key)),
        [list(part) for part in extra_parts],
        route_id,
        client_model,
        path,
        canonical_body(body),
    ]
    text = json.dumps(material, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
