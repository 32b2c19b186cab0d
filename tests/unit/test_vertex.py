"""Vertex AI adapters: chat ⇄ Gemini translation, Gemini SSE streams, Claude on Vertex, prices, refusals."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest

from tollway_sidecar.config.models import Backend
from tollway_sidecar.pricing import resolve_price
from tollway_sidecar.providers import vertex
from tollway_sidecar.providers.adapters.base import AttemptRequest
from tollway_sidecar.providers.adapters.chat_vertex import ChatVertex
from tollway_sidecar.providers.adapters.registry import adapter_for
from tollway_sidecar.providers.usage import TokenUsage

ADAPTER = ChatVertex()
GEMINI = Backend(
    name="vx",
    provider="vertex",
    model="gemini-2.5-flash",
    base_url="https://us-central1-aiplatform.googleapis.com",
    project="my-proj",
    region="us-central1",
    credential='{"type": "service_account"}',
    credential_source="google-service-account",
)
CLAUDE = GEMINI.model_copy(update={"model": "claude-sonnet-4-5@20250929", "region": "us-east5"})
PNG = "data:image/png;base64,iVBORw0KGgo="
CHAT: dict[str, Any] = {
    "model": "fast",
    "messages": [
        {"role": "system", "content": "Be terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": PNG}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "toll"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a toll booth"},
    ],
    "max_completion_tokens": 64,
    "temperature": 0.2,
    "top_p": 0.9,
    "stop": "END",
    "seed": 7,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a thing up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": "required",
    "stream_options": {"include_usage": True},
    "user": "u-1",
}


def attempt(backend: Backend, body: dict[str, Any], *, stream: bool = False) -> AttemptRequest:
    return AttemptRequest(backend, "/v1/chat/completions", {}, body, None, "ya29.token", 0.0, stream)


def test_chat_translates_to_generate_content() -> None:
    out = vertex.chat_to_gemini(CHAT)
    assert out == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is this?"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                ],
            },
            {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "toll"}}}]},
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "lookup", "response": {"content": "a toll booth"}}}],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be terse."}]},
        "generationConfig": {
            "maxOutputTokens": 64,
            "temperature": 0.2,
            "topP": 0.9,
            "seed": 7,
            "stopSequences": ["END"],
        },
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "lookup",
                        "description": "Look a thing up",
                        "parametersJsonSchema": {"type": "object", "properties": {"q": {"type": "string"}}},
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }


def test_request_path_headers_and_json_mode() -> None:
    body = {
        **CHAT,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
    }
    upstream = ADAPTER.request(attempt(GEMINI, body))
    prefix = "/v1/projects/my-proj/locations/us-central1/publishers/google/models/"
    assert upstream.path == prefix + "gemini-2.5-flash:generateContent"
    assert upstream.set_headers["authorization"] == "Bearer ya29.token"
    sent = json.loads(upstream.body or b"")
    assert sent["generationConfig"]["responseMimeType"] == "application/json"
    assert sent["generationConfig"]["responseJsonSchema"] == {"type": "object"}
    streamed = ADAPTER.request(attempt(GEMINI, CHAT, stream=True))
    assert streamed.path.endswith(":streamGenerateContent?alt=sse")
    no_token = ADAPTER.request(
        AttemptRequest(GEMINI, "/v1/chat/completions", {}, CHAT, None, None, 0.0, False)
    )
    assert "authorization" not in no_token.set_headers


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"n": 2}, "n"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "messages[0]"),
        ({"messages": []}, "messages"),
    ],
)
def test_what_gemini_cannot_express_is_refused_naming_the_field(change: dict[str, Any], param: str) -> None:
    refused = ADAPTER.check({**CHAT, **change})
    assert refused is not None and refused.status == 400
    assert refused.param == param and f"'{param.split('.')[0]}" in refused.message


def test_answer_with_function_calls_cache_and_thoughts() -> None:
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "thinking...", "thought": True},
                        {"text": "Let me look."},
                        {"functionCall": {"name": "lookup", "args": {"q": "toll"}}},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 100,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 30,
            "cachedContentTokenCount": 40,
            "totalTokenCount": 150,
        },
        "modelVersion": "gemini-2.5-flash",
    }
    read = ADAPTER.answer(200, "application/json", json.dumps(answer).encode())
    assert read.usage == TokenUsage(
        input_tokens=100, output_tokens=50, cache_read_tokens=40, reasoning_tokens=30
    )
    chat = json.loads(read.body or b"")
    message = chat["choices"][0]["message"]
    assert message["content"] == "Let me look."
    assert message["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"toll"}'}}
    ]
    assert chat["choices"][0]["finish_reason"] == "tool_calls" and read.finish_reasons == ("tool_calls",)
    assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] == 40
    assert chat["usage"]["completion_tokens_details"]["reasoning_tokens"] == 30


@pytest.mark.parametrize(
    ("reason", "mapped"), [("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("OTHER", "stop")]
)
def test_finish_reasons(reason: str, mapped: str) -> None:
    assert vertex.finish_reason(reason) == mapped


def test_errors_and_bad_answers() -> None:
    google = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
    read = ADAPTER.answer(429, "application/json", json.dumps(google).encode())
    assert json.loads(read.body or b"") == {
        "error": {
            "message": "Quota exceeded",
            "type": "rate_limit_error",
            "param": None,
            "code": "RESOURCE_EXHAUSTED",
        }
    }
    assert ADAPTER.answer(200, "application/json", b'{"foo": 1}').bad_gateway is not None
    assert ADAPTER.answer(200, "text/html", b"<html>").bad_gateway is not None


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"


def _event(
    text: str | None = None,
    *,
    call: dict[str, Any] | None = None,
    finish: str | None = None,
    usage: bool = False,
) -> bytes:
    parts: list[dict[str, Any]] = []
    if text is not None:
        parts.append({"text": text})
    if call is not None:
        parts.append({"functionCall": call})
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
    if finish:
        candidate["finishReason"] = finish
    event: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}
    if usage:
        event["usageMetadata"] = {"promptTokenCount": 12, "candidatesTokenCount": 5, "thoughtsTokenCount": 2}
    return _sse(event)


STREAM = (
    _event("Héllo")
    + _event(" wörld")
    + _event(call={"name": "lookup", "args": {"q": "toll"}})
    + _event("", finish="STOP", usage=True)
)


def _read(chunks: list[bytes], *, strip: bool = False) -> tuple[list[Any], Any]:
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=strip)
    out = b"".join(reader.feed(c) or b"" for c in chunks) + reader.flush()
    events = [block.removeprefix(b"data: ") for block in out.split(b"\n\n") if block]
    return [e if e == b"[DONE]" else json.loads(e) for e in events], reader.finish()


def test_stream_translates_to_chunks_with_usage_and_done() -> None:
    events, parsed = _read([STREAM])
    assert events[-1] == b"[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Héllo wörld"
    calls = [
        c["choices"][0]["delta"]["tool_calls"]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls == [
        [
            {
                "index": 0,
                "id": "call_0",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"q":"toll"}'},
            }
        ]
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7
    assert all(c["model"] == "fast" for c in chunks)
    assert parsed.complete and parsed.error is None and parsed.finish_reasons == ("tool_calls",)
    assert parsed.usage == TokenUsage(input_tokens=12, output_tokens=7, reasoning_tokens=2)


def test_stream_reads_the_same_across_random_chunk_splits() -> None:
    whole, whole_parsed = _read([STREAM])
    rng = random.Random(1234)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        events, parsed = _read(pieces)
        strip_ids = [e if e == b"[DONE]" else {**e, "id": "", "created": 0} for e in events]
        assert strip_ids == [e if e == b"[DONE]" else {**e, "id": "", "created": 0} for e in whole]
        assert parsed == whole_parsed


def test_stream_usage_chunk_is_left_out_when_the_gateway_asked_for_it() -> None:
    events, parsed = _read([STREAM], strip=True)
    assert all(e == b"[DONE]" or e["choices"] for e in events)
    assert parsed.usage is not None  # still read for pricing


def test_stream_cut_before_finish_is_incomplete() -> None:
    events, parsed = _read([_event("Hello")])
    assert b"[DONE]" not in events
    assert not parsed.complete and parsed.error == "stream ended before Gemini's finishReason"


def test_stream_error_event_is_sent_in_openai_shape() -> None:
    error = {"error": {"code": 503, "message": "Overloaded", "status": "UNAVAILABLE"}}
    events, parsed = _read([_event("Hi") + _sse(error)])
    assert events[-1] == {
        "error": {"message": "Overloaded", "type": "api_error", "param": None, "code": "UNAVAILABLE"}
    }
    assert parsed.error == "provider error: UNAVAILABLE"


def test_claude_on_vertex_reuses_the_anthropic_translation() -> None:
    chat = adapter_for("chat", "vertex", CLAUDE.model)
    assert chat is not None and chat is not ADAPTER
    upstream = chat.request(
        attempt(
            CLAUDE,
            {"model": "fast", "messages": [{"role": "user", "content": "Hi"}], "stream": True},
            stream=True,
        )
    )
    assert upstream.path == (
        "/v1/projects/my-proj/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
    )
    body = json.loads(upstream.body or b"")
    assert body == {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": body["max_tokens"],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "stream": True,
    }
    assert upstream.set_headers["authorization"] == "Bearer ya29.token"
    messages = adapter_for("messages", "vertex", CLAUDE.model)
    assert messages is not None
    native = messages.request(
        attempt(CLAUDE, {"model": "fast", "max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]})
    )
    assert native.path.endswith(":rawPredict")
    assert json.loads(native.body or b"") == {
        "max_tokens": 9,
        "messages": [{"role": "user", "content": "Hi"}],
        "anthropic_version": "vertex-2023-10-16",
    }


def test_global_region_and_default_base_url() -> None:
    assert vertex.default_base_url("global") == "https://aiplatform.googleapis.com"
    assert vertex.default_base_url("europe-west4") == "https://europe-west4-aiplatform.googleapis.com"
    assert (
        vertex.publisher("claude-opus-4-5") == "anthropic"
        and vertex.publisher("gemini-2.0-flash") == "google"
    )


def test_vertex_models_are_priced_from_the_catalogue() -> None:
    gemini = resolve_price(GEMINI)
    assert gemini is not None and gemini.source == "catalog"
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert gemini.cost(usage) == Decimal("0.3") + Decimal("2.5")
    claude = resolve_price(CLAUDE)
    # Sonnet 4.5 is tiered (a prompt over 200k tokens costs more): stay under the tier.
    assert claude is not None
    assert claude.cost(TokenUsage(input_tokens=100_000, output_tokens=10_000)) == Decimal("0.3") + Decimal(
        "0.15"
    )


def test_vertex_errors_reach_messages_clients_in_anthropic_shape() -> None:
    messages = adapter_for("messages", "vertex", CLAUDE.model)
    assert messages is not None
    google = {
        "error": {"code": 401, "message": "Request had invalid authentication", "status": "UNAUTHENTICATED"}
    }
    body, content_type = messages.error_body(401, json.dumps(google).encode())
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Request had invalid authentication"},
    }
    assert content_type == "application/json"
    read = messages.answer(401, "application/json", json.dumps(google).encode())
    assert read.body == body and read.usage is None
    claude = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    assert messages.error_body(529, claude) == (claude, "")
    assert messages.answer(529, "application/json", claude).body is None  # passed on as it came


def test_stream_usage_after_the_finish_event_and_a_finish_without_usage() -> None:
    late = (
        _event("Hi")
        + _event("", finish="STOP")
        + _sse({"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1}})
    )
    events, parsed = _read([late])
    assert events[-1] == b"[DONE]" and events[-2]["usage"]["prompt_tokens"] == 3
    assert parsed.complete and parsed.usage == TokenUsage(input_tokens=3, output_tokens=1)
    events, parsed = _read([_event("Hi") + _event("", finish="MAX_TOKENS")])
    assert events[-1] == b"[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert parsed.complete and parsed.usage is None and parsed.error == "the stream carried no usageMetadata"
