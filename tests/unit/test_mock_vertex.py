"""The mock provider's Vertex endpoints: the token exchange, driven by google-auth through the
sidecar's credential source, and Gemini / Claude answers to the Vertex adapters' own requests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from vertex_keys import CLIENT_EMAIL, service_account

from tollway.mockprovider import MockSettings, base_url, serve
from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.adapters.base import AttemptRequest, UpstreamRequest
from tollway_sidecar.providers.adapters.registry import adapter_for
from tollway_sidecar.providers.google_auth import NotAServiceAccountKey, service_account_source

CHAT: dict[str, Any] = {
    "model": "fast",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about toll roads"},
    ],
    "max_tokens": 50,
}


class Mock:
    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mock() -> AsyncIterator[Mock]:
    # The key names the token endpoint; the mock needs the key's public half: make the key for a
    # port chosen first.
    from tollway.ports import free_port

    port = free_port()
    key, public = service_account(f"http://127.0.0.1:{port}/token")
    runner = await serve(
        MockSettings(
            port=port, vertex_public_key=public, vertex_client_email=CLIENT_EMAIL, completion_tokens=7
        )
    )
    try:
        yield Mock(base_url(runner), key)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def backend(mock: Mock, model: str = "gemini-2.5-flash") -> Backend:
    return Backend(
        name="vx",
        provider="vertex",
        model=model,
        base_url=mock.url,
        project="tollway-proj",
        region="us-central1",
        credential=mock.key,
        credential_source="google-service-account",
    )


async def access_token(mock: Mock) -> tuple[str, float]:
    return await asyncio.to_thread(service_account_source(backend(mock)))


async def send(
    http: aiohttp.ClientSession,
    mock: Mock,
    operation: str,
    body: dict[str, Any],
    *,
    token: str | None,
    model: str = "gemini-2.5-flash",
    stream: bool = False,
) -> tuple[int, str, bytes, UpstreamRequest]:
    b = backend(mock, model)
    adapter = adapter_for(operation, "vertex", model)
    assert adapter is not None
    upstream = adapter.request(
        AttemptRequest(b, "/v1/chat/completions", {}, body, None, token, time.time(), stream)
    )
    assert upstream.body is not None
    async with http.post(mock.url + upstream.path, data=upstream.body, headers=upstream.set_headers) as resp:
        return resp.status, resp.headers.get("content-type", ""), await resp.read(), upstream


async def test_google_auth_gets_a_token_for_the_signed_assertion(mock: Mock) -> None:
    token, expires_at = await access_token(mock)
    assert token.startswith("ya29.mock-")
    assert 3500 < expires_at - time.time() <= 3600


async def test_a_key_the_mock_does_not_know_is_refused(mock: Mock) -> None:
    stranger, _ = service_account(json.loads(mock.key)["token_uri"])  # same email, another key
    fetch = service_account_source(backend(mock).model_copy(update={"credential": stranger}))
    with pytest.raises(Exception, match="invalid_grant"):
        await asyncio.to_thread(fetch)


def test_a_credential_that_is_not_a_key_is_refused_without_quoting_it() -> None:
    b = Backend(name="vx", provider="vertex", model="m", base_url="http://x", credential="sk-not-json-secret")
    with pytest.raises(NotAServiceAccountKey) as info:
        service_account_source(b)
    assert "sk-not-json-secret" not in str(info.value)


async def test_gemini_json_answer_translates_with_usage(mock: Mock, http: aiohttp.ClientSession) -> None:
    token, _ = await access_token(mock)
    status, ctype, raw, upstream = await send(http, mock, "chat", CHAT, token=token)
    assert upstream.path == (
        "/v1/projects/tollway-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
    )
    assert status == 200, raw
    adapter = adapter_for("chat", "vertex", "gemini-2.5-flash")
    assert adapter is not None
    read = adapter.answer(status, ctype, raw)
    assert read.body is not None
    chat = json.loads(read.body)
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["content"].startswith("This is a mock reply")
    assert chat["choices"][0]["finish_reason"] == "stop"
    assert read.usage is not None and read.usage.output_tokens == 7 and read.usage.input_tokens > 0
    assert chat["usage"]["prompt_tokens"] == read.usage.input_tokens


async def test_gemini_stream_translates_to_chunks(mock: Mock, http: aiohttp.ClientSession) -> None:
    token, _ = await access_token(mock)
    status, ctype, raw, upstream = await send(http, mock, "chat", CHAT, token=token, stream=True)
    assert upstream.path.endswith(":streamGenerateContent?alt=sse")
    assert status == 200 and "text/event-stream" in ctype
    adapter = adapter_for("chat", "vertex", "gemini-2.5-flash")
    assert adapter is not None and adapter.is_stream(status, ctype)
    reader = adapter.stream(client_model="fast", strip_usage_chunk=False)
    out = reader.feed(raw) or b""
    out += reader.flush()
    parsed = reader.finish()
    assert parsed.complete and parsed.error is None
    assert parsed.usage is not None and parsed.usage.output_tokens == 7
    events = [line[6:] for line in out.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("This is a mock reply")
    assert chunks[-1]["usage"]["completion_tokens"] == 7 and chunks[-1]["model"] == "fast"


@pytest.mark.parametrize("token", [None, "ya29.forged"])
async def test_model_endpoints_require_an_issued_token(
    mock: Mock, http: aiohttp.ClientSession, token: str | None
) -> None:
    status, _, raw, _ = await send(http, mock, "chat", CHAT, token=token)
    assert status == 401
    assert json.loads(raw)["error"]["status"] == "UNAUTHENTICATED"


async def test_expired_tokens_are_refused(http: aiohttp.ClientSession) -> None:
    from tollway.ports import free_port

    port = free_port()
    key, public = service_account(f"http://127.0.0.1:{port}/token")
    runner = await serve(MockSettings(port=port, vertex_public_key=public, vertex_token_lifetime_s=1))
    try:
        m = Mock(base_url(runner), key)
        token, expires_at = await access_token(m)
        assert expires_at - time.time() <= 1
        await asyncio.sleep(1.2)
        status, _, _, _ = await send(http, m, "chat", CHAT, token=token)
        assert status == 401
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("stream", [False, True])
async def test_claude_on_vertex_chat_and_messages(
    mock: Mock, http: aiohttp.ClientSession, stream: bool
) -> None:
    token, _ = await access_token(mock)
    model = "claude-haiku-4-5@20251001"
    body = {**CHAT, "stream": True} if stream else CHAT
    status, ctype, raw, upstream = await send(
        http, mock, "chat", body, token=token, model=model, stream=stream
    )
    method = "streamRawPredict" if stream else "rawPredict"
    assert upstream.path.endswith(f"/publishers/anthropic/models/{model}:{method}")
    sent = json.loads(upstream.body or b"")
    assert "model" not in sent and sent["anthropic_version"] == "vertex-2023-10-16"
    assert status == 200, raw
    adapter = adapter_for("chat", "vertex", model)
    assert adapter is not None
    if stream:
        reader = adapter.stream(client_model="fast", strip_usage_chunk=False)
        out = (reader.feed(raw) or b"") + reader.flush()
        usage = reader.finish().usage
        assert usage is not None and usage.output_tokens == 7 and usage.input_tokens > 0
        assert b"chat.completion.chunk" in out and out.rstrip().endswith(b"[DONE]")
    else:
        read = adapter.answer(status, ctype, raw)
        assert read.body is not None and json.loads(read.body)["object"] == "chat.completion"
        assert read.usage is not None and read.usage.output_tokens == 7

    messages = {"model": "fast", "max_tokens": 30, "messages": [{"role": "user", "content": "Hi"}]}
    if stream:
        messages["stream"] = True
    status, _, raw, _ = await send(http, mock, "messages", messages, token=token, model=model, stream=stream)
    assert status == 200, raw
    assert (b"message_stop" in raw) if stream else (json.loads(raw)["type"] == "message")


async def test_claude_on_vertex_refuses_a_body_with_a_model(mock: Mock, http: aiohttp.ClientSession) -> None:
    token, _ = await access_token(mock)
    url = (
        mock.url + "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-haiku-4-5:rawPredict"
    )
    body = {
        "model": "x",
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    async with http.post(url, json=body, headers={"authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 400
        assert "model" in (await resp.json())["error"]["message"]
