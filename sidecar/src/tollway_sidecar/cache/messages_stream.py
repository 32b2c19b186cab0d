"""A streamed Anthropic message, event by event, back into the one message it spelled out. Pure.

Each block opens with `content_block_start`, grows by `text_delta`, `thinking_delta`,
`signature_delta` or `input_json_delta` (a tool's input, as JSON text in pieces) and closes with
`content_block_stop`; `message_delta` brings the stop reason. Any other delta (`citations_delta`) or
block type is `Unstorable`, as in `messages`; an `error` event too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tollway_sidecar.cache.messages import Block, MessagesAnswer, block_from_json
from tollway_sidecar.cache.unstorable import Unstorable

__all__ = ["MessagesStream"]

_DELTA_FIELD = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "signature_delta": "signature",
    "input_json_delta": "partial_json",
}


@dataclass
class _Open:
    start: dict[str, Any]
    parts: dict[str, list[str]] = field(default_factory=dict)  # delta field → pieces


class MessagesStream:
    """Joins Anthropic stream events. `chars` counts the text kept, for the size bound."""

    def __init__(self) -> None:
        self.chars = 0
        self._id = ""
        self._model = ""
        self._stop_reason = ""
        self._stop_sequence: str | None = None
        self._open: dict[int, _Open] = {}
        self._blocks: dict[int, Block] = {}

    def add(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise Unstorable("event is not a JSON object")
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._id = str(message.get("id") or "")
                self._model = str(message.get("model") or "")
        elif kind == "content_block_start":
            block = event.get("content_block")
            if not isinstance(block, dict):
                raise Unstorable("content_block_start has no block")
            self._open[self._index(event)] = _Open(block)
        elif kind == "content_block_delta":
            self._delta(self._index(event), event.get("delta"))
        elif kind == "content_block_stop":
            index = self._index(event)
            opened = self._open.pop(index, None)
            if opened is None:
                raise Unstorable(f"block {index} stopped before it started")
            self._blocks[index] = _finished(opened)
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("stop_reason"), str):
                    self._stop_reason = delta["stop_reason"]
                if isinstance(delta.get("stop_sequence"), str):
                    self._stop_sequence = delta["stop_sequence"]
        elif kind == "error":
            raise Unstorable("the stream reported an error")
        # ping, message_stop and event types added later carry no content

    @staticmethod
    def _index(event: dict[str, Any]) -> int:
        index = event.get("index")
        if type(index) is not int:
            raise Unstorable("a block event has no index")
        return index

    def _delta(self, index: int, delta: Any) -> None:
        opened = self._open.get(index)
        if opened is None or not isinstance(delta, dict):
            raise Unstorable(f"a delta for block {index}, which is not open")
        name = _DELTA_FIELD.get(str(delta.get("type")))
        if name is None:
            raise Unstorable(f"delta type {delta.get('type')!r} is not replayed")
        value = delta.get(name)
        if not isinstance(value, str):
            raise Unstorable(f"{name} is not a string")
        self.chars += len(value)
        opened.parts.setdefault(name, []).append(value)

    def answer(self) -> MessagesAnswer:
        if self._open:
            raise Unstorable("a content block never stopped")
        return MessagesAnswer(
            id=self._id,
            model=self._model,
            content=tuple(self._blocks[index] for index in sorted(self._blocks)),
            stop_reason=self._stop_reason,
            stop_sequence=self._stop_sequence,
        )


def _finished(opened: _Open) -> Block:
    """The block as a JSON answer would have had it: its start, completed by the joined deltas."""
    start, parts = opened.start, {name: "".join(values) for name, values in opened.parts.items()}
    kind = start.get("type")
    if kind in ("text", "thinking"):
        fields = ("text",) if kind == "text" else ("thinking", "signature")
        whole = {**start, **{name: str(start.get(name) or "") + parts.get(name, "") for name in fields}}
        return block_from_json(whole)
    if kind == "tool_use":
        text = parts.get("partial_json", "")
        try:
            value = json.loads(text) if text.strip() else start.get("input") or {}
        except ValueError as exc:
            raise Unstorable("a tool_use input is not JSON") from exc
        return block_from_json({**start, "input": value})
    if parts:
        raise Unstorable(f"deltas for a {kind!r} block")
    return block_from_json(start)  # redacted_thinking comes whole; anything else is refused there
