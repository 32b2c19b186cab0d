"""The mock provider against the official OpenAI and Anthropic SDKs and a raw HTTP client."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
import pytest_asyncio
from aiohttp import web

from tollway.mockprovider import MockSettings, base_url, create_app, serve

PROMPT = "Tell me about toll roads in three short sentences please"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": PROMPT},
]
# 3 + 4 (system) + 10 + 4 (user) words/messages: the documented prompt count.
PROMPT_TOKENS = 21


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def mock_url() -> AsyncIterator[str]:
    runner = await serve(MockSettings(port=0))
    try:
        yield base_url(runner)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def keyed_url() -> AsyncIterator[str]:
    runner = await serve(MockSettings(port=0, require_key="sk-secret"))
    try:
        yield base_url(runner)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(loop_scope="session")
async def oai(mock_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def ant(mock_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=mock_url, api_key="x", max_retries=0) as client:
        yield client


def sse_payloads(raw: str) -> list[str]:
    return [line[len("data: ") :] for line in raw.split("\n") if line.startswith("data: ")]


# --- OpenAI chat ---------------------------------------------------------------------------------


async def test_chat_completion_json(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(model="gpt-test-echo", messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-test-echo"
    assert reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content is not None
    assert content.startswith("This is a mock reply to: Tell me about toll roads")
    assert len(content.split()) == 20
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == PROMPT_TOKENS
    assert reply.usage.completion_tokens == 20
    assert reply.usage.total_tokens == PROMPT_TOKENS + 20
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    assert reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_chat_max_tokens_cuts_with_length(oai: openai.AsyncOpenAI, field: str) -> None:
    reply = await oai.chat.completions.create(model="m", messages=MESSAGES, **{field: 5})  # type: ignore[call-overload]
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "This is a mock reply"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5


async def test_chat_stream_without_usage(oai: openai.AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    stream = await oai.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(pieces) == 20  # one chunk per token by default
    reference = await oai.chat.completions.create(model="m", messages=MESSAGES)
    assert "".join(p or "" for p in pieces) == reference.choices[0].message.content
    # On the wire: no usage key at all without stream_options, and the [DONE] sentinel.
    async with http.post(
        f"{str(oai.base_url).rstrip('/')}/chat/completions",
        json={"model": "m", "messages": MESSAGES, "stream": True},
    ) as resp:
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        payloads = sse_payloads(await resp.text())
    assert payloads[-1] == "[DONE]"
    assert all('"usage"' not in p for p in payloads)


async def test_chat_stream_include_usage(oai: openai.AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    stream = await oai.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    reference = await oai.chat.completions.create(model="m", messages=MESSAGES)
    assert reference.usage is not None
    assert last.usage.model_dump() == reference.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    async with http.post(
        f"{str(oai.base_url).rstrip('/')}/chat/completions",
        json={"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
    ) as resp:
        payloads = sse_payloads(await resp.text())
    assert payloads[-1] == "[DONE]"
    objects = [json.loads(p) for p in payloads[:-1]]
    assert all(o["usage"] is None for o in objects[:-1])
    assert objects[-1]["choices"] == []
    assert objects[-1]["usage"]["total_tokens"] == PROMPT_TOKENS + 20


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-mock-completion-tokens": "7", "x-mock-chunks": "3"},
        {"x-mock-prompt-tokens": "1000", "x-mock-cached-tokens": "600", "x-mock-reasoning-tokens": "4"},
        {"x-mock-completion-tokens": "0"},
    ],
)
async def test_streamed_and_plain_usage_are_equal(
    oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic, headers: dict[str, str]
) -> None:
    plain = await oai.chat.completions.create(model="m", messages=MESSAGES, extra_headers=headers)
    stream = await oai.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    )
    chunks = [c async for c in stream]
    assert plain.usage is not None
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content

    a_plain = await ant.messages.create(
        model="claude-x",
        max_tokens=1000,
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers=headers,
    )
    async with ant.messages.stream(
        model="claude-x",
        max_tokens=1000,
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers=headers,
    ) as a_stream:
        final = await a_stream.get_final_message()
    assert final.usage.model_dump() == a_plain.usage.model_dump()
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in a_plain.content]


async def test_usage_overrides(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(
        model="o4-mini",
        messages=MESSAGES,
        extra_headers={
            "x-mock-prompt-tokens": "1200",
            "x-mock-cached-tokens": "1024",
            "x-mock-completion-tokens": "30",
            "x-mock-reasoning-tokens": "10",
        },
    )
    usage = reply.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1200, 30, 1230)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1024
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 10
    # Reasoning is part of completion_tokens (as OpenAI counts it): 20 visible words remain.
    assert len((reply.choices[0].message.content or "").split()) == 20


async def test_chat_aliases_and_azure_path(http: aiohttp.ClientSession, mock_url: str) -> None:
    body = {"messages": MESSAGES}
    async with http.post(f"{mock_url}/chat/completions", json={**body, "model": "plain"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["model"] == "plain"
    azure = f"{mock_url}/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21"
    async with http.post(azure, json=body) as resp:
        assert resp.status == 200
        assert (await resp.json())["model"] == "my-gpt"


async def test_stream_timing_knobs(http: aiohttp.ClientSession, mock_url: str) -> None:
    headers = {
        "x-mock-latency-ms": "100",
        "x-mock-ttft-ms": "150",
        "x-mock-chunk-delay-ms": "30",
        "x-mock-chunks": "4",
    }
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    start = time.perf_counter()
    async with http.post(f"{mock_url}/v1/chat/completions", json=body, headers=headers) as resp:
        headers_at = time.perf_counter() - start
        first = await resp.content.readuntil(b"\n\n")
        first_at = time.perf_counter() - start
        rest = await resp.read()
        end_at = time.perf_counter() - start
    assert b"chat.completion.chunk" in first
    assert 0.1 <= headers_at < 0.25
    assert first_at >= 0.25
    assert end_at >= 0.25 + 3 * 0.03
    assert rest.endswith(b"data: [DONE]\n\n")


# --- OpenAI embeddings and models ----------------------------------------------------------------


async def test_embeddings_default_base64_and_float(oai: openai.AsyncOpenAI, mock_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        await http.delete(f"{mock_url}/_mock/requests")
        default = await oai.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
        async with http.get(f"{mock_url}/_mock/requests") as resp:
            seen = (await resp.json())[-1]
    assert seen["body"]["encoding_format"] == "base64"  # the SDK asks for base64 unless told otherwise
    assert default.object == "list"
    assert default.model == "text-embedding-3-small"
    assert [d.index for d in default.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in default.data)
    assert default.usage.prompt_tokens == 3
    assert default.usage.total_tokens == 3

    floats = await oai.embeddings.create(
        model="text-embedding-3-small", input=["hello world", "bye"], encoding_format="float"
    )
    assert [d.embedding for d in floats.data] == [d.embedding for d in default.data]
    assert floats.data[0].embedding != floats.data[1].embedding

    raw = await oai.embeddings.create(model="e", input="hello world", encoding_format="base64")
    encoded = raw.data[0].embedding
    assert isinstance(encoded, str)
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == default.data[0].embedding


async def test_embeddings_dimensions_and_token_arrays(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.embeddings.create(
        model="e", input="one two three", dimensions=64, encoding_format="float"
    )
    assert len(reply.data[0].embedding) == 64
    assert abs(sum(v * v for v in reply.data[0].embedding) - 1.0) < 1e-4
    tokens = await oai.embeddings.create(model="e", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(tokens.data) == 2
    assert tokens.usage.prompt_tokens == 5


async def test_models_list(oai: openai.AsyncOpenAI) -> None:
    page = await oai.models.list()
    ids = [m.id for m in page.data]
    assert "gpt-4o-mini" in ids
    assert "claude-sonnet-4-5" in ids
    assert all(m.object == "model" for m in page.data)
    model = await oai.models.retrieve("anything-goes")
    assert model.id == "anything-goes"


# --- Anthropic -----------------------------------------------------------------------------------


async def test_anthropic_message(ant: anthropic.AsyncAnthropic) -> None:
    message = await ant.messages.create(
        model="claude-test",
        max_tokens=256,
        system="You are terse.",
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "claude-test"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    block = message.content[0]
    assert block.type == "text"
    assert block.text.startswith("This is a mock reply to: Tell me")
    assert message.usage.input_tokens == 3 + 10 + 4  # system words are counted, without a per-message 4
    assert message.usage.output_tokens == 20
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0


async def test_anthropic_max_tokens_and_cache_knobs(ant: anthropic.AsyncAnthropic) -> None:
    message = await ant.messages.create(
        model="c",
        max_tokens=3,
        messages=[{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        extra_headers={"x-mock-cached-tokens": "500", "x-mock-cache-creation-tokens": "70"},
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    assert message.usage.cache_read_input_tokens == 500
    assert message.usage.cache_creation_input_tokens == 70
    assert message.usage.input_tokens == 14


async def test_anthropic_stream_events(ant: anthropic.AsyncAnthropic, http: aiohttp.ClientSession) -> None:
    async with ant.messages.stream(
        model="claude-test",
        max_tokens=256,
        messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"x-mock-completion-tokens": "6", "x-mock-prompt-tokens": "42"},
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "This is a mock reply to:"
    assert final.usage.input_tokens == 42
    assert final.usage.output_tokens == 6
    assert final.stop_reason == "end_turn"

    body = {"model": "c", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{str(ant.base_url).rstrip('/')}/v1/messages", json=body) as resp:
        raw = await resp.text()
    events = [line[len("event: ") :] for line in raw.split("\n") if line.startswith("event: ")]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 10,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    datas = [json.loads(p) for p in sse_payloads(raw)]
    assert [d["type"] for d in datas] == events
    assert datas[0]["message"]["usage"]["input_tokens"] == 5
    assert datas[-2]["usage"]["output_tokens"] == 10
    assert datas[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}


async def test_anthropic_count_tokens(ant: anthropic.AsyncAnthropic) -> None:
    counted = await ant.messages.count_tokens(model="c", messages=[{"role": "user", "content": PROMPT}])
    assert counted.input_tokens == 14


# --- failure knobs -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
async def test_openai_error_shape(http: aiohttp.ClientSession, mock_url: str, status: int) -> None:
    headers = {"x-mock-status": str(status), "x-mock-retry-after": "7"}
    async with http.post(
        f"{mock_url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=headers
    ) as resp:
        assert resp.status == status
        assert resp.headers["retry-after"] == "7"
        body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == {429: "requests", 500: "server_error", 503: "server_error"}.get(
        status, "invalid_request_error"
    )


@pytest.mark.parametrize(
    ("status", "etype"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (429, "rate_limit_error"),
        (529, "overloaded_error"),
    ],
)
async def test_anthropic_error_shape(
    http: aiohttp.ClientSession, mock_url: str, status: int, etype: str
) -> None:
    async with http.post(f"{mock_url}/v1/messages", json={}, headers={"x-mock-status": str(status)}) as resp:
        assert resp.status == status
        assert "retry-after" not in resp.headers
        body = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == etype
    assert isinstance(body["error"]["message"], str)


async def test_sdk_errors(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(openai.RateLimitError) as oai_err:
        await oai.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-mock-status": "429", "x-mock-retry-after": "2"}
        )
    assert oai_err.value.response.headers["retry-after"] == "2"
    assert oai_err.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.InternalServerError) as ant_err:
        await ant.messages.create(
            model="c", max_tokens=5, messages=MESSAGES[1:], extra_headers={"x-mock-status": "529"}
        )
    assert ant_err.value.status_code == 529


async def test_reset(oai: openai.AsyncOpenAI, http: aiohttp.ClientSession, mock_url: str) -> None:
    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-mock-fail": "reset"}
        )
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"{mock_url}/v1/models", headers={"x-mock-fail": "reset"}) as resp:
            await resp.read()


async def test_stall_until_client_leaves(http: aiohttp.ClientSession, mock_url: str) -> None:
    timeout = aiohttp.ClientTimeout(total=0.3)
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(
            f"{mock_url}/v1/models", headers={"x-mock-fail": "stall"}, timeout=timeout
        ) as resp:
            await resp.read()
    async with http.get(f"{mock_url}/_mock/health") as resp:
        assert resp.status == 200


async def test_stall_does_not_block_shutdown() -> None:
    runner = await serve(MockSettings(port=0))
    url = base_url(runner)
    async with aiohttp.ClientSession() as http:
        pending = asyncio.ensure_future(http.get(f"{url}/v1/models", headers={"x-mock-fail": "stall"}))
        await asyncio.sleep(0.2)
        start = time.perf_counter()
        await runner.cleanup()
        assert time.perf_counter() - start < 1.5
        with pytest.raises(aiohttp.ClientConnectionError):
            await pending


async def test_garbage(oai: openai.AsyncOpenAI, http: aiohttp.ClientSession, mock_url: str) -> None:
    async with http.post(
        f"{mock_url}/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES},
        headers={"x-mock-fail": "garbage"},
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        text = await resp.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    # Both SDKs surface a non-JSON 200 as a bare json.JSONDecodeError (not an APIError).
    with pytest.raises(json.JSONDecodeError):
        await oai.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-mock-fail": "garbage"}
        )


async def test_broken_stream(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> None:
    stream = await oai.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-fail": "broken-stream", "x-mock-chunk-delay-ms": "5"},
    )
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIConnectionError):
        await consume()
    assert len(received) == 10  # half of the 20 content chunks, then the connection drops

    # The Anthropic SDK lets the transport error through unwrapped (the OpenAI SDK wraps it).
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        async with ant.messages.stream(
            model="c", max_tokens=100, messages=MESSAGES[1:], extra_headers={"x-mock-fail": "broken-stream"}
        ) as a_stream:
            await a_stream.get_final_message()


async def test_broken_json_body(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-mock-fail": "broken-stream"}
        )


async def test_no_usage(http: aiohttp.ClientSession, mock_url: str) -> None:
    headers = {"x-mock-fail": "no-usage"}
    chat = {"model": "m", "messages": MESSAGES}
    async with http.post(f"{mock_url}/v1/chat/completions", json=chat, headers=headers) as resp:
        assert "usage" not in await resp.json()
    streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{mock_url}/v1/chat/completions", json=streamed, headers=headers) as resp:
        payloads = sse_payloads(await resp.text())
    assert payloads[-1] == "[DONE]"
    assert all(json.loads(p)["usage"] is None for p in payloads[:-1])
    msg = {"model": "c", "max_tokens": 9, "messages": MESSAGES[1:], "stream": True}
    async with http.post(f"{mock_url}/v1/messages", json=msg, headers=headers) as resp:
        assert '"usage"' not in await resp.text()


async def test_negative_usage(http: aiohttp.ClientSession, mock_url: str) -> None:
    headers = {"x-mock-fail": "negative-usage", "x-mock-completion-tokens": "4"}
    chat = {"model": "m", "messages": MESSAGES}
    async with http.post(f"{mock_url}/v1/chat/completions", json=chat, headers=headers) as resp:
        usage = (await resp.json())["usage"]
    assert usage["prompt_tokens"] == -PROMPT_TOKENS and usage["completion_tokens"] == -4
    assert usage["prompt_tokens_details"]["cached_tokens"] == -1  # 0 becomes -1: never valid
    streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(f"{mock_url}/v1/chat/completions", json=streamed, headers=headers) as resp:
        payloads = sse_payloads(await resp.text())
    assert json.loads(payloads[-2])["usage"]["completion_tokens"] == -4
    msg = {"model": "c", "max_tokens": 9, "messages": MESSAGES[1:]}
    async with http.post(f"{mock_url}/v1/messages", json=msg, headers=headers) as resp:
        assert (await resp.json())["usage"]["output_tokens"] == -4


@pytest.mark.parametrize(
    ("mode", "content_type"),
    [("html", "text/html"), ("truncated-json", "application/json"), ("empty-body", "application/json")],
)
async def test_broken_200_bodies(
    http: aiohttp.ClientSession, mock_url: str, mode: str, content_type: str
) -> None:
    chat = {"model": "m", "messages": MESSAGES}
    async with http.post(f"{mock_url}/v1/chat/completions", json=chat) as resp:
        whole = await resp.read()
    async with http.post(f"{mock_url}/v1/chat/completions", json=chat, headers={"x-mock-fail": mode}) as resp:
        assert resp.status == 200 and resp.content_type == content_type
        body = await resp.read()
        assert resp.content_length == len(body)  # framed correctly: the client reads it whole
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    if mode == "truncated-json":
        assert body.startswith(b'{"id":"chatcmpl-') and len(body) == len(whole) // 2  # ids differ
    if mode == "empty-body":
        assert body == b""


async def test_stall_stream_sends_half_then_nothing(http: aiohttp.ClientSession, mock_url: str) -> None:
    streamed = {"model": "m", "messages": MESSAGES, "stream": True}
    received = bytearray()
    async with http.post(
        f"{mock_url}/v1/chat/completions",
        json=streamed,
        headers={"x-mock-fail": "stall-stream", "x-mock-chunks": "4"},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=0.5),
    ) as resp:
        assert resp.status == 200

        async def read_all() -> None:
            async for piece in resp.content.iter_any():
                received.extend(piece)

        with pytest.raises(asyncio.TimeoutError):
            await read_all()
    payloads = sse_payloads(received.decode())
    assert len(payloads) == 1 + 2  # the role chunk and half of the 4 content chunks; no end
    async with http.post(
        f"{mock_url}/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES},
        headers={"x-mock-fail": "stall-stream"},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=0.5),
    ) as resp:
        with pytest.raises(asyncio.TimeoutError):
            await resp.read()  # half the declared body, then silence


async def test_bad_knob_is_a_400(http: aiohttp.ClientSession, mock_url: str) -> None:
    for name, value in [("x-mock-latency-ms", "soon"), ("x-mock-fail", "explode"), ("x-mock-status", "200")]:
        async with http.post(
            f"{mock_url}/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={name: value},
        ) as resp:
            assert resp.status == 400
            assert name in (await resp.json())["error"]["message"]


async def test_invalid_json_body(http: aiohttp.ClientSession, mock_url: str) -> None:
    async with http.post(f"{mock_url}/v1/messages", data=b"{nope") as resp:
        assert resp.status == 400
        assert (await resp.json())["type"] == "error"


# --- auth and recording --------------------------------------------------------------------------


async def test_require_key(keyed_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{keyed_url}/v1", api_key="sk-secret", max_retries=0) as good:
        assert (await good.chat.completions.create(model="m", messages=MESSAGES)).choices
    async with openai.AsyncOpenAI(base_url=f"{keyed_url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as err:
            await bad.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.code == "invalid_api_key"
    async with anthropic.AsyncAnthropic(base_url=keyed_url, api_key="sk-secret", max_retries=0) as good_a:
        assert (await good_a.messages.create(model="c", max_tokens=5, messages=MESSAGES[1:])).content
    async with anthropic.AsyncAnthropic(base_url=keyed_url, api_key="wrong", max_retries=0) as bad_a:
        with pytest.raises(anthropic.AuthenticationError) as a_err:
            await bad_a.messages.create(model="c", max_tokens=5, messages=MESSAGES[1:])
    assert a_err.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        "request_id": a_err.value.request_id,
    }
    async with aiohttp.ClientSession() as http:
        azure = f"{keyed_url}/openai/deployments/d/chat/completions"
        async with http.post(azure, json={"messages": MESSAGES}, headers={"api-key": "sk-secret"}) as resp:
            assert resp.status == 200
        async with http.get(f"{keyed_url}/_mock/health") as resp:
            assert resp.status == 200


async def test_request_recording(oai: openai.AsyncOpenAI, http: aiohttp.ClientSession, mock_url: str) -> None:
    async with http.delete(f"{mock_url}/_mock/requests") as resp:
        assert resp.status == 200
    await oai.chat.completions.create(model="rewritten-model", messages=MESSAGES, extra_query={"trace": "1"})
    async with http.get(f"{mock_url}/_mock/requests") as resp:
        seen = await resp.json()
    assert len(seen) == 1
    entry = seen[0]
    assert entry["method"] == "POST"
    assert entry["path"] == "/v1/chat/completions"
    assert entry["query"] == {"trace": "1"}
    assert entry["headers"]["authorization"] == "Bearer x"
    assert entry["body"]["model"] == "rewritten-model"
    async with http.delete(f"{mock_url}/_mock/requests") as resp:
        assert (await resp.json()) == {"cleared": 1}
    async with http.get(f"{mock_url}/_mock/requests") as resp:
        assert await resp.json() == []


async def test_recording_keeps_last_100(http: aiohttp.ClientSession) -> None:
    runner = web.AppRunner(create_app(MockSettings()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = base_url(runner)
    try:
        for i in range(105):
            async with http.get(f"{url}/v1/models", params={"i": str(i)}) as resp:
                assert resp.status == 200
        async with http.get(f"{url}/_mock/requests") as resp:
            seen = await resp.json()
        assert len(seen) == 100
        assert seen[0]["query"] == {"i": "5"}
        assert seen[-1]["query"] == {"i": "104"}
    finally:
        await runner.cleanup()


async def test_many_concurrent_streams(mock_url: str) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"x-mock-ttft-ms": "50", "x-mock-chunk-delay-ms": "5"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> bool:
            async with http.post(f"{mock_url}/v1/chat/completions", json=body, headers=headers) as resp:
                return (await resp.read()).endswith(b"data: [DONE]\n\n")

        start = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(500)))
        elapsed = time.perf_counter() - start
    assert all(results)
    assert elapsed < 10
