"""`ResponsesOverChat` over the OpenAI-compatible, Anthropic and Bedrock chat adapters, against the
mock provider over real HTTP (and the Anthropic documentation's own bytes): the request each backend
receives, JSON and streamed answers translated, the usage exactly the inner adapter's."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from yarl import URL

from tollway.mockprovider import MockSettings, base_url, serve
from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.adapters.anthropic import AnthropicChat
from tollway_sidecar.providers.adapters.base import Adapter, AttemptRequest, ClientAnswer, Refused
from tollway_sidecar.providers.adapters.chat_bedrock import ChatBedrock
from tollway_sidecar.providers.adapters.openai import OpenAICompatible
from tollway_sidecar.providers.adapters.responses_chat import ResponsesOverChat
from tollway_sidecar.providers.usage import ParsedStream

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "responses"
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
PROMPT = "Tell me about toll roads in three short sentences please"
REQUEST: dict[str, Any] = {
    "model": "route-model",
    "instructions": "You are terse.",
    "input": [{"role": "user", "content": [{"type": "input_text", "text": PROMPT}]}],
    "max_output_tokens": 200,
}
KNOBS = {"x-mock-prompt-tokens": "120", "x-mock-cached-tokens": "40", "x-mock-completion-tokens": "12"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def upstream_url() -> AsyncIterator[str]:
    runner = await serve(MockSettings(port=0))
    try:
        yield base_url(runner)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def backend(provider: str, url: str, model: str = "backend-model") -> Backend:
    return Backend(name="b", provider=provider, model=model, base_url=url)  # type: ignore[arg-type]


def attempt(back: Backend, body: dict[str, Any], *, query: str = "") -> AttemptRequest:
    path = "/v1/responses" + (f"?{query}" if query else "")
    raw = json.dumps(body).encode()
    return AttemptRequest(back, path, {}, body, raw, "sk-test", 0.0, body.get("stream") is True)


ADAPTERS: dict[str, tuple[str, Adapter]] = {
    "openai-compatible": ("/v1", OpenAICompatible()),
    "anthropic": ("", AnthropicChat()),
}


async def call(
    http: aiohttp.ClientSession,
    url: str,
    provider: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[ResponsesOverChat, Adapter, int, str, list[bytes]]:
    """Send one attempt the way Envoy would: the adapter's path, headers and body; the answer's
    bytes as they arrived."""
    suffix, inner = ADAPTERS[provider]
    adapter = ResponsesOverChat(inner)
    assert adapter.check(body) is None
    upstream = adapter.request(attempt(backend(provider, url + suffix), body))
    assert upstream.body is not None
    sent = {"content-type": "application/json", **upstream.set_headers, **(headers or {})}
    async with http.post(url + upstream.path, data=upstream.body, headers=sent) as resp:
        pieces = [piece async for piece in resp.content.iter_any()]
        return adapter, inner, resp.status, resp.headers.get("content-type", ""), pieces


def streamed(adapter: ResponsesOverChat, pieces: list[bytes]) -> tuple[list[dict[str, Any]], ParsedStream]:
    seen: list[tuple[bytes | None, bytes]] = []
    reader = adapter.stream(
        client_model="route-model",
        strip_usage_chunk=True,
        on_event=lambda name, data: seen.append((name, data)),
    )
    sent = [reader.feed(piece) for piece in pieces]
    out = b"".join(
        piece if replaced is None else replaced for piece, replaced in zip(pieces, sent, strict=True)
    )
    out += reader.flush()
    assert reader.complete
    events = []
    for block in out.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            events.append(json.loads(data.removeprefix("data: ")))
            assert name == "event: " + events[-1]["type"]
    # `on_event` sees the client's events, exactly as sent.
    assert [(name, json.loads(data)) for name, data in seen] == [(e["type"].encode(), e) for e in events]
    return events, reader.finish()


def replay(events: list[dict[str, Any]]) -> Any:
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    for data in events:
        for event in state.handle_event(EVENTS.validate_python(data)):
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert final is not None
    return final


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
async def test_the_backend_receives_the_translated_request(
    http: aiohttp.ClientSession, upstream_url: str, provider: str
) -> None:
    await http.delete(f"{upstream_url}/_mock/requests")
    await call(http, upstream_url, provider, {**REQUEST, "stream": True})
    async with http.get(f"{upstream_url}/_mock/requests") as resp:
        (seen,) = await resp.json()
    sent = seen["body"]
    assert sent["model"] == "backend-model"
    assert sent["stream"] is True
    if provider == "anthropic":
        assert seen["path"] == "/v1/messages"
        assert seen["headers"]["x-api-key"] == "sk-test"
        assert (
            sent["system"] == [{"type": "text", "text": "You are terse."}]
            or sent["system"] == "You are terse."
        )
        assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
        assert sent["max_tokens"] == 200
    else:
        assert seen["path"] == "/v1/chat/completions"
        assert seen["headers"]["authorization"] == "Bearer sk-test"
        assert sent["messages"] == [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        ]
        assert sent["max_tokens"] == 200
        assert sent["stream_options"] == {"include_usage": True}


async def test_counted_as_the_mock_counts_a_native_responses_call(
    http: aiohttp.ClientSession, upstream_url: str
) -> None:
    adapter, _, status, content_type, pieces = await call(http, upstream_url, "openai-compatible", REQUEST)
    translated = adapter.answer(status, content_type, b"".join(pieces))
    async with http.post(f"{upstream_url}/v1/responses", json=REQUEST) as resp:
        native = await resp.json()
    assert translated.body is not None
    response = json.loads(translated.body)
    assert response["usage"] == native["usage"]
    assert response["output"][0]["content"][0]["text"] == native["output"][0]["content"][0]["text"]


def test_the_chat_body_is_sent_even_when_the_model_needs_no_renaming() -> None:
    adapter = ResponsesOverChat(OpenAICompatible())
    body = {**REQUEST, "model": "backend-model"}
    upstream = adapter.request(
        attempt(backend("openai-compatible", "https://api.example.com/v1"), body, query="x=1")
    )
    assert upstream.path == "/v1/chat/completions?x=1"
    assert upstream.body is not None and json.loads(upstream.body)["messages"][0]["role"] == "system"


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
async def test_json_and_streamed_answers_cost_the_same_as_chat(
    http: aiohttp.ClientSession, upstream_url: str, provider: str
) -> None:
    adapter, inner, status, content_type, pieces = await call(http, upstream_url, provider, REQUEST, KNOBS)
    assert status == 200
    body = b"".join(pieces)
    answer = adapter.answer(status, content_type, body)
    chat_answer: ClientAnswer = inner.answer(status, content_type, body)
    assert answer.bad_gateway is None and answer.content_type == "application/json"
    assert answer.body is not None
    response = Response.model_validate(json.loads(answer.body))
    assert response.status == "completed" and response.id.startswith("resp_")
    assert response.output_text.startswith("This is a mock reply to: Tell me about toll roads")
    assert answer.text == response.output_text
    assert answer.usage == chat_answer.usage and answer.usage is not None
    assert answer.finish_reasons == chat_answer.finish_reasons and answer.model == chat_answer.model
    # The mock's own figures, as the gateway charges them: Anthropic's input_tokens leave the cache
    # reads out, OpenAI's include them.
    expected_input = 160 if provider == "anthropic" else 120
    assert (answer.usage.input_tokens, answer.usage.cache_read_tokens) == (expected_input, 40)
    assert answer.usage.output_tokens == 12
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (expected_input, 12)
    assert response.usage.input_tokens_details.cached_tokens == 40

    adapter, _, status, content_type, pieces = await call(
        http, upstream_url, provider, {**REQUEST, "stream": True}, {**KNOBS, "x-mock-chunks": "5"}
    )
    assert status == 200 and adapter.is_stream(status, content_type)
    events, parsed = streamed(adapter, pieces)
    final = replay(events)
    assert parsed.usage == answer.usage  # same tokens, same cost, streamed or not
    assert parsed.complete and parsed.error is None
    assert final.output_text == response.output_text
    assert final.usage == response.usage
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 5


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
async def test_a_reply_cut_by_max_output_tokens_is_incomplete(
    http: aiohttp.ClientSession, upstream_url: str, provider: str
) -> None:
    body = {**REQUEST, "max_output_tokens": 5}
    adapter, _, status, content_type, pieces = await call(http, upstream_url, provider, body)
    answer = adapter.answer(status, content_type, b"".join(pieces))
    assert answer.body is not None
    response = Response.model_validate(json.loads(answer.body))
    assert response.status == "incomplete"
    assert (
        response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    )
    adapter, _, status, content_type, pieces = await call(
        http, upstream_url, provider, {**body, "stream": True}
    )
    events, parsed = streamed(adapter, pieces)
    assert events[-1]["type"] == "response.incomplete"
    assert parsed.usage == answer.usage and parsed.usage is not None and parsed.usage.output_tokens == 5


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
async def test_errors_reach_the_client_in_openai_shape(
    http: aiohttp.ClientSession, upstream_url: str, provider: str
) -> None:
    adapter, _, status, content_type, pieces = await call(
        http, upstream_url, provider, REQUEST, {"x-mock-status": "429"}
    )
    assert status == 429
    body = b"".join(pieces)
    answer = adapter.answer(status, content_type, body)
    assert answer.usage is None and answer.bad_gateway is None
    sent = body if answer.body is None else answer.body
    error = json.loads(sent)["error"]
    assert error["type"] in ("requests", "rate_limit_error") and error["message"]
    out, _ = adapter.error_body(status, body)
    assert "error" in json.loads(out)


def test_anthropic_documentation_bytes_translate() -> None:
    adapter = ResponsesOverChat(AnthropicChat())
    raw = (FIXTURES / "anthropic_message.json").read_bytes()
    answer = adapter.answer(200, "application/json", raw)
    assert answer.usage == AnthropicChat().answer(200, "application/json", raw).usage
    assert answer.body is not None
    response = Response.model_validate(json.loads(answer.body))
    message = json.loads(raw)
    assert response.output_text == "".join(b["text"] for b in message["content"] if b["type"] == "text")
    assert response.model == message["model"]

    stream = (FIXTURES / "anthropic_stream.sse").read_bytes()
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(stream)), 30))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    events, parsed = streamed(adapter, pieces)
    final = replay(events)
    inner = AnthropicChat().stream(client_model="route-model", strip_usage_chunk=False)
    for piece in pieces:
        inner.feed(piece)
    inner.flush()
    assert parsed.usage == inner.finish().usage and parsed.usage is not None
    assert final.usage is not None and final.usage.output_tokens == parsed.usage.output_tokens
    assert final.output_text == "Hello!"


def test_check_refuses_what_chat_cannot_carry_and_what_the_inner_refuses() -> None:
    adapter = ResponsesOverChat(AnthropicChat())
    refused = adapter.check({**REQUEST, "tools": [{"type": "web_search"}]})
    assert isinstance(refused, Refused) and refused.param == "tools[0].type" and refused.status == 400
    untranslatable = adapter.check({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]})
    assert untranslatable is not None and untranslatable.param == "input[0].type"
    bad_image = {
        "model": "m",
        "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png,xyz"}]}],
    }
    inner_refusal = adapter.check(bad_image)
    assert inner_refusal is not None and "data URL" in inner_refusal.message
    assert ResponsesOverChat(OpenAICompatible()).check(bad_image) is None
    with pytest.raises(Refused) as raised:
        adapter.request(
            attempt(backend("anthropic", "https://api.anthropic.com"), {"model": "m", "input": 3})
        )
    assert raised.value.param == "input"


def test_a_success_that_is_not_a_chat_completion_is_a_bad_gateway() -> None:
    adapter = ResponsesOverChat(OpenAICompatible())
    wrong = adapter.answer(200, "application/json", b'{"object": "list", "data": []}')
    assert wrong.bad_gateway is not None and "not a chat completion" in wrong.bad_gateway.message
    assert wrong.body is None
    html = adapter.answer(200, "text/html", b"<html>oops</html>")
    assert html.bad_gateway is not None and "not JSON" in html.bad_gateway.message


def test_credential_headers_cover_every_inner() -> None:
    for inner in (OpenAICompatible(), AnthropicChat()):
        assert set(inner.credential_headers) <= set(ResponsesOverChat.credential_headers)


async def test_over_bedrock_converse_signed_json_and_stream(http: aiohttp.ClientSession) -> None:
    runner = await serve(
        MockSettings(port=0, aws_access_key_id="AKIDRESPONSES", aws_secret_access_key="s3cret")
    )
    url = base_url(runner)
    credential = json.dumps({"access_key_id": "AKIDRESPONSES", "secret_access_key": "s3cret"})
    back = Backend(
        name="br", provider="bedrock", model="amazon.nova-lite-v1:0", base_url=url, region="us-east-1"
    )
    adapter = ResponsesOverChat(ChatBedrock())
    results = []
    try:
        for stream in (False, True):
            body = {**REQUEST, "stream": stream}
            upstream = adapter.request(
                AttemptRequest(back, "/v1/responses", {}, body, None, credential, time.time(), stream)
            )
            headers = {"host": back.host, **upstream.set_headers, **KNOBS, "x-mock-chunks": "3"}
            async with http.post(
                URL(f"{url}{upstream.path}", encoded=True), data=upstream.body, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()
                results.append(
                    (resp.headers["content-type"], [piece async for piece in resp.content.iter_any()])
                )
    finally:
        await runner.cleanup()
    (json_type, json_pieces), (stream_type, stream_pieces) = results
    answer = adapter.answer(200, json_type, b"".join(json_pieces))
    assert answer.body is not None and answer.usage is not None
    response = Response.model_validate(json.loads(answer.body))
    assert answer.usage == ChatBedrock().answer(200, json_type, b"".join(json_pieces)).usage
    assert adapter.is_stream(200, stream_type) and adapter.stream_headers() == ChatBedrock().stream_headers()
    events, parsed = streamed(adapter, stream_pieces)
    final = replay(events)
    assert parsed.usage == answer.usage
    assert final.output_text == response.output_text and final.usage == response.usage
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 3
