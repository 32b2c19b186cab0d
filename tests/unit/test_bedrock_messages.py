"""The Anthropic Messages → Bedrock Converse adapter: requests, answers and streams in Anthropic's shapes."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic.types
import pytest
from pydantic import TypeAdapter
from tests.unit.test_bedrock import BACKEND, CONVERSE_ANSWER, CREDENTIAL, USAGE, stream_frames

from tollway_sidecar.providers.adapters.base import AttemptRequest, Refused
from tollway_sidecar.providers.adapters.messages_bedrock import MessagesBedrock, messages_to_converse

ADAPTER = MessagesBedrock()
EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)
BODY: dict[str, Any] = {
    "model": "fast",
    "max_tokens": 64,
    "system": "Be terse.",
    "messages": [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {"q": "x"}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "found", "is_error": True},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
            ],
        },
    ],
    "stop_sequences": ["END"],
    "temperature": 0.2,
    "tools": [{"name": "look", "description": "d", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "any"},
    "metadata": {"user_id": "u"},
}


def test_messages_request_becomes_converse() -> None:
    assert messages_to_converse(BODY) == {
        "messages": [
            {"role": "user", "content": [{"text": "Hi"}]},
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t1", "name": "look", "input": {"q": "x"}}}],
            },
            {
                "role": "user",
                "content": [
                    {"toolResult": {"toolUseId": "t1", "content": [{"text": "found"}], "status": "error"}},
                    {"image": {"format": "jpeg", "source": {"bytes": "AAAA"}}},
                ],
            },
        ],
        "system": [{"text": "Be terse."}],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.2, "stopSequences": ["END"]},
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "look",
                        "inputSchema": {"json": {"type": "object"}},
                        "description": "d",
                    }
                }
            ],
            "toolChoice": {"any": {}},
        },
    }


def test_request_is_signed() -> None:
    attempt = AttemptRequest(BACKEND, "/v1/messages", {}, BODY, None, CREDENTIAL, time.time(), True)
    request = ADAPTER.request(attempt)
    assert request.path.endswith("%3A0/converse-stream")
    assert request.set_headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_k": 5}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"tool_choice": {"type": "none"}}, "tool_choice"),
        ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}, "tool_choice"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_unfaithful_fields_are_refused(extra: dict[str, Any], param: str) -> None:
    refused = ADAPTER.check({**BODY, **extra})
    assert isinstance(refused, Refused) and refused.param == param


def test_json_answer_is_an_anthropic_message() -> None:
    answer = ADAPTER.answer(200, "application/json", json.dumps(CONVERSE_ANSWER).encode())
    assert answer.usage == USAGE and answer.body is not None
    message = anthropic.types.Message.model_validate_json(answer.body)
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 100
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (1000, 30)
    assert [block.type for block in message.content] == ["text", "tool_use"]


def test_errors_take_anthropics_shape() -> None:
    answer = ADAPTER.answer(429, "application/json", b'{"message":"Too many requests"}')
    assert answer.body is not None
    assert json.loads(answer.body) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Too many requests"},
    }


def events(data: bytes) -> list[Any]:
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            name, payload = block.split("\n", 1)
            obj = json.loads(payload.removeprefix("data: "))
            assert name == "event: " + obj["type"]
            out.append(obj)
    return out


def test_stream_is_anthropics_event_sequence() -> None:
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    data = b"".join(stream_frames())
    out = b"".join(reader.feed(data[i : i + 5]) for i in range(0, len(data), 5))
    objs = events(out)
    for obj in objs:
        EVENT.validate_python(obj)  # every event is one the anthropic SDK knows
    assert [o["type"] for o in objs] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert objs[-2]["delta"]["stop_reason"] == "tool_use"
    assert objs[-2]["usage"]["input_tokens"] == 100 and objs[-2]["usage"]["output_tokens"] == 20
    parsed = reader.finish()
    assert parsed.usage == USAGE and parsed.complete and parsed.error is None


def test_malformed_frame_is_an_error_event() -> None:
    frames = stream_frames()
    bad = frames[1][:-1] + bytes([frames[1][-1] ^ 1])
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    objs = events(reader.feed(frames[0] + bad + b"".join(frames[2:])))
    assert objs[-1]["type"] == "error" and "malformed" in objs[-1]["error"]["message"]
    assert reader.finish().error is not None and reader.finish().usage is None
