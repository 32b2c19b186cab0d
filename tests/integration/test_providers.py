"""Provider translation through the real Envoy: Anthropic (native /v1/messages with the anthropic SDK,
and OpenAI clients on anthropic backends), Azure OpenAI, Gemini, and fallbacks across providers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import anthropic
import openai
import pytest
from gateway_env import DEMO_KEY, Gateway
from genai_prices import Usage, calc_price

UPSTREAM_KEY = "sk-upstream-test-credential"


@pytest.fixture
def claude(gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=gateway.origin, api_key=DEMO_KEY, max_retries=0)
    yield client
    client.close()


def anthropic_cost(uncached: int, read: int, write: int, output: int) -> Decimal:
    usage = Usage(
        input_tokens=uncached + read + write,
        cache_read_tokens=read,
        cache_write_tokens=write,
        output_tokens=output,
    )
    return Decimal(calc_price(usage, "claude-sonnet-4-5", provider_id="anthropic").total_price)


CACHE_HEADERS = {
    "x-mock-prompt-tokens": "30",
    "x-mock-cached-tokens": "1000",
    "x-mock-cache-creation-tokens": "200",
}


# --- native /v1/messages ------------------------------------------------------------------------------


def test_anthropic_sdk_messages_pass_through_with_cache_tokens_priced(
    gateway: Gateway, claude: anthropic.Anthropic
) -> None:
    gateway.clear_mock_requests()
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello, Claude"}],
        extra_headers=CACHE_HEADERS,
    )
    message = raw.parse()
    assert message.type == "message" and message.content[0].type == "text"
    assert message.content[0].text.startswith("This is a mock reply to: Hello, Claude")
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (30, 1000)
    assert message.usage.cache_creation_input_tokens == 200
    cost = anthropic_cost(30, 1000, 200, message.usage.output_tokens)
    assert Decimal(raw.headers["x-tollway-cost-usd"]) == cost
    assert raw.headers["x-tollway-backend"] == "anthropic"
    upstream = gateway.requests_at("MOCK")[-1]
    assert upstream["path"] == "/v1/messages"
    assert upstream["headers"]["x-api-key"] == UPSTREAM_KEY  # the virtual key never leaves
    # The client's own API version goes through (a translated OpenAI call gets 2023-06-01).
    assert upstream["headers"]["anthropic-version"] == raw.http_response.request.headers["anthropic-version"]
    assert "authorization" not in upstream["headers"]
    assert upstream["body"]["system"] == "Be brief."  # untranslated


def test_anthropic_sdk_streaming(gateway: Gateway, claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-sonnet",
        max_tokens=64,
        messages=[{"role": "user", "content": "Stream to me"}],
        extra_headers=CACHE_HEADERS,
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("This is a mock reply to: Stream to me")
    assert final.usage.cache_read_input_tokens == 1000
    assert final.stop_reason == "end_turn"


def test_anthropic_sdk_on_an_openai_route_is_refused_in_anthropics_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "non-Anthropic backends" in caught.value.message


def test_anthropic_sdk_with_a_bad_key_gets_an_authentication_error(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.origin, api_key="tw-nope", max_retries=0)
    with client, pytest.raises(anthropic.AuthenticationError) as caught:
        client.messages.create(
            model="claude-sonnet", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


# --- OpenAI clients on anthropic backends -------------------------------------------------------------


def test_openai_sdk_on_an_anthropic_backend(gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]) -> None:
    gateway.clear_mock_requests()
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    raw = sdk_for().chat.completions.with_raw_response.create(
        model="claude-sonnet",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": "Second question"},
        ],
        max_tokens=50,
        stop=["END"],
        temperature=0.2,
        tools=[tool],  # type: ignore[list-item]
        extra_headers=CACHE_HEADERS,
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content.startswith("This is a mock reply to: Second question")  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == 30 + 1000 + 200
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 1000
    assert Decimal(raw.headers["x-tollway-cost-usd"]) == anthropic_cost(
        30, 1000, 200, usage.completion_tokens
    )
    upstream = gateway.requests_at("MOCK")[-1]
    assert upstream["path"] == "/v1/messages"
    assert upstream["body"]["system"] == [{"type": "text", "text": "Be brief."}]
    assert [m["role"] for m in upstream["body"]["messages"]] == ["user", "assistant", "user"]
    assert upstream["body"]["max_tokens"] == 50
    assert upstream["body"]["stop_sequences"] == ["END"]
    assert upstream["body"]["tools"] == [
        {
            "name": "get_weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert upstream["headers"]["x-api-key"] == UPSTREAM_KEY
    assert upstream["headers"]["anthropic-version"] == "2023-06-01"


def test_openai_sdk_streaming_from_an_anthropic_backend(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    sdk = sdk_for()
    messages = [{"role": "user", "content": "Tell me a story"}]
    plain = sdk.chat.completions.create(model="claude-sonnet", messages=messages)  # type: ignore[arg-type]
    chunks = list(
        sdk.chat.completions.create(
            model="claude-sonnet",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    )  # type: ignore[union-attr]
    hidden = list(sdk.chat.completions.create(model="claude-sonnet", messages=messages, stream=True))  # type: ignore[arg-type]
    assert all(c.usage is None for c in hidden)


def test_provider_errors_from_anthropic_reach_openai_clients_in_openai_shape(
    sdk_for: Callable[..., openai.OpenAI],
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk_for().chat.completions.create(
            model="claude-sonnet",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-status": "401"},
        )
    assert caught.value.code == "authentication_error"


def test_garbage_from_an_anthropic_backend_is_a_502(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        sdk_for().chat.completions.create(
            model="claude-sonnet",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-fail": "garbage"},
        )
    assert caught.value.status_code == 502
    assert "'anthropic'" in caught.value.message


# --- across providers ---------------------------------------------------------------------------------


def test_anthropic_429_falls_back_to_openai(gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]) -> None:
    raw = sdk_for().chat.completions.with_raw_response.create(
        model="cross-anthropic-first", messages=[{"role": "user", "content": "hi"}]
    )
    assert (raw.headers["x-tollway-backend"], raw.headers["x-tollway-attempts"]) == ("openai-second", "2")
    assert raw.parse().object == "chat.completion"


def test_openai_429_falls_back_to_anthropic_without_the_first_attempts_headers(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    raw = sdk_for().chat.completions.with_raw_response.create(
        model="cross-openai-first", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert (raw.headers["x-tollway-backend"], raw.headers["x-tollway-attempts"]) == ("claude-second", "2")
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text.startswith("This is a mock reply to: hi")
    first = gateway.requests_at("LIMITED")[-1]
    assert first["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    second = gateway.requests_at("SECOND")[-1]
    assert second["path"] == "/v1/messages"
    assert second["headers"]["x-api-key"] == "sk-other-provider-key"
    assert "authorization" not in second["headers"]  # attempt 1's credential did not leak
    assert second["body"]["model"] == "claude-haiku-4-5" and second["body"]["stream"] is True


def test_azure_openai_deployment_url_api_version_and_api_key(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    completion = sdk_for().chat.completions.create(
        model="azure-gpt", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content
    upstream = gateway.requests_at("SECOND")[-1]
    assert upstream["path"] == "/openai/deployments/my-deployment/chat/completions"
    assert upstream["query"] == {"api-version": "2024-10-21"}
    assert upstream["headers"]["api-key"] == UPSTREAM_KEY
    assert "authorization" not in upstream["headers"]


def test_gemini_through_its_openai_endpoint_is_priced_by_the_google_catalogue(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    raw = sdk_for().chat.completions.with_raw_response.create(
        model="gemini-flash",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={
            "x-mock-prompt-tokens": "100",
            "x-mock-completion-tokens": "50",
            "x-mock-reasoning-tokens": "20",
        },
    )
    usage = Usage(input_tokens=100, output_tokens=50)
    expected = Decimal(calc_price(usage, "gemini-2.5-flash", provider_id="google").total_price)
    assert Decimal(raw.headers["x-tollway-cost-usd"]) == expected
    upstream = gateway.requests_at("SECOND")[-1]
    assert upstream["path"] == "/chat/completions"
    assert upstream["body"]["model"] == "gemini-2.5-flash"
    assert upstream["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
