"""Each adapter's answers (whole bodies, streams, errors) and the registry's coverage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest

from tollway_sidecar.config.models import Provider
from tollway_sidecar.providers.adapters.registry import ADAPTERS, CREDENTIAL_HEADERS, adapter_for
from tollway_sidecar.providers.usage import TokenUsage

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "responses"

# The client APIs each provider serves; a provider added to the `Provider` literal fails here until
# its adapters are registered.
SERVES = {
    "openai": ("chat", "embeddings", "responses"),
    "openai-compatible": ("chat", "embeddings", "responses"),
    "gemini": ("chat", "embeddings", "responses"),
    "azure-openai": ("chat", "embeddings", "responses"),
    "anthropic": ("chat", "messages", "responses"),
    "bedrock": ("chat", "messages", "responses"),
    "vertex": ("chat", "messages", "responses"),  # Gemini; claude-* models below
}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_every_provider_has_an_adapter_for_each_api_it_serves() -> None:
    assert set(SERVES) == set(get_args(Provider))
    for provider, operations in SERVES.items():
        for operation in operations:
            assert adapter_for(operation, provider) is not None, (operation, provider)
    assert adapter_for("embeddings", "anthropic") is None and adapter_for("messages", "openai") is None
    # Vertex: the adapter follows the backend's model's publisher (Claude or Gemini).
    claude, gemini = "claude-haiku-4-5@20251001", "gemini-2.5-flash"
    for operation in ("chat", "messages", "responses"):
        assert adapter_for(operation, "vertex", claude) is not None, operation
        assert adapter_for(operation, "vertex", claude) is not adapter_for(operation, "vertex", gemini)
    assert set(CREDENTIAL_HEADERS) == {h for a in ADAPTERS.values() for h in a.credential_headers}


def test_openai_answer_is_read_once_and_passed_on() -> None:
    adapter = adapter_for("chat", "openai")
    assert adapter is not None
    read = adapter.answer(200, "application/json", fixture("openai_chat_completion.json"))
    assert read.body is None and read.bad_gateway is None
    assert read.usage is not None and read.usage.input_tokens > 0
    assert read.model and read.finish_reasons
    assert read.text == json.loads(fixture("openai_chat_completion.json"))["choices"][0]["message"]["content"]


def test_a_success_that_is_not_json_is_a_bad_gateway_in_every_adapter() -> None:
    for (operation, provider), adapter in ADAPTERS.items():
        read = adapter.answer(200, "text/html", b"<html>oops</html>")
        assert read.bad_gateway is not None, (operation, provider)
        assert "answered 200 with a body that is not JSON" in read.bad_gateway.message
        assert read.usage is None
        # An error that is not JSON is passed on (errors are the backend's to word).
        assert adapter.answer(503, "text/plain", b"down").bad_gateway is None


def test_anthropic_chat_answer_is_translated_with_the_anthropic_usage() -> None:
    adapter = adapter_for("chat", "anthropic")
    assert adapter is not None
    read = adapter.answer(200, "application/json", fixture("anthropic_message.json"))
    assert read.body is not None and read.content_type == "application/json"
    chat = json.loads(read.body)
    assert chat["object"] == "chat.completion"
    assert read.usage is not None and read.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert read.text == chat["choices"][0]["message"]["content"]
    wrong = adapter.answer(200, "application/json", b'{"type": "not-a-message"}')
    assert wrong.bad_gateway is not None and "not an Anthropic message" in wrong.bad_gateway.message


def test_anthropic_errors_reach_openai_clients_in_openai_shape_and_messages_clients_as_they_are() -> None:
    error = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    chat, messages = adapter_for("chat", "anthropic"), adapter_for("messages", "anthropic")
    assert chat is not None and messages is not None
    body, content_type = chat.error_body(429, error)
    assert json.loads(body)["error"] == {
        "message": "slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_error",
    }
    assert content_type == "application/json"
    assert messages.error_body(429, error) == (error, "")
    translated = chat.answer(429, "application/json", error)
    assert translated.body == body


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_anthropic_chat_stream_is_translated_and_priced_on_anthropic_usage(size: int) -> None:
    adapter = adapter_for("chat", "anthropic")
    assert adapter is not None
    raw = fixture("anthropic_stream.sse")
    reader = adapter.stream(client_model="client-model", strip_usage_chunk=False)
    out = b"".join(reader.feed(raw[i : i + size]) or b"" for i in range(0, len(raw), size)) + reader.flush()
    assert reader.complete
    assert b'"object":"chat.completion.chunk"' in out and out.endswith(b"data: [DONE]\n\n")
    parsed = reader.finish()
    assert isinstance(parsed.usage, TokenUsage) and parsed.complete


def test_openai_stream_strips_the_usage_chunk_it_asked_for() -> None:
    adapter = adapter_for("chat", "openai")
    assert adapter is not None
    raw = fixture("openai_chat_stream.sse")
    reader = adapter.stream(client_model="m", strip_usage_chunk=True)
    out = reader.feed(raw)
    out = (raw if out is None else out) + reader.flush()
    assert b'"choices":[]' not in out.replace(b" ", b"")
    assert reader.finish().usage is not None
