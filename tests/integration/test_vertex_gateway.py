"""Google Vertex AI through the real Envoy: the openai SDK's JSON and streamed calls to Gemini,
priced by genai-prices' Google entries; the anthropic SDK to Claude on Vertex and to Gemini
(translated); and access tokens
(from a service-account key, at the mock's /token) that expire during the run and are refreshed
without a call failing."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

import anthropic
import openai
import pytest
from gateway_env import DEMO_KEY, Gateway
from genai_prices import Usage, calc_price


def google_cost(model: str, prompt: int, completion: int) -> Decimal:
    usage = Usage(input_tokens=prompt, output_tokens=completion)
    return Decimal(calc_price(usage, model, provider_id="google").total_price)


def test_openai_sdk_json_call_to_gemini_is_translated_and_priced(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    raw = sdk_for().chat.completions.with_raw_response.create(
        model="vertex-gemini", messages=[{"role": "user", "content": "Hello, Gemini"}], max_tokens=32
    )
    chat = raw.parse()
    assert chat.object == "chat.completion" and chat.choices[0].message.content
    assert "Hello, Gemini" in chat.choices[0].message.content
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None and chat.usage.prompt_tokens > 0
    assert raw.headers["x-tollway-backend"] == "vertex-gemini"
    cost = Decimal(raw.headers["x-tollway-cost-usd"])
    assert cost == google_cost("gemini-2.5-flash", chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert cost > 0
    (upstream,) = gateway.requests_at("VERTEX")
    assert upstream["path"] == (
        "/v1/projects/tollway-test/locations/us-central1/publishers/google/models/"
        "gemini-2.5-flash:generateContent"
    )
    assert upstream["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert upstream["body"]["contents"] == [{"role": "user", "parts": [{"text": "Hello, Gemini"}]}]


def test_openai_sdk_stream_from_gemini_costs_what_the_json_call_costs(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    messages = [{"role": "user", "content": "Stream me, Gemini"}]
    json_raw = sdk_for().chat.completions.with_raw_response.create(model="vertex-gemini", messages=messages)
    with sdk_for().chat.completions.with_streaming_response.create(
        model="vertex-gemini", messages=messages, stream=True, stream_options={"include_usage": True}
    ) as response:
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == json_raw.parse().choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert google_cost("gemini-2.5-flash", usage.prompt_tokens, usage.completion_tokens) == Decimal(
        json_raw.headers["x-tollway-cost-usd"]
    )


def test_a_field_gemini_cannot_express_is_refused_naming_it(sdk_for: Callable[..., openai.OpenAI]) -> None:
    with pytest.raises(openai.BadRequestError, match="logit_bias") as info:
        sdk_for().chat.completions.create(
            model="vertex-gemini", messages=[{"role": "user", "content": "Hi"}], logit_bias={"1": 5}
        )
    assert info.value.status_code == 400


def test_anthropic_sdk_to_claude_on_vertex_json_and_stream(gateway: Gateway) -> None:
    gateway.clear_mock_requests()
    claude = anthropic.Anthropic(base_url=gateway.origin, api_key=DEMO_KEY, max_retries=0)
    prompt: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hello, Claude on Vertex"}]
    try:
        raw = claude.messages.with_raw_response.create(model="vertex-claude", max_tokens=64, messages=prompt)
        message = raw.parse()
        assert message.type == "message" and message.content[0].type == "text"
        assert "Hello, Claude on Vertex" in message.content[0].text
        cost = Decimal(raw.headers["x-tollway-cost-usd"])
        assert cost == google_cost(
            "claude-haiku-4-5@20251001", message.usage.input_tokens, message.usage.output_tokens
        )
        (upstream,) = gateway.requests_at("VERTEX")
        assert upstream["path"].endswith("/publishers/anthropic/models/claude-haiku-4-5@20251001:rawPredict")
        assert (
            upstream["body"]["anthropic_version"] == "vertex-2023-10-16" and "model" not in upstream["body"]
        )
        with claude.messages.stream(model="vertex-claude", max_tokens=64, messages=prompt) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == message.content[0].text
        assert final.usage.output_tokens == message.usage.output_tokens
    finally:
        claude.close()


def test_anthropic_sdk_to_gemini_is_translated_json_and_stream(gateway: Gateway) -> None:
    claude = anthropic.Anthropic(base_url=gateway.origin, api_key=DEMO_KEY, max_retries=0)
    prompt: list[anthropic.types.MessageParam] = [
        {"role": "user", "content": "Hello, Gemini from Claude's SDK"}
    ]
    try:
        raw = claude.messages.with_raw_response.create(model="vertex-gemini", max_tokens=64, messages=prompt)
        message = raw.parse()
        assert message.type == "message" and message.content[0].type == "text"
        assert "Hello, Gemini from Claude's SDK" in message.content[0].text
        assert message.stop_reason == "end_turn"
        cost = Decimal(raw.headers["x-tollway-cost-usd"])
        assert cost == google_cost(
            "gemini-2.5-flash", message.usage.input_tokens, message.usage.output_tokens
        )
        with claude.messages.stream(model="vertex-gemini", max_tokens=64, messages=prompt) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == message.content[0].text
        assert (final.usage.input_tokens, final.usage.output_tokens) == (
            message.usage.input_tokens,
            message.usage.output_tokens,
        )
    finally:
        claude.close()


def test_tokens_expiring_during_the_run_are_refreshed_without_failing_a_call(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    # The mock's tokens live 6 s; the sidecar refreshes halfway. Calls across two lifetimes all pass,
    # and the later ones carry a token the first did not.
    gateway.clear_mock_requests()
    client = sdk_for()
    for _ in range(5):
        chat = client.chat.completions.create(
            model="vertex-gemini", messages=[{"role": "user", "content": "Still there?"}], max_tokens=8
        )
        assert chat.choices[0].message.content
        time.sleep(3)
    tokens = [r["headers"]["authorization"] for r in gateway.requests_at("VERTEX")]
    assert len(tokens) == 5
    assert len(set(tokens)) >= 2, "the token was never refreshed"


def test_responses_api_on_gemini_is_translated_through_chat(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    raw = sdk_for().responses.with_raw_response.create(model="vertex-gemini", input="Hello, Responses")
    response = raw.parse()
    assert response.status == "completed" and "Hello, Responses" in response.output_text
    assert response.usage is not None
    assert Decimal(raw.headers["x-tollway-cost-usd"]) == google_cost(
        "gemini-2.5-flash", response.usage.input_tokens, response.usage.output_tokens
    )
