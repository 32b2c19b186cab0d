"""The chat → Bedrock Converse adapter: translation, SigV4, JSON and event-stream answers, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from botocore.credentials import Credentials

from tollway.mockprovider.bedrock_api import encode_frame, event_frame
from tollway_sidecar.config.models import Backend
from tollway_sidecar.pricing import resolve_price
from tollway_sidecar.providers import bedrock
from tollway_sidecar.providers.adapters.base import AttemptRequest, Refused
from tollway_sidecar.providers.adapters.chat_bedrock import ChatBedrock
from tollway_sidecar.providers.eventstream import FrameReader
from tollway_sidecar.providers.usage import TokenUsage

ADAPTER = ChatBedrock()
MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"
CREDENTIAL = json.dumps({"access_key_id": "AKIDTEST", "secret_access_key": "s3cr3t"})
BACKEND = Backend(
    name="br",
    provider="bedrock",
    model=MODEL,
    base_url="https://bedrock-runtime.eu-west-1.amazonaws.com",
    region="eu-west-1",
    credential=CREDENTIAL,
)
CHAT: dict[str, Any] = {
    "model": "fast",
    "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "look", "arguments": '{"q":"x"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "found"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
    ],
    "max_tokens": 50,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": "END",
    "tools": [
        {
            "type": "function",
            "function": {"name": "look", "description": "d", "parameters": {"type": "object"}},
        }
    ],
    "tool_choice": "required",
    "stream_options": {"include_usage": True},
}


def attempt(
    body: dict[str, Any], *, stream: bool = False, credential: str | None = CREDENTIAL
) -> AttemptRequest:
    return AttemptRequest(
        backend=BACKEND.model_copy(update={"credential": credential}),
        client_path="/v1/chat/completions",
        client_headers={},
        body=body,
        raw=json.dumps(body).encode(),
        credential=credential,
        now=datetime(2026, 12, 2, 20, 0, tzinfo=UTC).timestamp(),
        stream=stream,
    )


# --- SigV4 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "signature"),
    [
        # AWS's Signature Version 4 test suite: get-vanilla and post-vanilla.
        ("GET", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("POST", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ],
)
def test_sign_matches_the_aws_test_suite(method: str, signature: str) -> None:
    headers = bedrock.sign(
        credentials=Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region="us-east-1",
        method=method,
        url="https://example.amazonaws.com/",
        host="example.amazonaws.com",
        headers={},
        body=b"",
        now=datetime(2015, 8, 30, 12, 36, tzinfo=UTC).timestamp(),
        service="service",
    )
    assert headers["x-amz-date"] == "20150830T123600Z"
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={signature}"
    )


def test_request_is_signed_over_the_bytes_sent() -> None:
    request = ADAPTER.request(attempt(CHAT))
    assert request.path == "/model/global.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
    assert request.body is not None
    auth = request.set_headers["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/20261202/eu-west-1/bedrock/aws4_request, ")
    assert "SignedHeaders=content-type;host;x-amz-date," in auth
    assert request.set_headers["x-amz-date"] == "20261202T200000Z"
    assert request.remove == ("x-amz-security-token",)
    # Another body, or another time, is another signature: the body's hash is signed.
    other = ADAPTER.request(attempt({**CHAT, "max_tokens": 51}))
    assert other.set_headers["authorization"] != auth
    stream = ADAPTER.request(attempt(CHAT, stream=True))
    assert stream.path.endswith("/converse-stream")


def test_session_token_is_sent_and_signed() -> None:
    credential = json.dumps({"access_key_id": "A", "secret_access_key": "B", "session_token": "TOKEN"})
    request = ADAPTER.request(attempt(CHAT, credential=credential))
    assert request.set_headers["x-amz-security-token"] == "TOKEN"
    assert "x-amz-security-token" in request.set_headers["authorization"]
    assert request.remove == ()


def test_no_credential_sends_no_signature() -> None:
    request = ADAPTER.request(attempt(CHAT, credential=None))
    assert "authorization" not in request.set_headers
    assert set(request.remove) == set(bedrock.SIGNED_HEADERS)


# --- request translation ------------------------------------------------------------------------


def test_chat_request_becomes_converse() -> None:
    assert bedrock.chat_to_converse(CHAT) == {
        "system": [{"text": "Be terse."}],
        "messages": [
            {"role": "user", "content": [{"text": "Hi"}]},
            {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t1", "name": "look", "input": {"q": "x"}}}],
            },
            {
                "role": "user",
                "content": [
                    {"toolResult": {"toolUseId": "t1", "content": [{"text": "found"}]}},
                    {"text": "and this?"},
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                ],
            },
        ],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]},
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


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"seed": 1}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tool_choice": "none"}, "tool_choice"),
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
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0]"),
    ],
)
def test_unfaithful_fields_are_refused_by_name(extra: dict[str, Any], param: str) -> None:
    refused = ADAPTER.check({**CHAT, **extra})
    assert isinstance(refused, Refused)
    assert (refused.param, refused.status) == (param, 400)
    with pytest.raises(Refused):
        ADAPTER.request(attempt({**CHAT, **extra}))


def test_a_plain_request_passes_check() -> None:
    assert ADAPTER.check({"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "u"}) is None


# --- JSON answers -------------------------------------------------------------------------------

CONVERSE_ANSWER = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {"text": "Hello"},
                {"toolUse": {"toolUseId": "t2", "name": "look", "input": {"q": "y"}}},
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": {
        "inputTokens": 100,
        "outputTokens": 20,
        "totalTokens": 1150,
        "cacheReadInputTokens": 1000,
        "cacheWriteInputTokens": 30,
    },
    "metrics": {"latencyMs": 5},
}
USAGE = TokenUsage(input_tokens=1130, output_tokens=20, cache_read_tokens=1000, cache_write_tokens=30)


def test_json_answer_becomes_a_chat_completion_with_usage() -> None:
    answer = ADAPTER.answer(200, "application/json", json.dumps(CONVERSE_ANSWER).encode())
    assert answer.usage == USAGE
    assert answer.finish_reasons == ("tool_calls",)
    assert answer.text == "Hello"
    assert answer.body is not None
    chat = json.loads(answer.body)
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["tool_calls"] == [
        {"id": "t2", "type": "function", "function": {"name": "look", "arguments": '{"q":"y"}'}}
    ]
    assert chat["usage"] == {
        "prompt_tokens": 1130,
        "completion_tokens": 20,
        "total_tokens": 1150,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 30},
    }


def test_one_hour_cache_writes_are_read() -> None:
    usage = {
        "inputTokens": 1,
        "outputTokens": 2,
        "cacheWriteInputTokens": 40,
        "cacheDetails": [{"ttl": "1h", "inputTokens": 30}, {"ttl": "5m", "inputTokens": 10}],
    }
    assert bedrock.usage_from_bedrock(usage) == TokenUsage(
        input_tokens=41, output_tokens=2, cache_write_tokens=40, cache_write_1h_tokens=30
    )


def test_cost_is_exact_against_genai_prices() -> None:
    price = resolve_price(BACKEND)
    assert price is not None and price.source == "catalog"
    # genai-prices' global Claude Haiku 4.5 on Bedrock: $1 input, $0.10 cache read, $1.25 cache
    # write, $5 output per million tokens.
    expected = (Decimal(100) * 1 + Decimal(1000) * Decimal("0.1") + 30 * Decimal("1.25") + 20 * 5) / 1_000_000
    assert price.cost(USAGE) == expected


@pytest.mark.parametrize("body", [b"not json", b'{"output": 1}', b"[]", b""])
def test_a_2xx_that_is_not_converse_is_a_bad_gateway(body: bytes) -> None:
    answer = ADAPTER.answer(200, "application/json", body)
    assert answer.bad_gateway is not None and answer.usage is None


def test_negative_usage_is_no_usage() -> None:
    broken = {**CONVERSE_ANSWER, "usage": {"inputTokens": -1, "outputTokens": 2}}
    answer = ADAPTER.answer(200, "application/json", json.dumps(broken).encode())
    assert answer.usage is None and answer.error is not None and "invalid usage" in answer.error


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (400, "invalid_request_error", "ValidationException"),
        (403, "invalid_request_error", "AccessDeniedException"),
        (429, "rate_limit_error", "ThrottlingException"),
        (503, "api_error", "ServiceUnavailableException"),
    ],
)
def test_errors_take_the_openai_shape(status: int, kind: str, code: str) -> None:
    answer = ADAPTER.answer(status, "application/json", b'{"message":"nope"}')
    assert answer.usage is None and answer.body is not None
    assert json.loads(answer.body) == {
        "error": {"message": "nope", "type": kind, "param": None, "code": code}
    }


# --- streams ------------------------------------------------------------------------------------


def stream_frames(*, usage: bool = True) -> list[bytes]:
    metadata: dict[str, Any] = {"metrics": {"latencyMs": 3}}
    if usage:
        metadata["usage"] = CONVERSE_ANSWER["usage"]
    return [
        event_frame("messageStart", {"role": "assistant"}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 0}),
        event_frame(
            "contentBlockStart",
            {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t2", "name": "look"}}},
        ),
        event_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"q":'}}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"y"}'}}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 1}),
        event_frame("messageStop", {"stopReason": "tool_use"}),
        event_frame("metadata", metadata),
    ]


def sse_objects(data: bytes) -> list[Any]:
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e == "data: [DONE]" else json.loads(e[6:]) for e in events]


def test_stream_becomes_chat_chunks_with_usage() -> None:
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    out = reader.feed(b"".join(stream_frames()))
    assert reader.complete
    objs = sse_objects(out + reader.flush())
    assert objs[-1] == "[DONE]"
    deltas = [o["choices"][0]["delta"] for o in objs[:-2]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content", "") for d in deltas[1:]) == "Hello"
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert calls[0] == {
        "index": 0,
        "id": "t2",
        "type": "function",
        "function": {"name": "look", "arguments": ""},
    }
    assert "".join(c["function"]["arguments"] for c in calls) == '{"q":"y"}'
    assert objs[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert objs[-2]["choices"] == [] and objs[-2]["usage"]["prompt_tokens"] == 1130
    assert all(o["model"] == "fast" for o in objs[:-1])
    parsed = reader.finish()
    assert (parsed.usage, parsed.complete, parsed.error, parsed.finish_reasons) == (
        USAGE,
        True,
        None,
        ("tool_calls",),
    )
    assert parsed.output_chunks == 5


def test_strip_usage_chunk_leaves_the_usage_chunk_out_but_counts_it() -> None:
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=True)
    objs = sse_objects(reader.feed(b"".join(stream_frames())))
    assert all(o == "[DONE]" or o["choices"] for o in objs)
    assert reader.finish().usage == USAGE


def _stable(objs: list[Any]) -> list[Any]:
    """The events without what differs per call (the chunk id and creation time)."""
    return [
        o if isinstance(o, str) else {k: v for k, v in o.items() if k not in ("id", "created")} for o in objs
    ]


def test_a_frame_split_at_every_byte_boundary_reads_the_same() -> None:
    data = b"".join(stream_frames())
    whole = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    expected = _stable(sse_objects(whole.feed(data)))
    assert len(expected) == 9
    for cut in range(1, len(data)):
        reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
        out = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert _stable(sse_objects(out)) == expected, cut
        assert reader.finish().usage == USAGE, cut


def test_byte_by_byte_feeding() -> None:
    data = b"".join(stream_frames())
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    out = b"".join(reader.feed(data[i : i + 1]) for i in range(len(data)))
    assert sse_objects(out)[-1] == "[DONE]"
    assert reader.finish().usage == USAGE


def test_a_malformed_frame_ends_the_stream_with_an_error_event() -> None:
    frames = stream_frames()
    bad = frames[2][:-4] + bytes(b ^ 0xFF for b in frames[2][-4:])
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    out = reader.feed(b"".join([*frames[:2], bad, *frames[3:]]))
    objs = sse_objects(out)
    assert objs[-1]["error"]["code"] == "bad_gateway"
    assert "Bedrock" in objs[-1]["error"]["message"]
    assert "[DONE]" not in objs
    assert reader.feed(b"".join(frames)) == b""
    parsed = reader.finish()
    assert parsed.usage is None and not parsed.complete
    assert parsed.error is not None and parsed.error.startswith("malformed event-stream frame")
    assert parsed.output_chunks == 1  # what the client was sent before it broke


def test_a_wrong_prelude_length_is_malformed_too() -> None:
    frame = bytearray(stream_frames()[0])
    frame[3] ^= 0x01
    reader = FrameReader()
    assert reader.feed(bytes(frame)) == [] and reader.error is not None


def test_a_stream_cut_mid_frame_is_reported() -> None:
    data = b"".join(stream_frames())
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    reader.feed(data[:-10])
    reader.flush()
    parsed = reader.finish()
    assert not parsed.complete and parsed.error == "stream ended mid-frame"


def test_exception_event_is_an_openai_error_event() -> None:
    exception = encode_frame(
        {
            ":exception-type": "throttlingException",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        b'{"message":"slow down"}',
    )
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    objs = sse_objects(reader.feed(stream_frames()[0] + exception))
    assert objs[-1] == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "ThrottlingException",
        }
    }
    assert reader.finish().error == "provider error: throttlingException"


def test_is_stream_and_headers() -> None:
    assert ADAPTER.is_stream(200, "application/vnd.amazon.eventstream")
    assert not ADAPTER.is_stream(200, "application/json")
    assert not ADAPTER.is_stream(400, "application/vnd.amazon.eventstream")
    assert ADAPTER.stream_headers() == {"content-type": "text/event-stream"}
