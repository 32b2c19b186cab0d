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


SUMMARY = "**Checking the weather** I will call the weather tool for Paris. " * 2
REFUSAL = "I can't share the forecast for restricted areas."


def responses_json(*, status: str = "completed") -> dict[str, Any]:
    """An OpenAI Responses API answer with `store: false`: a reasoning item (summary, encrypted
    content), a message (text and a refusal part) and two function calls."""
    items: list[dict[str, Any]] = [
        {
            "id": "rs_68af0001",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": SUMMARY}],
            "encrypted_content": "gAAAAABo-encrypted-reasoning==",
        },
        {
            "id": "msg_68af0002",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": TEXT, "annotations": [], "logprobs": []},
                {"type": "refusal", "refusal": REFUSAL},
            ],
        },
        {
            "id": "fc_68af0003",
            "type": "function_call",
            "status": "completed",
            "arguments": ARGUMENTS,
            "call_id": "call_abc",
            "name": "get_weather",
        },
        {
            "id": "fc_68af0004",
            "type": "function_call",
            "status": "completed",
            "arguments": "{}",
            "call_id": "call_def",
            "name": "get_time",
        },
    ]
    return {
        "id": "resp_68af0000",
        "object": "response",
        "created_at": 1_760_000_000,
        "status": status,
        "background": False,
        "completed_at": 1_760_000_003 if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": "Be brief.",
        "max_output_tokens": None,
        "model": "gpt-5-mini-2025-08-07",
        "output": items,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "low", "summary": "auto"},
        "service_tier": "default",
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 120,
            "input_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 0},
            "output_tokens": 80,
            "output_tokens_details": {"reasoning_tokens": 30},
            "total_tokens": 200,
        },
        "user": None,
        "metadata": {},
    }


def responses_stream(*, end: str = "response.completed", cut: bool = False) -> bytes:
    """The same answer as `responses_json()`, as OpenAI streams it (typed events, small deltas)."""
    whole = responses_json(status="completed" if end == "response.completed" else "incomplete")
    shell = {**whole, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
    sequence = iter(range(1 << 20))

    def event(kind: str, **fields: Any) -> bytes:
        return _event(kind, {"type": kind, "sequence_number": next(sequence), **fields})

    out = event("response.created", response=shell) + event("response.in_progress", response=shell)
    reasoning, message, *calls = whole["output"]
    where = {"item_id": reasoning["id"], "output_index": 0}
    out += event("response.output_item.added", output_index=0, item={**reasoning, "summary": []})
    empty = {"type": "summary_text", "text": ""}
    out += event("response.reasoning_summary_part.added", **where, summary_index=0, part=empty)
    for i in range(0, len(SUMMARY), 10):
        out += event(
            "response.reasoning_summary_text.delta", **where, summary_index=0, delta=SUMMARY[i : i + 10]
        )
    out += event("response.reasoning_summary_text.done", **where, summary_index=0, text=SUMMARY)
    out += event(
        "response.reasoning_summary_part.done", **where, summary_index=0, part=reasoning["summary"][0]
    )
    out += event("response.output_item.done", output_index=0, item=reasoning)

    where = {"item_id": message["id"], "output_index": 1}
    added = {**message, "status": "in_progress", "content": []}
    out += event("response.output_item.added", output_index=1, item=added)
    text_part, refusal_part = message["content"]
    out += event("response.content_part.added", **where, content_index=0, part={**text_part, "text": ""})
    for i in range(0, len(TEXT), 5):
        out += event(
            "response.output_text.delta", **where, content_index=0, delta=TEXT[i : i + 5], logprobs=[]
        )
    out += event("response.output_text.done", **where, content_index=0, text=TEXT, logprobs=[])
    out += event("response.content_part.done", **where, content_index=0, part=text_part)
    out += event(
        "response.content_part.added", **where, content_index=1, part={**refusal_part, "refusal": ""}
    )
    out += event("response.refusal.delta", **where, content_index=1, delta=REFUSAL)
    out += event("response.refusal.done", **where, content_index=1, refusal=REFUSAL)
    out += event("response.content_part.done", **where, content_index=1, part=refusal_part)
    out += event("response.output_item.done", output_index=1, item=message)

    for index, call in enumerate(calls, start=2):
        where = {"item_id": call["id"], "output_index": index}
        added = {**call, "status": "in_progress", "arguments": ""}
        out += event("response.output_item.added", output_index=index, item=added)
        for i in range(0, len(call["arguments"]), 9):
            out += event(
                "response.function_call_arguments.delta", **where, delta=call["arguments"][i : i + 9]
            )
        out += event("response.function_call_arguments.done", **where, arguments=call["arguments"])
        out += event("response.output_item.done", output_index=index, item=call)
    if cut:
        return out
    return out + event(end, response=whole)
