"""An Anthropic message as the cache keeps it: read from a JSON answer, rendered as JSON or SSE. Pure.

Kept: the content blocks in order — `text`, `thinking` (with its signature, which the API checks
when the thinking is sent back in a later turn), `redacted_thinking` and `tool_use` — the stop reason
and sequence, the id and the model. Usage is rendered from the entry's `TokenUsage`. Blocks of other
types (server tools, search results) and text with citations are `Unstorable`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from tollway_sidecar.cache.sse import dumps, pieces
from tollway_sidecar.cache.unstorable import Unstorable
from tollway_sidecar.providers.usage import TokenUsage

__all__ = [
    "FINISHED",
    "Block",
    "MessagesAnswer",
    "RedactedThinkingBlock",
    "TextBlock",
    "ThinkingBlock",
    "ToolUseBlock",
    "anthropic_usage",
    "block_from_json",
    "messages_from_json",
    "messages_json",
    "messages_sse",
]

FINISHED: Final = frozenset({"end_turn", "stop_sequence", "tool_use"})


@dataclass(frozen=True, slots=True)
class TextBlock:
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingBlock:
    thinking: str
    signature: str


@dataclass(frozen=True, slots=True)
class RedactedThinkingBlock:
    data: str


@dataclass(frozen=True, slots=True)
class ToolUseBlock:
    id: str
    name: str
    input_json: str  # the input object as compact JSON text


Block = TextBlock | ThinkingBlock | RedactedThinkingBlock | ToolUseBlock


@dataclass(frozen=True, slots=True)
class MessagesAnswer:
    id: str
    model: str
    content: tuple[Block, ...]
    stop_reason: str
    stop_sequence: str | None = None

    def check_finished(self) -> None:
        if self.stop_reason not in FINISHED:
            raise Unstorable(f"stop_reason {self.stop_reason!r}")


def _str(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise Unstorable(f"{name} is not a string")
    return value


def block_from_json(block: Any) -> Block:
    """One content block of a message (also a stream's finished block)."""
    if not isinstance(block, dict):
        raise Unstorable("a content block is not an object")
    kind = block.get("type")
    if kind == "text":
        if block.get("citations"):
            raise Unstorable("citations are not replayed")
        return TextBlock(_str(block, "text"))
    if kind == "thinking":
        return ThinkingBlock(_str(block, "thinking"), _str(block, "signature"))
    if kind == "redacted_thinking":
        return RedactedThinkingBlock(_str(block, "data"))
    if kind == "tool_use":
        value = block.get("input")
        if not isinstance(value, dict):
            raise Unstorable("a tool_use input is not an object")
        return ToolUseBlock(_str(block, "id"), _str(block, "name"), dumps(value))
    raise Unstorable(f"content block type {kind!r} is not replayed")


def messages_from_json(obj: Any) -> MessagesAnswer:
    if not isinstance(obj, dict) or obj.get("type") != "message":
        raise Unstorable("answer is not a message")
    content = obj.get("content")
    if not isinstance(content, list):
        raise Unstorable("message has no content list")
    stop_reason, stop_sequence = obj.get("stop_reason"), obj.get("stop_sequence")
    return MessagesAnswer(
        id=_str(obj, "id"),
        model=_str(obj, "model"),
        content=tuple(block_from_json(block) for block in content),
        stop_reason=stop_reason if isinstance(stop_reason, str) else "",
        stop_sequence=stop_sequence if isinstance(stop_sequence, str) else None,
    )


def anthropic_usage(usage: TokenUsage, *, output: bool = True) -> dict[str, Any]:
    """Anthropic's usage object: `input_tokens` excludes the cache reads and writes beside it."""
    out: dict[str, Any] = {
        "input_tokens": usage.uncached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": usage.output_tokens if output else 0,
    }
    if usage.cache_write_1h_tokens:
        out["cache_creation"] = {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - usage.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        }
    if usage.reasoning_tokens and output:
        out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return out


def _block_json(block: Block) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    if isinstance(block, ThinkingBlock):
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    if isinstance(block, RedactedThinkingBlock):
        return {"type": "redacted_thinking", "data": block.data}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": json.loads(block.input_json)}


def _message(
    answer: MessagesAnswer, content: list[dict[str, Any]], usage: dict[str, Any], *, final: bool
) -> dict[str, Any]:
    return {
        "id": answer.id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": answer.stop_reason if final else None,
        "stop_sequence": answer.stop_sequence if final else None,
        "usage": usage,
    }


def messages_json(answer: MessagesAnswer, usage: TokenUsage) -> bytes:
    content = [_block_json(block) for block in answer.content]
    return dumps(_message(answer, content, anthropic_usage(usage), final=True)).encode()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {dumps(data)}\n\n".encode()


def _block_events(index: int, block: Block) -> bytes:
    def deltas(kind: str, name: str, texts: Iterable[str]) -> bytes:
        # Spelled out directly: most of a replay is made of these.
        head = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":' + str(index)
        head += ',"delta":{"type":"' + kind + '","' + name + '":'
        return "".join(head + dumps(piece) + "}}\n\n" for piece in texts).encode()

    if isinstance(block, RedactedThinkingBlock):
        start: dict[str, Any] = _block_json(block)  # sent whole, as the API does
        body = b""
    elif isinstance(block, TextBlock):
        start = {"type": "text", "text": ""}
        body = deltas("text_delta", "text", pieces(block.text))
    elif isinstance(block, ThinkingBlock):
        start = {"type": "thinking", "thinking": "", "signature": ""}
        body = deltas("thinking_delta", "thinking", pieces(block.thinking))
        body += deltas("signature_delta", "signature", (block.signature,))  # whole: the SDKs assign it
    else:
        start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        body = deltas("input_json_delta", "partial_json", pieces(block.input_json))
    opened = _event(
        "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
    )
    closed = _event("content_block_stop", {"type": "content_block_stop", "index": index})
    return opened + body + closed


def messages_sse(answer: MessagesAnswer, usage: TokenUsage) -> bytes:
    """The message as Anthropic streams it: `message_start` (input counts), each block's start, deltas
    and stop, `message_delta` (stop reason, cumulative usage), `message_stop`."""
    start = _message(answer, [], anthropic_usage(usage, output=False), final=False)
    out = bytearray(_event("message_start", {"type": "message_start", "message": start}))
    for index, block in enumerate(answer.content):
        out += _block_events(index, block)
    end = {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence}
    out += _event("message_delta", {"type": "message_delta", "delta": end, "usage": anthropic_usage(usage)})
    out += _event("message_stop", {"type": "message_stop"})
    return bytes(out)
