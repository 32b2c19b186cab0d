"""Reading the quota counters: the one store operation the operator shares with the sidecar.

A read first expires the namespace's due reservations (the sweep every store operation runs), so
`usd_r` is current, and appends each expired call's usage event to the usage stream (so the
operator's reads emit them too); then it returns each counter's fields. Both quota stores and the operator's
reader (`redis_counters.RedisCounters`) implement `CounterReader`.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any, Final, Protocol

from tollway_sidecar.contract.keys import index_key, namespace_prefix, reservation_prefix
from tollway_sidecar.contract.usage_event import USAGE_FIELD, USAGE_STREAM, USAGE_STREAM_MAXLEN

__all__ = [
    "READ_SWEEP_LIMIT",
    "SHARDED_STREAM_PATTERN",
    "CounterReader",
    "StoreUnavailable",
    "read_reply",
    "read_request",
    "read_script",
    "sweep_source",
    "usage_stream_for",
]

READ_SWEEP_LIMIT: Final = 1000  # expired reservations a read clears
USAGE_STREAM_SUFFIX: Final = "usage"
# SCAN MATCH for every namespace's stream on a Redis Cluster (how the meter finds them).
SHARDED_STREAM_PATTERN: Final = f"tw:{{*}}:{USAGE_STREAM_SUFFIX}"


def usage_stream_for(namespace: str | None, *, sharded: bool) -> str:
    """The stream a namespace's usage events go to. One Redis: the one `USAGE_STREAM`. A Redis
    Cluster (`sharded`): `tw:{<namespace>}:usage`, in the slot of the namespace's counters, so a
    settle appends its event in the same script (None: an event of no namespace, to `USAGE_STREAM`)."""
    if not sharded or namespace is None:
        return USAGE_STREAM
    return namespace_prefix(namespace) + USAGE_STREAM_SUFFIX


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time."""


class CounterReader(Protocol):
    async def read(self, namespace: str, keys: Sequence[str], now_ms: int) -> dict[str, dict[str, int]]:
        """The fields of each counter (missing counters are empty), after expiring due reservations."""
        ...


def _lua(name: str) -> str:
    return (resources.files("tollway_sidecar.contract") / "lua" / f"{name}.lua").read_text()


def sweep_source() -> str:
    """The Lua function every quota script starts with: expire a namespace's due reservations."""
    return _lua("sweep")


def read_script() -> str:
    return sweep_source() + "\n" + _lua("read")


def read_request(
    namespace: str,
    keys: Sequence[str],
    now_ms: int,
    stream_maxlen: int = USAGE_STREAM_MAXLEN,
    stream: str = USAGE_STREAM,
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of the read script (`stream_maxlen`: the usage stream's approximate cap;
    `stream`: the namespace's, `usage_stream_for`)."""
    return (
        [index_key(namespace), stream, *keys],
        [now_ms, reservation_prefix(namespace), READ_SWEEP_LIMIT, USAGE_FIELD, stream_maxlen],
    )


def read_reply(keys: Sequence[str], reply: Any) -> dict[str, dict[str, int]]:
    """The read script's reply (one flat HGETALL array per counter) by counter key."""
    out: dict[str, dict[str, int]] = {}
    for key, flat in zip(keys, reply, strict=True):
        out[key] = {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
    return out
