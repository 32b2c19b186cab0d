"""A streamed call's cost, told at the end of the stream when the client opts in
(`x-tollway-stream-cost: comment`): an SSE comment line before the end marker, with the same exact
decimal as a JSON answer's `x-tollway-cost-usd`. The SDKs must parse the stream unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import anthropic
import openai
import pytest
from gateway_env import DEMO_KEY, Gateway

OPT_IN = {"x-tollway-stream-cost": "comment"}
MESSAGES = [{"role": "user", "content": "What does a toll road cost?"}]
# Deterministic mock usage, so a streamed and a plain call report the same tokens.
USAGE = {"x-mock-prompt-tokens": "1234", "x-mock-completion-tokens": "57", "x-mock-chunk-delay-ms": "2"}
COMMENT = ": x-tollway-cost-usd="


@pytest.fixture
def claude(gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=gateway.origin, api_key=DEMO_KEY, max_retries=0)
    yield client
    client.close()


def json_cost(sdk: openai.OpenAI, model: str) -> str:
    raw = sdk.chat.completions.with_raw_response.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers=USAGE,
    )
    return str(raw.headers["x-tollway-cost-usd"])


def streamed_lines(sdk: openai.OpenAI, model: str, headers: dict[str, str]) -> list[str]:
    """The raw SSE lines of a streamed call, read through the SDK (how a user gets at them)."""
    with sdk.chat.completions.with_streaming_response.create(
        model=model,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers={**USAGE, **headers},
    ) as response:
        return list(response.iter_lines())


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet"])  # OpenAI, and translated Anthropic
def test_the_comment_before_done_carries_the_json_cost(
    gateway: Gateway, sdk_for: Callable[..., openai.OpenAI], model: str
) -> None:
    sdk = sdk_for()
    expected = json_cost(sdk, model)
    spent_before = Decimal(gateway.spend()["keys"]["default/demo"]["spent_usd"])
    lines = [line for line in streamed_lines(sdk, model, OPT_IN) if line]
    assert lines[-1] == "data: [DONE]"
    assert lines[-2] == COMMENT + expected  # the same exact string as the JSON header
    assert sum(line.startswith(COMMENT) for line in lines) == 1
    spent_after = Decimal(gateway.spend()["keys"]["default/demo"]["spent_usd"])
    assert spent_after - spent_before == Decimal(expected) > 0


def test_without_the_opt_in_the_stream_has_no_comment(sdk_for: Callable[..., openai.OpenAI]) -> None:
    lines = streamed_lines(sdk_for(), "gpt-4o-mini", {})
    assert lines[-2:] == ["data: [DONE]", ""]
    assert not any(line.startswith(":") for line in lines)


def test_the_openai_sdk_parses_a_commented_stream_unchanged(sdk_for: Callable[..., openai.OpenAI]) -> None:
    sdk = sdk_for()

    def chunks(headers: dict[str, str]) -> list[tuple[str, str | None, object]]:
        with sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={**USAGE, **headers},
        ) as stream:
            return [
                (
                    "".join(choice.delta.content or "" for choice in chunk.choices),
                    chunk.choices[0].finish_reason if chunk.choices else None,
                    chunk.usage.model_dump() if chunk.usage else None,
                )
                for chunk in stream
            ]

    plain, commented = chunks({}), chunks(OPT_IN)
    assert commented == plain
    assert commented[-1][2] is not None  # the usage chunk is still the last one the SDK yields


def test_the_anthropic_sdk_parses_a_commented_stream_unchanged(
    claude: anthropic.Anthropic,
) -> None:
    def final(headers: dict[str, str]) -> tuple[str, int, int, str | None]:
        with claude.messages.stream(
            model="claude-sonnet",
            max_tokens=64,
            messages=[{"role": "user", "content": "Stream to me"}],
            extra_headers={**USAGE, **headers},
        ) as stream:
            text = "".join(stream.text_stream)
            message = stream.get_final_message()
        return text, message.usage.input_tokens, message.usage.output_tokens, message.stop_reason

    assert final(OPT_IN) == final({})
    plain = claude.messages.with_raw_response.create(
        model="claude-sonnet",
        max_tokens=64,
        messages=[{"role": "user", "content": "Stream to me"}],
        extra_headers=USAGE,
    )
    with claude.messages.with_streaming_response.create(
        model="claude-sonnet",
        max_tokens=64,
        messages=[{"role": "user", "content": "Stream to me"}],
        stream=True,
        extra_headers={**USAGE, **OPT_IN},
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    # The comment sits inside the message_stop event, just before its `event:` line.
    at = lines.index("event: message_stop")
    assert lines[at - 1] == COMMENT + plain.headers["x-tollway-cost-usd"]
