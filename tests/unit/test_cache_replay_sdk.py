"""Every replay parsed by the official SDKs: a JSON-filled entry served as a stream and a stream-filled
entry served as JSON, content identical, reasoning and tool calls preserved.

The SDKs' own HTTP clients get the replayed bytes through `httpx2.MockTransport` (the SDKs' HTTP
library), with the content type the gateway would send.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from cache_samples import (
    ARGUMENTS,
    REASONING,
    SIGNATURE,
    TEXT,
    chat_json,
    chat_stream,
    chunked,
    messages_json,
    messages_stream,
)

from tollway_sidecar.cache import CacheEntry, StreamFill, entry_from_json
from tollway_sidecar.cache.entry import Api

BIG = 1 << 20


def filled(api: Api, how: str) -> CacheEntry:
    if how == "json":
        body = chat_json() if api == "chat" else messages_json()
        return entry_from_json(
            api, 200, json.dumps(body).encode(), cost_nano=5, created_ms=0, max_entry_bytes=BIG
        )
    fill = StreamFill(api, max_entry_bytes=BIG)
    for piece in chunked(chat_stream() if api == "chat" else messages_stream(), 29):
        fill.feed(piece)
    return fill.finish(status=200, cost_nano=5, created_ms=0)


def transport(entry: CacheEntry) -> httpx2.MockTransport:
    def handle(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            return httpx2.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=entry.to_sse(include_usage=include),
            )
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=entry.to_json())

    return httpx2.MockTransport(handle)


@pytest.fixture
def openai_for() -> Iterator[Any]:
    opened: list[openai.OpenAI] = []

    def make(entry: CacheEntry) -> openai.OpenAI:
        client = openai.OpenAI(
            api_key="tw-test",
            base_url="http://gateway.test/v1",
            max_retries=0,
            http_client=httpx2.Client(transport=transport(entry)),
        )
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.fixture
def anthropic_for() -> Iterator[Any]:
    opened: list[anthropic.Anthropic] = []

    def make(entry: CacheEntry) -> anthropic.Anthropic:
        client = anthropic.Anthropic(
            api_key="tw-test",
            base_url="http://gateway.test",
            max_retries=0,
            http_client=httpx2.Client(transport=transport(entry)),
        )
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Weather in Paris?"}]}
MESSAGES = {"model": "claude-test", "max_tokens": 1024, "messages": [{"role": "user", "content": "Weather?"}]}


def chat_as_json(client: openai.OpenAI) -> dict[str, Any]:
    completion = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    message = completion.choices[0].message
    return {
        "content": message.content,
        "reasoning": (message.model_extra or {}).get("reasoning_content"),
        "calls": [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()],
        "finish": completion.choices[0].finish_reason,
        "usage": completion.usage.model_dump(exclude_none=True) if completion.usage else None,
    }


def chat_as_stream(client: openai.OpenAI, *, include_usage: bool) -> dict[str, Any]:
    content, reasoning, finish, usage = "", "", None, None
    calls: dict[int, list[str]] = {}
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    for chunk in client.chat.completions.create(**CHAT, stream=True, **options):  # type: ignore[call-overload]
        if chunk.usage is not None:
            usage = chunk.usage.model_dump(exclude_none=True)
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            for call in delta.tool_calls or ():
                kept = calls.setdefault(call.index, ["", "", ""])
                kept[0] += call.id or ""
                kept[1] += (call.function.name if call.function else None) or ""
                kept[2] += (call.function.arguments if call.function else None) or ""
            finish = choice.finish_reason or finish
    return {
        "content": content,
        "reasoning": reasoning,
        "calls": [tuple(calls[i]) for i in sorted(calls)],
        "finish": finish,
        "usage": usage,
    }


EXPECTED_CALLS = [("call_abc", "get_weather", ARGUMENTS), ("call_def", "get_time", "{}")]


@pytest.mark.parametrize("how", ["json", "stream"])
def test_openai_sdk_reads_a_chat_entry_as_json_and_as_a_stream_alike(how: str, openai_for: Any) -> None:
    client = openai_for(filled("chat", how))
    as_json = chat_as_json(client)
    as_stream = chat_as_stream(client, include_usage=True)
    assert as_json == as_stream
    assert as_json["content"] == TEXT and as_json["reasoning"] == REASONING
    assert as_json["calls"] == EXPECTED_CALLS and as_json["finish"] == "tool_calls"
    assert as_json["usage"]["prompt_tokens"] == 120 and as_json["usage"]["completion_tokens"] == 80
    assert chat_as_stream(client, include_usage=False)["usage"] is None


@pytest.mark.parametrize("how", ["json", "stream"])
def test_openai_sdk_stream_helper_accumulates_the_replay_into_the_json_answer(
    how: str, openai_for: Any
) -> None:
    client = openai_for(filled("chat", how))
    with client.chat.completions.stream(**CHAT, stream_options={"include_usage": True}) as stream:  # type: ignore[arg-type]
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == TEXT
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()] == EXPECTED_CALLS
    assert final.usage is not None and final.usage.total_tokens == 200


def messages_view(message: anthropic.types.Message) -> list[Any]:
    out: list[Any] = []
    for block in message.content:
        if block.type == "thinking":
            out.append(("thinking", block.thinking, block.signature))
        elif block.type == "redacted_thinking":
            out.append(("redacted", block.data))
        elif block.type == "text":
            out.append(("text", block.text))
        elif block.type == "tool_use":
            out.append(("tool_use", block.id, block.name, block.input))
    return [
        *out,
        message.stop_reason,
        message.usage.input_tokens,
        message.usage.cache_read_input_tokens,
        message.usage.cache_creation_input_tokens,
        message.usage.output_tokens,
    ]


@pytest.mark.parametrize("how", ["json", "stream"])
def test_anthropic_sdk_reads_a_messages_entry_as_json_and_as_a_stream_alike(
    how: str, anthropic_for: Any
) -> None:
    client = anthropic_for(filled("messages", how))
    as_json = messages_view(client.messages.create(**MESSAGES))
    with client.messages.stream(**MESSAGES) as stream:
        texts = list(stream.text_stream)
        as_stream = messages_view(stream.get_final_message())
    assert as_json == as_stream
    assert "".join(texts) == TEXT and len(texts) > 1
    assert as_json[0] == ("thinking", REASONING, SIGNATURE)
    assert as_json[2] == ("text", TEXT)
    assert as_json[3] == ("tool_use", "toolu_01A", "get_weather", json.loads(ARGUMENTS))
    assert as_json[4:] == ["tool_use", 50, 100, 20, 80]
