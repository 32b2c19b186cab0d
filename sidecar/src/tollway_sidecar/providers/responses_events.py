"""Writing the Responses API's typed stream events: numbered, framed, one content part at a time. Pure.

`ResponsesEvents.event(kind, **fields)` is one SSE event, `event: <type>` + `data: {"type",
"sequence_number", ...}`, numbered from 0. The part helpers write what every streamed content part
goes through: `content_part.added` with the part empty, its deltas, its `*.done` and
`content_part.done` with the part whole. Used by the chat → Responses translator
(`responses_stream`) as a stream arrives and by the response cache to replay a stored response.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ResponsesEvents", "empty_part"]

# Content part type → (the field its text is in, the delta and done events' prefix).
_PART_TEXT: Final = {
    "output_text": ("text", "response.output_text"),
    "refusal": ("refusal", "response.refusal"),
    "reasoning_text": ("text", "response.reasoning_text"),
}


def empty_part(part: dict[str, Any]) -> dict[str, Any]:
    """A content part as `content_part.added` announces it: its text still empty."""
    field, _ = _PART_TEXT[part["type"]]
    return {**part, field: ""}


class ResponsesEvents:
    """Numbers and frames events; `on_event(name, data)` sees each one as it is written."""

    __slots__ = ("_on_event", "sequence")

    def __init__(self, on_event: Callable[[bytes | None, bytes], None] | None = None) -> None:
        self._on_event = on_event
        self.sequence = 0

    def event(self, kind: str, **fields: Any) -> bytes:
        data = json.dumps(
            {"type": kind, "sequence_number": self.sequence, **fields},
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        self.sequence += 1
        name = kind.encode()
        if self._on_event is not None:
            self._on_event(name, data)
        return b"event: " + name + b"\ndata: " + data + b"\n\n"

    def part_added(self, item_id: str, output_index: int, content_index: int, part: dict[str, Any]) -> bytes:
        return self.event(
            "response.content_part.added",
            item_id=item_id,
            output_index=output_index,
            content_index=content_index,
            part=empty_part(part),
        )

    def part_delta(self, item_id: str, output_index: int, content_index: int, kind: str, delta: str) -> bytes:
        """One piece of a part's text; `kind` is the part's type."""
        where = {"item_id": item_id, "output_index": output_index, "content_index": content_index}
        prefix = _PART_TEXT[kind][1]
        if kind == "output_text":
            return self.event(prefix + ".delta", **where, delta=delta, logprobs=[])
        return self.event(prefix + ".delta", **where, delta=delta)

    def part_done(self, item_id: str, output_index: int, content_index: int, part: dict[str, Any]) -> bytes:
        """The part's `*.done` with its whole text, then `content_part.done` with the part."""
        where = {"item_id": item_id, "output_index": output_index, "content_index": content_index}
        field, prefix = _PART_TEXT[part["type"]]
        if part["type"] == "output_text":
            out = self.event(prefix + ".done", **where, text=part[field], logprobs=part.get("logprobs", []))
        else:
            out = self.event(prefix + ".done", **where, **{field: part[field]})
        return out + self.event("response.content_part.done", **where, part=part)
