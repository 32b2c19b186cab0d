"""Reading the usage stream without a consumer group: what reconcile and the close check look through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from tollway_sidecar.contract.usage_event import USAGE_FIELD, UsageEvent, UsageEventError

CHUNK = 1000


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def after(entry_id: str) -> str:
    """An exclusive XRANGE bound."""
    return "(" + entry_id


async def scan(
    client: aioredis.Redis, stream: str, start: str = "-"
) -> AsyncIterator[list[UsageEvent | None]]:
    """The stream's entries from `start` on, a chunk at a time, as events (None: an entry the meter
    dead-letters, which carries no money and no period)."""
    while True:
        chunk: Any = await client.xrange(stream, min=start, max="+", count=CHUNK)
        if not chunk:
            return
        yield [_event(fields) for _entry_id, fields in chunk]
        if len(chunk) < CHUNK:
            return
        start = after(text(chunk[-1][0]))


def _event(fields: Any) -> UsageEvent | None:
    raw = (fields or {}).get(USAGE_FIELD.encode(), (fields or {}).get(USAGE_FIELD))
    if raw is None:
        return None
    try:
        return UsageEvent.from_json(text(raw))
    except UsageEventError:
        return None
