"""Writing server-sent events for a replayed answer (reading them is `providers.usage.SseParser`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Final

__all__ = ["PIECE_CHARS", "dumps", "pieces"]

# A replayed text goes out in pieces of this many characters, so a streaming client sees a stream
# (a UI renders it as it comes, a client timing the first token gets one), not one aggregated chunk.
PIECE_CHARS: Final = 48


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def pieces(text: str) -> Iterator[str]:
    """`text` in consecutive pieces of at most `PIECE_CHARS` characters (none for an empty text)."""
    for start in range(0, len(text), PIECE_CHARS):
        yield text[start : start + PIECE_CHARS]
