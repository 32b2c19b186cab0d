"""Server-sent events split out of a byte stream as they complete: the framing the stream translators
share. Pure.

`SseBlocks.feed(raw)` takes bytes as they arrive (an event's boundary may fall anywhere, `\\n\\n` or
`\\r\\n\\r\\n`) and returns the events completed so far, each as its `event:` name (None when absent)
and its `data:` lines joined by `\\n` (None when it has none: a comment or a bare `event:` line).
`flush()` returns an unterminated last event at the end of the stream.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["MAX_PENDING", "SseBlocks", "SseEvent", "parse_block"]

# One event larger than this is not an answer a gateway should buffer: it is dropped and reported.
MAX_PENDING: Final = 16 * 1024 * 1024


class SseEvent(NamedTuple):
    name: str | None
    data: bytes | None


def parse_block(block: bytes) -> SseEvent:
    """One event's lines (without the blank line that ends it) → its name and joined data."""
    name: str | None = None
    data: list[bytes] = []
    for line in block.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
    return SseEvent(name, b"\n".join(data) if data else None)


class SseBlocks:
    def __init__(self, *, max_pending: int = MAX_PENDING) -> None:
        self._pending = bytearray()
        self._max_pending = max_pending
        self.overflowed = False  # an event outgrew max_pending and was dropped

    def feed(self, raw: bytes) -> list[SseEvent]:
        self._pending += raw
        events: list[SseEvent] = []
        while True:
            end, size = self._boundary()
            if end < 0:
                break
            block = bytes(self._pending[:end])
            del self._pending[: end + size]
            events.append(parse_block(block))
        if len(self._pending) > self._max_pending:
            self.overflowed = True
            self._pending.clear()
        return events

    def flush(self) -> SseEvent | None:
        """At the end of the stream: an unterminated last event, if anything but whitespace is left."""
        block, self._pending = bytes(self._pending), bytearray()
        return parse_block(block) if block.strip() else None

    def _boundary(self) -> tuple[int, int]:
        candidates = [(self._pending.find(sep), len(sep)) for sep in (b"\n\n", b"\r\n\r\n")]
        found = [(at, size) for at, size in candidates if at >= 0]
        return min(found) if found else (-1, 0)
