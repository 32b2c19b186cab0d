"""The mock provider's OpenAI Responses API, driven by the official openai SDK and raw HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tollway.mockprovider import MockSettings, base_url, serve

PROMPT = "Tell me about toll roads in three short sentences please"
INSTRUCTIONS = "You are terse."
# 3 words + 4 (instructions) + 10 words + 4 (input): counted as the chat equivalent is.
PROMPT_TOKENS = 21
REPLY_START = "This is a mock reply to: Tell me about toll roads in three short lorem"

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def responses_url() -> AsyncIterator[str]:
    runner = await serve(MockSettings(port=0))
    try:
        yield base_url(runner)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def keyed_responses_url() -> AsyncIterator[str]:
    runner = await serve(MockSettings(port=0, require_key="sk-secret"))
    try:
        yield base_url(runner)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def client(responses_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{responses_url}/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, decoded data) of each SSE event."""
    out = []
    for block in raw.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


async def drain(stream: Any, seen: list[str]) -> None:
    async for event in stream:
        seen.append(event.type)


async def test_json_response(
    client: openai.AsyncOpenAI, http: aiohttp.ClientSession, responses_url: str
) -> None:
    reply = await client.responses.create(model="gpt-test", input=PROMPT, instructions=INSTRUCTIONS)
    assert reply.id.startswith("resp_")
    assert reply.object == "response"
    assert reply.status == "completed"
    assert reply.model == "gpt-test"
    assert reply.instructions == INSTRUCTIONS
    assert reply.incomplete_details is None
    (message,) = reply.output
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.status == "completed"
    (part,) = message.content
    assert part.type == "output_text"
    assert part.annotations == []
    assert reply.output_text.startswith(REPLY_START)
    assert len(reply.output_text.split()) == 20
    usage = reply.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        PROMPT_TOKENS,
        20,
        PROMPT_TOKENS + 20,
    )
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0

    # The raw body validates strictly against the SDK's model (the SDK itself does not validate).
    body = {"model": "gpt-test", "input": PROMPT}
    async with http.post(f"{responses_url}/v1/responses", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["x-request-id"].startswith("req_")
        raw = await resp.json()
    strict = Response.model_validate(raw)
    assert strict.created_at <= time.time()
    assert raw["completed_at"] >= raw["created_at"]
    assert raw["store"] is True
    assert raw["tools"] == [] and raw["tool_choice"] == "auto" and raw["parallel_tool_calls"] is True


async def test_input_items_and_usage_knobs(client: openai.AsyncOpenAI) -> None:
    reply = await client.responses.create(
        model="m",
        instructions=INSTRUCTIONS,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "first question here"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "an answer"}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": PROMPT},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
                ],
            },
        ],
        extra_headers={
            "x-mock-prompt-tokens": "500",
            "x-mock-cached-tokens": "200",
            "x-mock-completion-tokens": "9",
            "x-mock-reasoning-tokens": "4",
        },
    )
    assert reply.usage is not None
    assert reply.usage.input_tokens == 500
    assert reply.usage.input_tokens_details.cached_tokens == 200
    assert reply.usage.output_tokens == 9
    assert reply.usage.output_tokens_details.reasoning_tokens == 4
    reasoning, message = reply.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_") and reasoning.summary == []
    assert message.type == "message"
    # The reply has the visible tokens only: 9 output tokens - 4 reasoning.
    assert reply.output_text == "This is a mock reply"


async def test_counts_items_like_chat(client: openai.AsyncOpenAI) -> None:
    reply = await client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "weather in Paris"},  # 3 + 4
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},  # one message: 4
            {"type": "function_call_output", "call_id": "c1", "output": "sunny and warm"},  # 3 + 4
            {"type": "function_call_output", "call_id": "c2", "output": "rain"},  # 1 + 4
        ],
    )
    assert reply.usage is not None
    assert reply.usage.input_tokens == 7 + 4 + 7 + 5


async def test_max_output_tokens_makes_it_incomplete(client: openai.AsyncOpenAI) -> None:
    reply = await client.responses.create(
        model="m", input=PROMPT, max_output_tokens=16, extra_headers={"x-mock-completion-tokens": "30"}
    )
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.output[0].type == "message" and reply.output[0].status == "incomplete"
    assert reply.usage is not None and reply.usage.output_tokens == 16
    assert len(reply.output_text.split()) == 16
    assert reply.completed_at is None


async def test_stream_event_sequence(
    client: openai.AsyncOpenAI, http: aiohttp.ClientSession, responses_url: str
) -> None:
    plain = await client.responses.create(model="m", input=PROMPT, instructions=INSTRUCTIONS, store=False)
    body = {"model": "m", "input": PROMPT, "instructions": INSTRUCTIONS, "stream": True, "store": False}
    async with http.post(f"{responses_url}/v1/responses", json=body, headers={"x-mock-chunks": "4"}) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = (await resp.read()).decode()
    events = sse_events(raw)
    kinds = [name for name, _ in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    for name, data in events:
        assert data["type"] == name  # the `event:` line names the data's type
        assert EVENTS.validate_python(data).type == name  # strictly one of the SDK's event types
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    text = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert text == plain.output_text
    assert events[-4][1]["text"] == text
    item_ids = {data["item_id"] for _, data in events[3:-2]}
    assert item_ids == {events[2][1]["item"]["id"]}
    final = Response.model_validate(events[-1][1]["response"])
    assert final.status == "completed"
    assert final.output_text == text
    assert final.usage == plain.usage  # same tokens streamed or not


async def test_stream_through_the_sdk_helper(client: openai.AsyncOpenAI) -> None:
    async with client.responses.stream(
        model="m", input=PROMPT, extra_headers={"x-mock-completion-tokens": "6"}
    ) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert len(deltas) == 6
    assert final.output_text == "".join(deltas) == "This is a mock reply to:"
    assert final.usage is not None and final.usage.output_tokens == 6


async def test_stream_incomplete(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model="m", input=PROMPT, max_output_tokens=3, stream=True, extra_headers={"x-mock-chunks": "1"}
    )
    events = [event async for event in stream]
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details is not None
    assert events[-1].response.usage is not None and events[-1].response.usage.output_tokens == 3


async def test_forced_function_call(client: openai.AsyncOpenAI) -> None:
    tools: Any = [
        {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}},
        {"type": "function", "name": "other", "parameters": {"type": "object", "properties": {}}},
    ]
    reply = await client.responses.create(
        model="m", input=PROMPT, tools=tools, tool_choice={"type": "function", "name": "other"}
    )
    (call,) = reply.output
    assert call.type == "function_call"
    assert call.name == "other"
    assert call.call_id.startswith("call_") and call.id is not None and call.id.startswith("fc_")
    assert json.loads(call.arguments)["input"].startswith(REPLY_START)
    assert reply.tools[1].type == "function" and reply.tools[1].name == "other"

    auto = await client.responses.create(model="m", input=PROMPT, tools=tools)
    assert [item.type for item in auto.output] == ["message"]  # not forced: the mock answers in text

    async with client.responses.stream(
        model="m", input=PROMPT, tools=tools, tool_choice="required"
    ) as stream:
        kinds = []
        arguments = []
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.function_call_arguments.delta":
                arguments.append(event.delta)
        final = await stream.get_final_response()
    assert "response.output_text.delta" not in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (streamed,) = final.output
    assert streamed.type == "function_call" and streamed.name == "lookup"
    assert "".join(arguments) == streamed.arguments == call.arguments


async def test_retrieve_and_delete(
    client: openai.AsyncOpenAI, http: aiohttp.ClientSession, responses_url: str
) -> None:
    reply = await client.responses.create(model="m", input=PROMPT)
    again = await client.responses.retrieve(reply.id)
    assert again == reply
    async with http.delete(f"{responses_url}/v1/responses/{reply.id}") as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": reply.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as missing:
        await client.responses.retrieve(reply.id)
    assert missing.value.body == {
        "message": f"Response with id '{reply.id}' not found.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(reply.id)

    unstored = await client.responses.create(model="m", input=PROMPT, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)

    streamed = await client.responses.create(model="m", input=PROMPT, stream=True)
    events = [event async for event in streamed]
    assert events[-1].type == "response.completed"
    stored = await client.responses.retrieve(events[-1].response.id)
    assert stored.output_text == events[-1].response.output_text
    await client.responses.delete(stored.id)


async def test_previous_response_id(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(model="m", input=PROMPT)
    second = await client.responses.create(model="m", input="and more", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="m", input="x", previous_response_id="resp_unknown")
    assert err.value.param == "previous_response_id"
    assert err.value.code == "previous_response_not_found"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "hi"}, "model", "missing_required_parameter"),
        ({"model": "m"}, "input", "missing_required_parameter"),
        ({"model": "m", "input": 42}, "input", "invalid_type"),
        ({"model": "m", "input": ["text"]}, "input[0]", "invalid_type"),
    ],
)
async def test_bad_requests(
    http: aiohttp.ClientSession, responses_url: str, body: dict[str, Any], param: str, code: str
) -> None:
    async with http.post(f"{responses_url}/v1/responses", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert param.split("[")[0] in error["message"]


async def test_failure_knobs(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        await client.responses.create(
            model="m", input=PROMPT, extra_headers={"x-mock-status": "429", "x-mock-retry-after": "3"}
        )
    assert limited.value.response.headers["retry-after"] == "3"
    stream = await client.responses.create(
        model="m", input=PROMPT, stream=True, extra_headers={"x-mock-fail": "broken-stream"}
    )
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        await drain(stream, seen)
    assert "response.output_text.delta" in seen
    assert "response.completed" not in seen
    bare = await client.responses.create(model="m", input=PROMPT, extra_headers={"x-mock-fail": "no-usage"})
    assert bare.usage is None and bare.output_text.startswith(REPLY_START)


async def test_aliases_and_azure_auth(http: aiohttp.ClientSession, keyed_responses_url: str) -> None:
    body = {"model": "my-deployment", "input": PROMPT}
    async with http.post(f"{keyed_responses_url}/v1/responses", json=body) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    auth = {"Authorization": "Bearer sk-secret"}
    async with http.post(f"{keyed_responses_url}/responses", json=body, headers=auth) as resp:
        assert resp.status == 200
    azure = f"{keyed_responses_url}/openai/v1/responses?api-version=preview"
    async with http.post(azure, json=body, headers={"api-key": "sk-secret"}) as resp:
        assert resp.status == 200
        created = await resp.json()
    assert created["model"] == "my-deployment"
    async with http.get(
        f"{keyed_responses_url}/openai/v1/responses/{created['id']}", headers={"api-key": "sk-secret"}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == created["id"]
    async with http.post(
        f"{keyed_responses_url}/v1/responses", json=body, headers={"api-key": "sk-secret"}
    ) as resp:
        assert resp.status == 401  # api-key is Azure's header, not OpenAI's


async def test_chunk_delay(http: aiohttp.ClientSession, responses_url: str) -> None:
    body = {"model": "m", "input": PROMPT, "stream": True, "store": False}
    headers = {"x-mock-chunks": "4", "x-mock-chunk-delay-ms": "40"}
    start = time.perf_counter()
    async with http.post(f"{responses_url}/v1/responses", json=body, headers=headers) as resp:
        raw = (await resp.read()).decode()
    assert time.perf_counter() - start >= 3 * 0.04
    assert [name for name, _ in sse_events(raw)].count("response.output_text.delta") == 4


async def test_input_items_list_what_the_stored_response_was_asked(client: openai.AsyncOpenAI) -> None:
    reply = await client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "second"},
            {"role": "user", "content": [{"type": "input_text", "text": "third"}]},
        ],
    )
    page = await client.responses.input_items.list(reply.id)
    texts = [item.content[0].text for item in page.data if item.type == "message"]
    assert texts == ["third", "second", "first"]  # newest first, as OpenAI lists them
    assert all(item.id.startswith("msg_") for item in page.data) and page.has_more is False
    ascending = await client.responses.input_items.list(reply.id, order="asc", limit=2)
    assert [item.content[0].text for item in ascending.data] == ["first", "second"]  # type: ignore[union-attr]
    assert ascending.has_more is True
    rest = await client.responses.input_items.list(reply.id, order="asc", after=ascending.data[1].id)
    assert [item.content[0].text for item in rest.data] == ["third"]  # type: ignore[union-attr]
    await client.responses.delete(reply.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.input_items.list(reply.id)
