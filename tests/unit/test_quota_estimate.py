"""The worst-case estimate: offline tokenizers, prompt counting, the output cap, the worst backend."""

from __future__ import annotations

import gzip
from decimal import Decimal
from pathlib import Path

import pytest

from tollway_sidecar.config.models import Backend, GatewayConfig, Pricing, Route
from tollway_sidecar.pricing import PriceBook
from tollway_sidecar.quota import tokens
from tollway_sidecar.quota.estimate import MEDIA_PART_TOKENS, estimate_call, output_cap, prompt_tokens
from tollway_sidecar.quota.tokens import TokenCounter, counter_for_model, encoding_for_model


def test_openai_models_are_counted_exactly_with_their_own_encoding() -> None:
    assert encoding_for_model("gpt-4o-mini") == "o200k_base"
    assert encoding_for_model("gpt-4.1-nano") == "o200k_base"
    assert encoding_for_model("text-embedding-3-small") == "cl100k_base"
    assert encoding_for_model("claude-sonnet-4") is None
    # Token ids as tiktoken documents them for these encodings.
    assert counter_for_model("gpt-4o-mini").count("Say hello to the gateway") == 5
    assert counter_for_model("gpt-4").count("tiktoken is great!") == 6
    assert counter_for_model("gpt-4o").count("") == 0


def test_unknown_models_are_estimated_high() -> None:
    exact = TokenCounter("o200k_base").count("Say hello to the gateway")
    assert exact == 5
    assert counter_for_model("llama-3.1-8b").count("Say hello to the gateway") == 8  # ceil(5 x 1.5)


def test_a_tampered_encoding_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cl100k_base.tiktoken.gz").write_bytes(gzip.compress(b"IQ== 0\n"))
    monkeypatch.setattr(tokens.resources, "files", lambda _package: tmp_path)
    with pytest.raises(RuntimeError, match="SHA-256"):
        tokens._OfflineRanks("cl100k_base")("https://example.invalid", expected_hash="0" * 64)


def test_chat_prompt_counts_every_message_string_and_tools() -> None:
    counter = counter_for_model("gpt-4o-mini")
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    assert prompt_tokens("chat", plain, counter) == 3 + 4 + 1 + 1
    two = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}],
            },
        ]
    }
    # system: "system" 1 + "Be brief." 3; user: "user" 1 + "text" 1 + "hi" 1 + one image allowance.
    assert prompt_tokens("chat", two, counter) == 3 + 4 + 4 + 4 + 3 + MEDIA_PART_TOKENS
    with_tools = {**plain, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert prompt_tokens("chat", with_tools, counter) > prompt_tokens("chat", plain, counter)


def test_embeddings_count_strings_and_token_arrays() -> None:
    counter = counter_for_model("text-embedding-3-small")
    assert prompt_tokens("embeddings", {"input": "hello world"}, counter) == 2
    assert prompt_tokens("embeddings", {"input": ["hello", "hello world"]}, counter) == 3
    assert prompt_tokens("embeddings", {"input": [[1, 2, 3], [4]]}, counter) == 4
    assert output_cap("embeddings", {"input": "x"}, 4096) == 0


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({}, 4096),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 50, "max_tokens": 100}, 50),
        ({"max_tokens": 100, "n": 3}, 300),
        ({"max_tokens": True}, 4096),
    ],
)
def test_the_output_cap(body: dict[str, object], cap: int) -> None:
    assert output_cap("chat", body, 4096) == cap


def test_the_worst_backend_of_a_route_sets_the_estimate() -> None:
    cheap = Backend(
        name="cheap",
        provider="openai-compatible",
        model="gpt-4o-mini",
        base_url="http://a",
        pricing=Pricing(input_per_million=Decimal("0.15"), output_per_million=Decimal("0.6")),
    )
    dear = Backend(
        name="dear",
        provider="openai-compatible",
        model="my-llama",  # unknown to tiktoken: 1.5 x the o200k count
        base_url="http://b",
        pricing=Pricing(input_per_million=Decimal("1"), output_per_million=Decimal("2")),
    )
    route = Route(id="r", name="r", namespace="default", model="m", backends=(cheap, dear))
    prices = PriceBook(GatewayConfig(routes=(route,)))
    body = {"messages": [{"role": "user", "content": "Say hello to the gateway"}], "max_tokens": 10}
    estimate = estimate_call("chat", body, route, prices, default_max_tokens=4096)
    # o200k: 3 + 4 + 1 ("user") + 5 = 13; the unknown model: 3 + 4 + ceil(1.5) + ceil(7.5) = 17.
    assert (estimate.prompt_tokens, estimate.output_tokens) == (17, 10)
    assert estimate.cost_usd == (Decimal(17) * 1 + Decimal(10) * 2) / 1_000_000
