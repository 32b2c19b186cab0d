"""OpenAI chat completions ⇄ Anthropic Messages translation, against payloads written from Anthropic's
public API reference (Messages: create, streaming, tool use, prompt caching, errors)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tollway_sidecar.providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    TranslationError,
    chat_to_messages,
    error_to_openai,
    message_to_chat,
)
from tollway_sidecar.providers.anthropic_stream import ChunkTranslator
from tollway_sidecar.providers.usage import SseParser, parse_json, usage_from_openai

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "The city and state"}},
            "required": ["location"],
        },
    },
}

# --- requests ------------------------------------------------------------------------------------------


def test_system_multi_turn_and_sampling_fields() -> None:
    body = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Hello there."},
            {"role": "assistant", "content": "Hi, I'm Claude. How can I help you?"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Can you explain LLMs"},
                    {"type": "text", "text": " in plain English?"},
                ],
            },
        ],
        "max_tokens": 1024,
        "stop": ["\n\nHuman:", "END"],
        "temperature": 1.7,
        "top_p": 0.9,
        "user": "user-42",
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "seed": 3,
    }
    assert chat_to_messages(body, "claude-sonnet-4-5-20250929") == {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 1024,
        "system": [
            {"type": "text", "text": "You are a terse assistant."},
            {"type": "text", "text": "Answer in French."},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hello there."}]},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "Hi, I'm Claude. How can I help you?"}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Can you explain LLMs"},
                    {"type": "text", "text": " in plain English?"},
                ],
            },
        ],
        "stop_sequences": ["\n\nHuman:", "END"],
        "temperature": 1.0,  # the Messages API's maximum
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }


def test_max_tokens_prefers_max_completion_tokens_and_has_a_default() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert chat_to_messages({"messages": messages}, "m")["max_tokens"] == DEFAULT_MAX_TOKENS
    assert (
        chat_to_messages({"messages": messages, "max_completion_tokens": 5, "max_tokens": 9}, "m")[
            "max_tokens"
        ]
        == 5
    )
    assert chat_to_messages({"messages": messages, "stop": "STOP"}, "m")["stop_sequences"] == ["STOP"]


def test_tools_tool_calls_and_tool_results() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "What's the weather like in San Francisco?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "San Francisco, CA"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    out = chat_to_messages(body, "claude")
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "name": "get_weather",
                    "input": {"location": "San Francisco, CA"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                    "content": "15 degrees",
                }
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL], "tool_choice": choice}
    assert chat_to_messages(body, "m")["tool_choice"] == expected


def test_images_become_image_blocks() -> None:
    parts = [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    out = chat_to_messages({"messages": [{"role": "user", "content": parts}]}, "m")
    assert out["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "system", "content": "only a system prompt"}], "messages"),
        ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "messages[0]"),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{not json"}}],
                }
            ],
            "messages[0]",
        ),
        ([{"role": "tool", "content": "x"}], "messages[0]"),
        ([{"role": "function", "content": "x"}], "messages[0]"),
    ],
)
def test_requests_anthropic_cannot_express_name_the_field(messages: list[Any], param: str) -> None:
    with pytest.raises(TranslationError) as caught:
        chat_to_messages({"messages": messages}, "m")
    assert caught.value.param == param


# --- whole responses -----------------------------------------------------------------------------------

TEXT_MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 21,
        "cache_creation_input_tokens": 188086,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 188086, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 393,
        "service_tier": "standard",
    },
}

TOOL_MESSAGE = {
    "id": "msg_01Aq9w938a90dw8q",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "The user wants the weather...", "signature": "EqQBCgIYAhIM"},
        {"type": "text", "text": "I'll check the weather."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 2095,
        "output_tokens": 503,
        "cache_read_input_tokens": 1800,
        "cache_creation_input_tokens": 0,
    },
}


def test_text_message_with_cache_tokens() -> None:
    chat = message_to_chat(TEXT_MESSAGE, created=1700000000)
    assert chat is not None
    assert chat["object"] == "chat.completion" and chat["model"] == "claude-sonnet-4-5-20250929"
    assert chat["choices"][0]["message"]["content"] == "Hi! My name is Claude."
    assert chat["choices"][0]["finish_reason"] == "stop"
    assert chat["usage"] == {
        "prompt_tokens": 21 + 188086,
        "completion_tokens": 393,
        "total_tokens": 21 + 188086 + 393,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 188086},
    }
    # Read back with our own OpenAI-shape reader, the translated usage is what Anthropic billed.
    assert (
        usage_from_openai(chat["usage"]) == parse_json("anthropic", json.dumps(TEXT_MESSAGE).encode()).usage
    )


def test_tool_use_message() -> None:
    chat = message_to_chat(TOOL_MESSAGE, created=1)
    assert chat is not None
    choice = chat["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the weather."  # thinking is left out
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"San Francisco, CA"}'},
        }
    ]
    assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] == 1800
    assert chat["usage"]["prompt_tokens"] == 2095 + 1800


@pytest.mark.parametrize(
    ("stop", "finish"), [("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter")]
)
def test_stop_reasons(stop: str, finish: str) -> None:
    chat = message_to_chat({**TEXT_MESSAGE, "stop_reason": stop}, created=1)
    assert chat is not None and chat["choices"][0]["finish_reason"] == finish


def test_not_a_message_is_not_translated() -> None:
    assert message_to_chat({"type": "error", "error": {}}, created=1) is None
    assert message_to_chat({"type": "message"}, created=1) is None


def test_errors_become_openai_errors() -> None:
    body = json.dumps(
        {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "Number of request tokens has exceeded your per-minute rate limit",
            },
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
        }
    ).encode()
    assert error_to_openai(429, body) == {
        "error": {
            "message": "Number of request tokens has exceeded your per-minute rate limit",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_error",
        }
    }
    html = error_to_openai(502, b"<html>bad gateway</html>")["error"]
    assert html["message"] == "<html>bad gateway</html>" and html["type"] == "api_error"


# --- streams -------------------------------------------------------------------------------------------


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


TEXT_STREAM = sse(
    [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-4-5-20250929",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 25,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 1024,
                    "output_tokens": 1,
                },
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1024,
                "output_tokens": 15,
            },
        },
        {"type": "message_stop"},
    ]
)

TOOL_STREAM = sse(
    [
        {
            "type": "message_start",
            "message": {
                "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "stop_sequence": None,
                "usage": {"input_tokens": 472, "output_tokens": 2},
                "content": [],
                "stop_reason": None,
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Okay, let's check"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"location":'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ' "San Francisco, CA"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
        {"type": "message_stop"},
    ]
)


def chunks_of(raw: bytes, size: int, include_usage: bool = True) -> list[Any]:
    translator = ChunkTranslator(model="client-model", created=7, include_usage=include_usage)
    out = b"".join(translator.feed(raw[i : i + size]) for i in range(0, len(raw), size)) + translator.flush()
    assert translator.done
    events = [part.removeprefix(b"data: ") for part in out.split(b"\n\n") if part]
    assert events[-1] == b"[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_text_stream_becomes_chunks_wherever_the_bytes_split(size: int) -> None:
    chunks = chunks_of(TEXT_STREAM, size)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["id"] for c in chunks} == {"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello!"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 25 + 1024,
        "completion_tokens": 15,
        "total_tokens": 25 + 1024 + 15,
        "prompt_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 0},
    }
    # The gateway prices the original events; the client's usage chunk says the same.
    parser = SseParser("anthropic")
    parser.feed(TEXT_STREAM)
    assert usage_from_openai(chunks[-1]["usage"]) == parser.finish().usage


def test_usage_chunk_only_when_the_client_asked() -> None:
    assert all(c["choices"] for c in chunks_of(TEXT_STREAM, 50, include_usage=False))


def test_tool_stream_becomes_tool_call_deltas() -> None:
    chunks = chunks_of(TOOL_STREAM, 13)
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"location": "San Francisco, CA"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 89


def test_error_event_is_reported_in_openai_shape() -> None:
    raw = TEXT_STREAM.split(b"event: content_block_stop")[0] + sse(
        [{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}]
    )
    translator = ChunkTranslator(model="m", created=1, include_usage=False)
    out = translator.feed(raw)
    last = json.loads(out.strip().split(b"\n\n")[-1].removeprefix(b"data: "))
    assert last == {
        "error": {
            "message": "Overloaded",
            "type": "overloaded_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    assert not translator.done and translator.error == "provider error: overloaded_error"
