"""The mock provider's Bedrock endpoints, driven by the Bedrock adapter's own signed requests."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from tollway.mockprovider import MockSettings, base_url, serve
from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.adapters.base import AttemptRequest
from tollway_sidecar.providers.adapters.chat_bedrock import ChatBedrock
from tollway_sidecar.providers.usage import TokenUsage

ADAPTER = ChatBedrock()
KEY_ID, SECRET = "AKIDMOCK", "mock-secret-key"
CHAT: dict[str, Any] = {
    "model": "fast",
    "messages": [{"role": "user", "content": "Tell me about toll roads"}],
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mock_url() -> AsyncIterator[str]:
    runner = await serve(MockSettings(port=0, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET))
    try:
        yield base_url(runner)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def backend(url: str) -> Backend:
    return Backend(
        name="br", provider="bedrock", model="amazon.nova-lite-v1:0", base_url=url, region="us-east-1"
    )


async def send(
    http: aiohttp.ClientSession,
    url: str,
    *,
    stream: bool = False,
    secret: str = SECRET,
    knobs: dict[str, str] | None = None,
    tamper: bool = False,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One attempt as Envoy sends it: the adapter's path, headers and body; Host the backend's host."""
    b = backend(url)
    credential = json.dumps({"access_key_id": KEY_ID, "secret_access_key": secret})
    request = ADAPTER.request(
        AttemptRequest(b, "/v1/chat/completions", {}, body or CHAT, None, credential, time.time(), stream)
    )
    assert request.body is not None
    sent = request.body.replace(b"toll", b"tall") if tamper else request.body
    headers = {"host": b.host, **request.set_headers, **(knobs or {})}
    # encoded=True: the path is sent as signed (`%3A` in the model id), as Envoy forwards it.
    async with http.post(URL(f"{url}{request.path}", encoded=True), data=sent, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_converse_json_is_signed_checked_and_read(http: aiohttp.ClientSession, mock_url: str) -> None:
    status, headers, body = await send(
        http,
        mock_url,
        knobs={"x-mock-prompt-tokens": "40", "x-mock-completion-tokens": "7", "x-mock-cached-tokens": "5"},
    )
    assert status == 200, body
    answer = ADAPTER.answer(status, headers["Content-Type"], body)
    assert answer.usage == TokenUsage(input_tokens=45, output_tokens=7, cache_read_tokens=5)
    assert answer.text is not None and answer.text.startswith("This is a mock reply")


async def test_converse_stream_uses_real_event_stream_framing(
    http: aiohttp.ClientSession, mock_url: str
) -> None:
    status, headers, body = await send(
        http, mock_url, stream=True, knobs={"x-mock-completion-tokens": "6", "x-mock-chunks": "3"}
    )
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.amazon.eventstream"
    assert ADAPTER.is_stream(status, headers["Content-Type"])
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    out = b"".join(reader.feed(body[i : i + 7]) for i in range(0, len(body), 7))
    parsed = reader.finish()
    assert parsed.complete and parsed.error is None
    assert parsed.usage is not None and parsed.usage.output_tokens == 6
    assert parsed.output_chunks == 3
    assert out.endswith(b"data: [DONE]\n\n")


async def test_bad_frame_knob_breaks_the_stream(http: aiohttp.ClientSession, mock_url: str) -> None:
    status, _, body = await send(
        http, mock_url, stream=True, knobs={"x-mock-fail": "bad-frame", "x-mock-chunks": "4"}
    )
    assert status == 200
    reader = ADAPTER.stream(client_model="fast", strip_usage_chunk=False)
    out = reader.feed(body)
    parsed = reader.finish()
    assert parsed.error is not None and parsed.error.startswith("malformed event-stream frame")
    assert b'"code":"bad_gateway"' in out and b"[DONE]" not in out


@pytest.mark.parametrize(("secret", "tamper"), [("wrong-secret", False), (SECRET, True)])
async def test_a_wrong_signature_is_refused(
    http: aiohttp.ClientSession, mock_url: str, secret: str, tamper: bool
) -> None:
    status, headers, body = await send(http, mock_url, secret=secret, tamper=tamper)
    assert status == 403
    assert headers["x-amzn-ErrorType"].startswith("InvalidSignatureException:")
    assert "signature" in json.loads(body)["message"]


async def test_an_unsigned_request_is_refused(http: aiohttp.ClientSession, mock_url: str) -> None:
    async with http.post(f"{mock_url}/model/m/converse", json=CHAT) as resp:
        assert resp.status == 403
        assert resp.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException:")


@pytest.mark.parametrize(
    ("status", "kind"), [(429, "ThrottlingException"), (503, "ServiceUnavailableException")]
)
async def test_status_knob_answers_in_bedrocks_shape(
    http: aiohttp.ClientSession, mock_url: str, status: int, kind: str
) -> None:
    got, headers, body = await send(http, mock_url, knobs={"x-mock-status": str(status)})
    assert got == status
    assert headers["x-amzn-ErrorType"].startswith(kind + ":")
    error = json.loads(ADAPTER.answer(got, headers["Content-Type"], body).body or b"")["error"]
    assert error["code"] == kind and error["message"] == json.loads(body)["message"]
