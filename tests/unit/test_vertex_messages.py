"""Anthropic Messages clients → Gemini on Vertex: the request, the answer and the SSE stream translated."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.adapters.base import AttemptRequest
from tollway_sidecar.providers.adapters.registry import adapter_for
from tollway_sidecar.providers.usage import TokenUsage

GEMINI = Backend(
    name="vx",
    provider="vertex",
    model="gemini-2.5-flash",
    base_url="http://mock",
    project="my-proj",
    region="us-central1",
)
ADAPTER = adapter_for("messages", "vertex", GEMINI.model)
assert ADAPTER is not None
MESSAGES: dict[str, Any] = {
    "model": "fast",
    "system": [{"type": "text", "text": "Be terse."}],
    "max_tokens": 100,
    "top_k": 20,
    "stop_sequences": ["END"],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": 1}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a toll"}]},
    ],
    "tools": [{"name": "look", "description": "Look", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "tool", "name": "look"},
}


def test_request_translates_to_generate_content() -> None:
    assert ADAPTER is not None
    upstream = ADAPTER.request(
        AttemptRequest(GEMINI, "/v1/messages", {}, MESSAGES, None, "ya29.t", 0.0, True)
    )
    assert upstream.path.endswith("/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert upstream.set_headers["authorization"] == "Bearer ya29.t"
    assert json.loads(upstream.body or b"") == {
        "contents": [
            {
                "role": "user",
                "parts": [{"text": "What is it?"}, {"inlineData": {"mimeType": "image/png", "data": "iVBO"}}],
            },
            {"role": "model", "parts": [{"functionCall": {"name": "look", "args": {"q": 1}}}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "look", "response": {"content": "a toll"}}}],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be terse."}]},
        "generationConfig": {"maxOutputTokens": 100, "topK": 20, "stopSequences": ["END"]},
        "tools": [
            {
                "functionDeclarations": [
                    {"name": "look", "description": "Look", "parametersJsonSchema": {"type": "object"}}
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["look"]}},
    }


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}, "tool_choice"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x"}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_refusals_name_the_field(change: dict[str, Any], param: str) -> None:
    assert ADAPTER is not None
    refused = ADAPTER.check({**MESSAGES, **change})
    assert refused is not None and refused.param == param and refused.status == 400


def test_answer_becomes_an_anthropic_message() -> None:
    assert ADAPTER is not None
    answer = {
        "candidates": [
            {
                "content": {
                    "parts": [{"text": "Looking."}, {"functionCall": {"name": "look", "args": {"q": 2}}}]
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 9, "cachedContentTokenCount": 20},
        "modelVersion": "gemini-2.5-flash",
    }
    read = ADAPTER.answer(200, "application/json", json.dumps(answer).encode())
    message = json.loads(read.body or b"")
    assert message["type"] == "message" and message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "toolu_0", "name": "look", "input": {"q": 2}},
    ]
    assert message["usage"] == {
        "input_tokens": 30,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 20,
        "output_tokens": 9,
    }
    assert read.usage == TokenUsage(input_tokens=50, output_tokens=9, cache_read_tokens=20)
    error = {"error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED"}}
    failed = ADAPTER.answer(429, "application/json", json.dumps(error).encode())
    assert json.loads(failed.body or b"") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Quota"},
    }


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"


STREAM = (
    _sse({"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]})
    + _sse({"candidates": [{"content": {"parts": [{"text": "lo"}]}}]})
    + _sse({"candidates": [{"content": {"parts": [{"functionCall": {"name": "look", "args": {"q": 3}}}]}}]})
    + _sse(
        {
            "candidates": [{"content": {"parts": []}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 4},
        }
    )
)


def _read(pieces: list[bytes]) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    assert ADAPTER is not None
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    out = b"".join(reader.feed(p) or b"" for p in pieces) + reader.flush()
    events = []
    for block in out.decode().split("\n\n"):
        if block:
            name, data = block.split("\n", 1)
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events, reader.finish()


def test_stream_becomes_anthropic_events() -> None:
    events, parsed = _read([STREAM])
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[5][1]["content_block"] == {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}
    assert events[6][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"q":3}'}
    assert events[8][1]["delta"]["stop_reason"] == "tool_use" and events[8][1]["usage"]["output_tokens"] == 4
    assert (
        parsed.complete
        and parsed.error is None
        and parsed.usage == TokenUsage(input_tokens=8, output_tokens=4)
    )


def test_stream_reads_the_same_across_random_splits() -> None:
    whole, parsed_whole = _read([STREAM])
    rng = random.Random(99)
    for _ in range(100):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 10)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        events, parsed = _read(pieces)
        assert [(n, {k: v for k, v in e.items() if k != "message"}) for n, e in events] == [
            (n, {k: v for k, v in e.items() if k != "message"}) for n, e in whole
        ]
        assert parsed == parsed_whole


def test_stream_error_event_ends_in_an_anthropic_error() -> None:
    events, parsed = _read(
        [
            _sse({"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]})
            + _sse({"error": {"code": 503, "message": "Busy", "status": "UNAVAILABLE"}})
        ]
    )
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "Busy"}})
    assert not parsed.complete and parsed.error == "provider error: UNAVAILABLE"
