"""Anthropic Messages streaming events → OpenAI `chat.completion.chunk` events, chunk by chunk. Pure.

`ChunkTranslator.feed(raw)` takes the bytes of the provider's stream as they arrive (event
boundaries may fall anywhere) and returns the OpenAI SSE bytes to send in their place (possibly
empty while an event is incomplete). Event by event:

- `message_start` → a chunk with `delta: {role: "assistant", content: ""}`;
- `content_block_start` of a `tool_use` → `delta.tool_calls: [{index, id, type: "function",
  function: {name, arguments: ""}}]`;
- `content_block_delta`: `text_delta` → `delta: {content}`; `input_json_delta` →
  `delta.tool_calls: [{index, function: {arguments: partial_json}}]`;
- `message_delta` → `delta: {}` with the `finish_reason` mapped from `stop_reason`;
- `message_stop` → the usage chunk (`choices: []`, only when the client asked for it), then `[DONE]`;
- `error` → `data: {"error": {...}}`, as OpenAI reports a failure mid-stream;
- `ping`, `content_block_stop`, thinking and signature deltas → nothing.
"""

from __future__ import annotations

import json
from typing import Any, Final

from tollway_sidecar.providers.anthropic import finish_reason, usage_to_openai
from tollway_sidecar.providers.sse_blocks import SseBlocks, SseEvent

__all__ = ["ChunkTranslator"]

_DONE: Final = b"data: [DONE]\n\n"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _index(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class ChunkTranslator:
    def __init__(self, *, model: str, created: int, include_usage: bool) -> None:
        self._blocks = SseBlocks()
        self._id = ""
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._usage: dict[str, Any] = {}
        self._tools: dict[int, int] = {}  # Anthropic block index → OpenAI tool_calls index
        self._done = False
        self.error: str | None = None  # the first thing that could not be translated

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, raw: bytes) -> bytes:
        out = b"".join(self._event_bytes(event) for event in self._blocks.feed(raw))
        if self._blocks.overflowed:
            self._note("event too large")
        return out

    def flush(self) -> bytes:
        """At the end of the stream: an unterminated last event, if complete lines were sent."""
        event = self._blocks.flush()
        return self._event_bytes(event) if event is not None else b""

    def _event_bytes(self, event: SseEvent) -> bytes:
        if event.data is None:
            return b""
        try:
            obj = json.loads(event.data)
        except ValueError:
            self._note("event data is not JSON")
            return b""
        if not isinstance(obj, dict):
            return b""
        kind = obj.get("type") if isinstance(obj.get("type"), str) else event.name
        return self._translate(str(kind or ""), obj)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _event(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
        )

    def _translate(self, kind: str, obj: dict[str, Any]) -> bytes:
        if kind == "message_start":
            message = _obj(obj.get("message"))
            self._id = str(message.get("id") or self._id)
            self._model = str(message.get("model") or self._model)
            self._merge(message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = _obj(obj.get("content_block"))
            if block.get("type") == "tool_use":
                index = len(self._tools)
                self._tools[_index(obj.get("index"))] = index
                call = {
                    "index": index,
                    "id": str(block.get("id") or f"call_{index}"),
                    "type": "function",
                    "function": {"name": str(block.get("name") or ""), "arguments": ""},
                }
                return self._chunk({"tool_calls": [call]})
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": str(block["text"])})
            return b""
        if kind == "content_block_delta":
            delta = _obj(obj.get("delta"))
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                return self._chunk({"content": delta["text"]})
            if delta.get("type") == "input_json_delta":
                call_index = self._tools.get(_index(obj.get("index")))
                partial = delta.get("partial_json")
                if call_index is None or not isinstance(partial, str) or not partial:
                    return b""
                return self._chunk(
                    {"tool_calls": [{"index": call_index, "function": {"arguments": partial}}]}
                )
            return b""  # thinking, signatures, citations
        if kind == "message_delta":
            self._merge(obj.get("usage"))
            delta = _obj(obj.get("delta"))
            reason = finish_reason(delta.get("stop_reason"))
            return self._chunk({}, reason) if reason else b""
        if kind == "message_stop":
            self._done = True
            out = b""
            usage = usage_to_openai(self._usage) if self._usage else None
            if self._include_usage and usage is not None:
                out = _event(
                    {
                        "id": self._id,
                        "object": "chat.completion.chunk",
                        "created": self._created,
                        "model": self._model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            return out + _DONE
        if kind == "error":
            error = _obj(obj.get("error"))
            self._note(f"provider error: {error.get('type')}")
            return _event(
                {
                    "error": {
                        "message": str(error.get("message") or "The Anthropic backend failed mid-stream."),
                        "type": str(error.get("type") or "api_error"),
                        "param": None,
                        "code": error.get("type"),
                    }
                }
            )
        return b""  # ping, content_block_stop, event types added later

    def _merge(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._usage.update((k, v) for k, v in usage.items() if v is not None)

    def _note(self, error: str) -> None:
        if self.error is None:
            self.error = error
