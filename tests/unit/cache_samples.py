"""Answers as providers send them, for the response cache's tests: OpenAI chat and Anthropic messages,
each as one JSON body and as the SSE stream of the same answer (reasoning and tool calls included)."""

from __future__ import annotations

import json
from typing import Any

REASONING = "The user wants Paris weather. I should call the tool, then answer briefly. " * 3
TEXT = "Let me check the weather in Paris for you — un instant ☀️. " * 4
ARGUMENTS = '{"city":"Paris","unit":"celsius","days":[1,2,3]}'


def chat_json(*, finish: str = "tool_calls", extra_message: dict[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": TEXT,
        "reasoning_content": REASONING,
        "refusal": None,
        "annotations": [],
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ARGUMENTS},
            },
            {"id": "call_def", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
        **(extra_message or {}),
    }
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 80,
            "total_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 30},
        },
    }


def _data(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chat_stream(*, usage: bool = True, finish: str = "tool_calls", cut: bool = False) -> bytes:
    """The same answer as `chat_json()`, streamed the way OpenAI does (small deltas, usage last)."""
    head = {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1_760_000_000}
    head |= {"model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_44709d6fcb"}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _data({**head, "choices": [choice], **({"usage": None} if usage else {})})

    out = chunk({"role": "assistant", "content": "", "refusal": None})
    out += b"".join(chunk({"reasoning_content": REASONING[i : i + 7]}) for i in range(0, len(REASONING), 7))
    out += b"".join(chunk({"content": TEXT[i : i + 5]}) for i in range(0, len(TEXT), 5))
    first = {
        "index": 0,
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    out += chunk({"tool_calls": [first]})
    for i in range(0, len(ARGUMENTS), 9):
        out += chunk({"tool_calls": [{"index": 0, "function": {"arguments": ARGUMENTS[i : i + 9]}}]})
    second = {
        "index": 1,
        "id": "call_def",
        "type": "function",
        "function": {"name": "get_time", "arguments": "{}"},
    }
    out += chunk({"tool_calls": [second]})
    if cut:
        return out
    out += chunk({}, finish)
    if usage:
        out += _data({**head, "choices": [], "usage": chat_json()["usage"]})
    return out + b"data: [DONE]\n\n"


SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"


def messages_json(*, stop: str = "tool_use") -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "thinking", "thinking": REASONING, "signature": SIGNATURE},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"},
            {"type": "text", "text": TEXT},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": json.loads(ARGUMENTS)},
        ],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 50,
            "cache_creation_input_tokens": 20,
            "cache_read_input_tokens": 100,
            "output_tokens": 80,
        },
    }


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode()


def messages_stream(*, stop: str = "tool_use", cut: bool = False) -> bytes:
    """The same answer as `messages_json()`, as Anthropic streams it."""
    whole = messages_json()
    start = {**whole, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**whole["usage"], "output_tokens": 1}
    out = _event("message_start", {"type": "message_start", "message": start})
    out += _event("ping", {"type": "ping"})

    def block(index: int, begin: dict[str, Any], deltas: list[dict[str, Any]]) -> bytes:
        data = _event(
            "content_block_start", {"type": "content_block_start", "index": index, "content_block": begin}
        )
        for delta in deltas:
            data += _event(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            )
        return data + _event("content_block_stop", {"type": "content_block_stop", "index": index})

    thinking = [
        {"type": "thinking_delta", "thinking": REASONING[i : i + 11]} for i in range(0, len(REASONING), 11)
    ]
    out += block(
        0,
        {"type": "thinking", "thinking": ""},
        [*thinking, {"type": "signature_delta", "signature": SIGNATURE}],
    )
    out += block(1, whole["content"][1], [])
    out += block(
        2,
        {"type": "text", "text": ""},
        [{"type": "text_delta", "text": TEXT[i : i + 6]} for i in range(0, len(TEXT), 6)],
    )
    partial = [
        {"type": "input_json_delta", "partial_json": ARGUMENTS[i : i + 8]}
        for i in range(0, len(ARGUMENTS), 8)
    ]
    out += block(3, {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}, partial)
    if cut:
        return out
    out += _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 80},
        },
    )
    return out + _event("message_stop", {"type": "message_stop"})


def chunked(data: bytes, size: int) -> list[bytes]:
    """`data` cut every `size` bytes: boundaries fall anywhere, even inside a UTF-8 sequence."""
    return [data[i : i + size] for i in range(0, len(data), size)]
