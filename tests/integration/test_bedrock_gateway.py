"""Bedrock's Converse API through the real Envoy: the openai SDK's JSON and streamed calls, SigV4
signed (the mock verifies every signature), priced by genai-prices' AWS entries, and a fallback from
a failing Bedrock backend to an OpenAI one in the client's format, and a stream with a corrupt
frame cut with an error naming the backend and charged what reached the client."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import anthropic
import openai
import pytest
from gateway_env import DEMO_KEY, Gateway
from genai_prices import Usage, calc_price


def nova_cost(prompt: int, completion: int) -> Decimal:
    usage = Usage(input_tokens=prompt, output_tokens=completion)
    return Decimal(calc_price(usage, "amazon.nova-lite-v1:0", provider_id="aws").total_price)


def test_openai_sdk_json_call_to_bedrock_is_signed_translated_and_priced(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    gateway.clear_mock_requests()
    raw = sdk_for().chat.completions.with_raw_response.create(
        model="nova-lite", messages=[{"role": "user", "content": "Hello, Bedrock"}], max_tokens=32
    )
    chat = raw.parse()
    assert chat.object == "chat.completion" and chat.choices[0].message.content
    assert "Hello, Bedrock" in chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.prompt_tokens > 0
    assert raw.headers["x-tollway-backend"] == "bedrock"
    cost = Decimal(raw.headers["x-tollway-cost-usd"])
    assert cost == nova_cost(chat.usage.prompt_tokens, chat.usage.completion_tokens)
    (upstream,) = gateway.requests_at("BEDROCK")
    assert upstream["path"].endswith("/model/amazon.nova-lite-v1:0/converse")
    assert upstream["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTOLLWAYTEST/")


def test_openai_sdk_stream_from_bedrock_costs_what_the_json_call_costs(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    messages = [{"role": "user", "content": "Stream me, Bedrock"}]
    json_raw = sdk_for().chat.completions.with_raw_response.create(model="nova-lite", messages=messages)
    with sdk_for().chat.completions.with_streaming_response.create(
        model="nova-lite", messages=messages, stream=True, stream_options={"include_usage": True}
    ) as response:
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == json_raw.parse().choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert nova_cost(usage.prompt_tokens, usage.completion_tokens) == Decimal(
        json_raw.headers["x-tollway-cost-usd"]
    )


def test_a_failing_bedrock_backend_falls_back_to_openai(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    raw = sdk_for().chat.completions.with_raw_response.create(
        model="nova-then-openai", messages=[{"role": "user", "content": "Fall back"}]
    )
    assert raw.parse().object == "chat.completion"
    assert raw.headers["x-tollway-backend"] == "openai-up"
    assert raw.headers["x-tollway-attempts"] == "2"


CLAUDE_PROMPT: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hello from Claude's SDK"}]


def test_anthropic_sdk_messages_to_bedrock_json_and_stream(gateway: Gateway) -> None:
    claude = anthropic.Anthropic(base_url=gateway.origin, api_key=DEMO_KEY, max_retries=0)
    try:
        raw = claude.messages.with_raw_response.create(
            model="nova-lite",
            max_tokens=64,
            messages=CLAUDE_PROMPT,
        )
        message = raw.parse()
        assert message.type == "message" and message.content[0].type == "text"
        assert "Hello from Claude's SDK" in message.content[0].text
        cost = Decimal(raw.headers["x-tollway-cost-usd"])
        assert cost == nova_cost(message.usage.input_tokens, message.usage.output_tokens)
        with claude.messages.stream(
            model="nova-lite",
            max_tokens=64,
            messages=CLAUDE_PROMPT,
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == message.content[0].text
        assert (final.usage.input_tokens, final.usage.output_tokens) == (
            message.usage.input_tokens,
            message.usage.output_tokens,
        )
    finally:
        claude.close()


def test_a_malformed_event_stream_frame_ends_the_stream_naming_the_backend_and_is_charged(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI]
) -> None:
    before = gateway.spend()["keys"]["default/demo"]
    received: list[str] = []

    def read_stream() -> None:
        with sdk_for().chat.completions.with_streaming_response.create(
            model="nova-lite",
            messages=[{"role": "user", "content": "Break a frame, Bedrock"}],
            stream=True,
            extra_headers={"x-mock-fail": "bad-frame", "x-mock-chunks": "4"},
        ) as response:
            for chunk in response.parse():
                received.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIError) as failed:  # the SDK raises on the stream's error event
        read_stream()
    assert "Bedrock backend sent a malformed event-stream frame" in str(failed.value)
    assert received and "".join(received).startswith("This is a mock reply")
    after = gateway.spend()["keys"]["default/demo"]
    charged = {
        name: after[name] - before[name]
        for name in ("requests", "input_tokens", "output_tokens", "unpriced_requests")
    }
    # What was received: the estimated prompt and one token per content chunk that reached the client.
    content_chunks = sum(1 for text in received if text)
    assert charged == {
        "requests": 1,
        "input_tokens": charged["input_tokens"],
        "output_tokens": content_chunks,
        "unpriced_requests": 1,
    }
    assert charged["input_tokens"] > 0
    spent = Decimal(after["spent_usd"]) - Decimal(before["spent_usd"])
    assert spent == nova_cost(charged["input_tokens"], content_chunks) > 0
