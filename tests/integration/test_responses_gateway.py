"""The Responses API through the real Envoy: the openai SDK's `responses.create`, JSON and streamed,
passed through to OpenAI (and Azure's v1 API), priced from its usage, the same cost either way, and a
fallback from a failing backend; a route without a Responses backend refuses it naming the backends."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import openai
import pytest
from gateway_env import Gateway
from genai_prices import Usage, calc_price


def mini_cost(prompt: int, completion: int, cached: int = 0) -> Decimal:
    usage = Usage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=cached)
    return Decimal(calc_price(usage, "gpt-4o-mini", provider_id="openai").total_price)


def test_json_call_is_passed_through_and_priced(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    raw = sdk_for().responses.with_raw_response.create(
        model="responses-mini", input="Hello, Responses", instructions="Be brief.", max_output_tokens=64
    )
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert "Hello, Responses" in response.output_text
    assert response.usage is not None and response.usage.input_tokens > 0
    assert raw.headers["x-tollway-backend"] == "openai"
    cached = response.usage.input_tokens_details.cached_tokens
    assert Decimal(raw.headers["x-tollway-cost-usd"]) == mini_cost(
        response.usage.input_tokens, response.usage.output_tokens, cached
    )
    (upstream,) = gateway.requests_at("SECOND")
    assert upstream["path"] == "/v1/responses"


def test_stream_costs_what_the_json_call_costs(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    json_raw = sdk_for().responses.with_raw_response.create(model="responses-mini", input="Stream me")
    with sdk_for().responses.stream(model="responses-mini", input="Stream me") as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == json_raw.parse().output_text == final.output_text
    assert final.usage is not None
    usage = final.usage
    cost = mini_cost(usage.input_tokens, usage.output_tokens, usage.input_tokens_details.cached_tokens)
    assert cost == Decimal(json_raw.headers["x-tollway-cost-usd"])


def test_a_failing_backend_falls_back(gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]) -> None:
    gateway.clear_mock_requests()
    raw = sdk_for().responses.with_raw_response.create(model="responses-fallback", input="Fall back")
    assert raw.parse().status == "completed"
    assert raw.headers["x-tollway-backend"] == "openai"
    assert len(gateway.requests_at("BROKEN")) >= 1 and len(gateway.requests_at("SECOND")) == 1


def test_a_chat_only_backend_is_translated_and_costs_what_chat_costs(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    raw = sdk_for().responses.with_raw_response.create(model="gpt-4o-mini", input="Translate me")
    response = raw.parse()
    assert response.object == "response" and "Translate me" in response.output_text
    (upstream,) = gateway.requests_at("MOCK")
    assert upstream["path"] == "/v1/chat/completions"
    chat = sdk_for().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Translate me"}]
    )
    assert raw.headers["x-tollway-cost-usd"] == chat.headers["x-tollway-cost-usd"]
    with sdk_for().responses.stream(model="gpt-4o-mini", input="Translate me") as stream:
        final = stream.get_final_response()
    assert final.output_text == response.output_text and final.usage == response.usage


def test_an_anthropic_backend_streams_responses_events(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    with sdk_for().responses.stream(
        model="claude-sonnet", input="Hello, Claude", max_output_tokens=64
    ) as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text and text == final.output_text
    assert final.usage is not None and final.usage.output_tokens > 0


def test_a_field_translation_cannot_express_is_refused_naming_it(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_for().responses.create(model="gpt-4o-mini", input="hi", previous_response_id="resp_123")
    body = caught.value.body
    assert isinstance(body, dict) and body.get("param") == "previous_response_id"


def test_bad_input_names_the_field(gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk_for().responses.create(model="responses-mini", input="hi", max_output_tokens=0)
    body = caught.value.body
    assert isinstance(body, dict) and body.get("param") == "max_output_tokens"


def test_azure_is_called_on_its_v1_api_with_the_deployment_as_model(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    response = sdk_for().responses.create(model="azure-gpt", input="Hello, Azure")
    assert response.status == "completed" and "Hello, Azure" in response.output_text
    (upstream,) = gateway.requests_at("SECOND")
    assert upstream["path"] == "/openai/v1/responses"
    assert upstream["body"]["model"] == "my-deployment"
    assert upstream["headers"]["api-key"] and "authorization" not in upstream["headers"]
