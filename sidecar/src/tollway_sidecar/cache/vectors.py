"""Stored embeddings of cached calls, per semantic partition, and the linear scan that searches them.

A partition holds at most `max_per_partition` vectors (default 256), the oldest dropped first; each
carries its entry's expiry. Vectors are kept as float32 arrays (4 bytes a dimension, what an
embedding is worth; a tuple of Python floats would take 32), and the memory store is bounded by
their bytes too. Vectors are unit length when stored, so cosine similarity is a dot
product. The scan is pure Python (numpy is not a dependency): its cost grows with the partition's
count times the dimensions (docs/caching.md, "Semantic matching", has the measurement).
"""

from __future__ import annotations

import asyncio
import math
import operator
import struct
import sys
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PER_PARTITION",
    "Match",
    "MemoryVectorStore",
    "VectorStore",
    "nearest",
    "pack",
    "scan",
    "unit",
    "unpack",
]

DEFAULT_MAX_PER_PARTITION: Final = 256
_MAX_PARTITIONS: Final = 4096  # memory store: least recently written partitions dropped beyond it
_HEAD: Final = struct.Struct("<Q")  # the expiry (ms) in front of a packed vector
# Multiplications per slice of a scan; the scan lets the event loop run other calls between slices
# (~0.5-1 ms each here), so a long scan never holds every call on the replica for its whole length.
SCAN_SLICE: Final = 32 * 1024

Vector = Sequence[float]  # unit length; stored as float32 (`array("f")`)
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024  # the memory store's vectors, all partitions together


@dataclass(frozen=True, slots=True)
class Match:
    entry_id: str  # the exact cache key of the entry the vector belongs to
    similarity: float  # cosine similarity, in [-1, 1]


def unit(values: Sequence[float]) -> array[float] | None:
    """`values` scaled to length 1, as float32 (None for an empty, zero or non-finite vector)."""
    norm = math.sqrt(math.fsum(v * v for v in values))
    if not values or norm == 0 or not math.isfinite(norm):
        return None
    return array("f", (v / norm for v in values))


def _little_endian(values: array[float]) -> array[float]:
    if sys.byteorder == "big":
        values.byteswap()
    return values


def pack(vector: Vector, expires_ms: int) -> bytes:
    """The stored form: the expiry, then little-endian float32 values."""
    return _HEAD.pack(expires_ms) + _little_endian(array("f", vector)).tobytes()


def unpack(data: bytes) -> tuple[array[float], int] | None:
    """A stored vector and its expiry; None for a value that does not decode."""
    body = len(data) - _HEAD.size
    if body <= 0 or body % 4:
        return None
    (expires_ms,) = _HEAD.unpack_from(data)
    values = array("f")
    values.frombytes(data[_HEAD.size :])  # a copy of the bytes, no float objects made
    return _little_endian(values), expires_ms


def nearest(query: Vector, candidates: Iterable[tuple[str, Vector, int]], now_ms: int) -> Match | None:
    """The most similar live candidate (entry id, vector, expiry) of the query's dimensions."""
    best: Match | None = None
    size = len(query)
    for entry_id, vector, expires_ms in candidates:
        if expires_ms <= now_ms or len(vector) != size:
            continue  # expired, or embedded by another model (a changed embeddings route)
        similarity = sum(map(operator.mul, query, vector))
        if best is None or similarity > best.similarity:
            best = Match(entry_id, similarity)
    return best


async def scan(query: Vector, candidates: Sequence[tuple[str, Vector, int]], now_ms: int) -> Match | None:
    """`nearest`, in slices of `SCAN_SLICE` multiplications with the event loop run between them."""
    step = max(1, SCAN_SLICE // max(1, len(query)))
    best: Match | None = None
    for start in range(0, len(candidates), step):
        if start:
            await asyncio.sleep(0)
        found = nearest(query, candidates[start : start + step], now_ms)
        if found is not None and (best is None or found.similarity > best.similarity):
            best = found
    return best


class VectorStore(Protocol):
    name: str

    async def add(self, partition: str, entry_id: str, vector: Vector, ttl_ms: int, now_ms: int) -> None:
        """Keep `vector` (unit length) for `entry_id` until `now_ms + ttl_ms`, dropping the
        partition's oldest vectors beyond its bound."""
        ...

    async def nearest(self, partition: str, query: Vector, now_ms: int) -> Match | None:
        """The partition's most similar live vector to `query`; never one of another partition."""
        ...

    async def close(self) -> None: ...


class MemoryVectorStore:
    """Partitions in order of their last write; past `max_bytes` (4 per dimension, all partitions)
    or `_MAX_PARTITIONS`, the least recently written partition loses its oldest vectors first."""

    name = "memory"

    def __init__(
        self, *, max_per_partition: int = DEFAULT_MAX_PER_PARTITION, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_per_partition = max_per_partition
        self.max_bytes = max_bytes
        self.bytes = 0
        self._partitions: OrderedDict[str, OrderedDict[str, tuple[array[float], int]]] = OrderedDict()

    def count(self, partition: str) -> int:
        return len(self._partitions.get(partition, ()))

    def _drop_oldest(self, vectors: OrderedDict[str, tuple[array[float], int]]) -> None:
        _, (vector, _) = vectors.popitem(last=False)
        self.bytes -= 4 * len(vector)

    async def add(self, partition: str, entry_id: str, vector: Vector, ttl_ms: int, now_ms: int) -> None:
        stored = array("f", vector)
        vectors = self._partitions.setdefault(partition, OrderedDict())
        self._partitions.move_to_end(partition)
        if entry_id in vectors:  # a refill moves to the newest end
            self.bytes -= 4 * len(vectors.pop(entry_id)[0])
        vectors[entry_id] = (stored, now_ms + ttl_ms)
        self.bytes += 4 * len(stored)
        while len(vectors) > self.max_per_partition:
            self._drop_oldest(vectors)
        while self.bytes > self.max_bytes or len(self._partitions) > _MAX_PARTITIONS:
            oldest = next(iter(self._partitions.values()))
            self._drop_oldest(oldest)
            if not oldest:
                self._partitions.popitem(last=False)

    async def nearest(self, partition: str, query: Vector, now_ms: int) -> Match | None:
        vectors = self._partitions.get(partition)
        if not vectors:
            return None
        # A copy: `add` may change the partition between the scan's slices.
        return await scan(query, [(k, v, e) for k, (v, e) in vectors.items()], now_ms)

    async def close(self) -> None:
        self._partitions.clear()
        self.bytes = 0
