"""How far the meter is behind the stream: entries not yet delivered, entries delivered but not yet
acknowledged, and the oldest of either (its stream id is the Redis time it was appended at)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from tollway_meter.stream_scan import CHUNK, after, scan, text


@dataclass(frozen=True)
class Lag:
    undelivered: int  # XINFO GROUPS `lag`: never read by any consumer of the group
    pending: int  # read, not yet acknowledged (in a batch, or held by a dead consumer)
    oldest_ms: int | None  # stream-id time of the oldest entry not yet acknowledged; None: none

    def seconds(self, now_ms: int) -> float:
        return 0.0 if self.oldest_ms is None else max(0, now_ms - self.oldest_ms) / 1000


def id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


async def measure(client: aioredis.Redis, stream: str, group: str) -> Lag:
    """From XINFO GROUPS and XPENDING; a stream or group not made yet has no lag."""
    if not await client.exists(stream):
        return Lag(0, 0, None)
    groups = await client.xinfo_groups(stream)
    found = next((g for g in groups if text(g["name"]) == group), None)
    if found is None:
        return Lag(await client.xlen(stream), 0, None)
    last = text(found["last-delivered-id"])
    first_new = await client.xrange(stream, min=after(last), max="+", count=1)
    lag = found.get("lag")
    if lag is None:
        # Redis cannot tell (entries were deleted under the group): count what follows the bound.
        lag = await _count_after(client, stream, last)
    pending: Any = await client.xpending(stream, group)
    oldest = [id_ms(text(first_new[0][0]))] if first_new else []
    if pending["pending"]:
        oldest.append(id_ms(text(pending["min"])))
    return Lag(int(lag), int(pending["pending"]), min(oldest) if oldest else None)


async def _count_after(client: aioredis.Redis, stream: str, last: str) -> int:
    count, start = 0, after(last)
    while chunk := await client.xrange(stream, min=start, max="+", count=CHUNK):
        count += len(chunk)
        start = after(text(chunk[-1][0]))
    return count


async def holds_events_before(
    client: aioredis.Redis, stream: str, group: str, moment: datetime, limit: int
) -> bool:
    """True if an entry not yet acknowledged carries an event whose time is before `moment`, or the
    backlog is longer than `limit` entries (a meter that far behind has not caught up)."""
    if not await client.exists(stream):
        return False
    groups = await client.xinfo_groups(stream)
    found = next((g for g in groups if text(g["name"]) == group), None)
    if found is None:
        return bool(await client.xlen(stream))  # this group has read none of it yet
    pending: Any = await client.xpending(stream, group)
    # Everything from the oldest pending entry on (acknowledged ones not yet trimmed included: erring
    # towards "not caught up" only delays a close by a batch).
    start = text(pending["min"]) if pending["pending"] else after(text(found["last-delivered-id"]))
    seen = 0
    async for chunk in scan(client, stream, start):
        if any(event is not None and event.time < moment for event in chunk):
            return True
        seen += len(chunk)
        if seen >= limit:
            return True
    return False
