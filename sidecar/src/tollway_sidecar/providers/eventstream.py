"""The AWS event-stream binary framing (Bedrock's ConverseStream), decoded as bytes arrive. Pure.

A frame is a prelude (total length, headers length: two big-endian uint32, then the prelude's CRC32),
typed headers, a payload and the whole frame's CRC32. botocore's `EventStreamBuffer` does the
decoding and both checksums; this wraps it so a bad frame is reported, never raised, and nothing is
read after it (the framing cannot be resynchronised once a length is wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from botocore.eventstream import EventStreamBuffer, ParserError

__all__ = ["CONTENT_TYPE", "Frame", "FrameReader"]

CONTENT_TYPE: Final = "application/vnd.amazon.eventstream"


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded message: its `:message-type`, `:event-type` (or `:exception-type`) and payload."""

    message_type: str
    event_type: str
    payload: bytes


class FrameReader:
    """Feed it chunks with frame boundaries anywhere; it returns the frames each chunk completes."""

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self.error: str | None = None  # set once a frame failed to decode; later bytes are ignored
        self._pending = 0

    @property
    def partial(self) -> bool:
        """Whether bytes of an unfinished frame are held (a stream ending now was cut mid-frame)."""
        return self._pending > 0

    def feed(self, chunk: bytes) -> list[Frame]:
        if self.error is not None:
            return []
        self._buffer.add_data(chunk)
        frames: list[Frame] = []
        try:
            for message in self._buffer:
                headers = message.headers
                message_type = str(headers.get(":message-type", "event"))
                if message_type == "exception":
                    kind = headers.get(":exception-type", "")
                elif message_type == "error":
                    kind = headers.get(":error-code", "")
                else:
                    kind = headers.get(":event-type", "")
                frames.append(Frame(message_type, str(kind), bytes(message.payload)))
        except ParserError as exc:
            self.error = f"malformed event-stream frame: {type(exc).__name__}"
            self._pending = 0
            return frames
        self._pending = len(self._buffer._data)
        return frames
