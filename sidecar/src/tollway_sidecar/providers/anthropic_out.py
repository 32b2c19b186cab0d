"""Anthropic Messages answers written from another API's: the JSON `message` and its SSE events. Pure.

The Messages adapters over non-Anthropic backends (Bedrock Converse, Gemini) read their backend's
answer and write it here, so every such client receives the same shapes: `message()` for a whole
answer; `MessagesEvents` for a stream — `message_start`, per content block `content_block_start` /
`content_block_delta` (`text_delta`, `input_json_delta`) / `content_block_stop`, then
`message_delta` (stop reason, usage) and `message_stop`, or an `error` event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from tollway_sidecar.providers.errors import anthropic_error_body
from tollway_sidecar.providers.usage import TokenUsage

__all__ = ["MessagesEvents", "message", "text_of", "usage_of"]


def usage_of(usage: TokenUsage) -> dict[str, int]:
    """Usage as Anthropic spells it: `input_tokens` without the cache reads and writes beside it."""
    return {
        "input_tokens": usage.uncached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens,
    }


def _message(model: str, content: list[dict[str, Any]], stop: str | None) -> dict[str, Any]:
    return {
        "id": "msg_" + uuid.uuid4().hex,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
    }


def message(
    *, model: str, content: list[dict[str, Any]], stop_reason: str, usage: TokenUsage | str
) -> dict[str, Any]:
    """A whole Messages answer; `usage` is left out when the backend's could not be read (a str)."""
    out = _message(model, content, stop_reason)
    if isinstance(usage, TokenUsage):
        out["usage"] = usage_of(usage)
    return out


def text_of(content: list[dict[str, Any]]) -> str | None:
    """A message's text blocks joined (for content capture); None when it has none."""
    texts = [b["text"] for b in content if b["type"] == "text"]
    return "".join(texts) if texts else None


class MessagesEvents:
    """The SSE events of one streamed Messages answer, each as the bytes to send the client.

    `on_event(name, data)`, when given, sees every event written (the response cache replays them).
    """

    def __init__(self, *, model: str, on_event: Callable[[bytes | None, bytes], None] | None = None) -> None:
        self._model, self._on_event = model, on_event

    def send(self, name: str, obj: dict[str, Any]) -> bytes:
        data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        if self._on_event is not None:
            self._on_event(name.encode(), data)
        return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"

    def start(self) -> bytes:
        """`message_start`: the answer's envelope, its usage still zero (it comes with the end)."""
        start = _message(self._model, [], None) | {"usage": {"input_tokens": 0, "output_tokens": 0}}
        return self.send("message_start", {"type": "message_start", "message": start})

    def block_start(self, index: int, block: dict[str, Any]) -> bytes:
        return self.send(
            "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        )

    def text_delta(self, index: int, text: str) -> bytes:
        return self._delta(index, {"type": "text_delta", "text": text})

    def json_delta(self, index: int, partial_json: str) -> bytes:
        return self._delta(index, {"type": "input_json_delta", "partial_json": partial_json})

    def block_stop(self, index: int) -> bytes:
        return self.send("content_block_stop", {"type": "content_block_stop", "index": index})

    def end(self, stop_reason: str | None, usage: TokenUsage | None) -> bytes:
        """`message_delta` (stop reason; usage, output 0 when none was read), then `message_stop`."""
        end = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason or "end_turn", "stop_sequence": None},
            "usage": usage_of(usage) if usage is not None else {"output_tokens": 0},
        }
        return self.send("message_delta", end) + self.send("message_stop", {"type": "message_stop"})

    def error(self, message: str) -> bytes:
        """An `api_error` event: the backend failed mid-stream (the stream ends with it)."""
        return self.send("error", json.loads(anthropic_error_body(500, message)))

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return self.send(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
