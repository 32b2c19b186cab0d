"""Counting one request's prompt has a bounded cost and never counts fewer tokens than tiktoken."""

from __future__ import annotations

import random
import time

import pytest

from tollway_sidecar.config.models import Backend, GatewayConfig, Route
from tollway_sidecar.pricing import PriceBook
from tollway_sidecar.quota.bound import (
    EXACT_CHARS,
    MAX_RUN,
    PER_STRING_CHARS,
    PromptCounter,
    has_long_run,
    utf8_length,
)
from tollway_sidecar.quota.estimate import estimate_call
from tollway_sidecar.quota.tokens import TokenCounter, counter_for_model

EXACT = TokenCounter("o200k_base")
WORDS = ("the", "gateway", "reserves", "tokens", "Envoy", "sidecar", "42", "hello,", "world.", "日本語")


def prose(chars: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(chars // 4))[:chars]


def test_ordinary_text_is_counted_exactly() -> None:
    text = prose(200_000)
    assert not has_long_run(text)
    counter = PromptCounter(EXACT)
    assert counter.count(text) == EXACT.count(text)
    assert counter.estimated == 0


@pytest.mark.parametrize(
    "text",
    [
        "x" * (MAX_RUN + 1),  # one piece of letters
        " " * (MAX_RUN + 1),  # one piece of whitespace
        "!" + "\n/" * MAX_RUN,  # punctuation, then a run of [\r\n/]
        "\x1c" * (MAX_RUN + 1),  # str.split() sees whitespace here; tiktoken sees punctuation
        "word " * 10 + "y" * (MAX_RUN + 1),
    ],
)
def test_a_run_the_tokenizer_would_be_quadratic_on_counts_its_bytes(text: str) -> None:
    assert has_long_run(text)
    counter = PromptCounter(EXACT)
    assert counter.count(text) == utf8_length(text) >= EXACT.count(text)
    assert counter.estimated == 1


def test_runs_up_to_the_bound_are_still_exact() -> None:
    text = ("x" * MAX_RUN + " ") * 50
    assert not has_long_run(text)
    assert PromptCounter(EXACT).count(text) == EXACT.count(text)


def test_past_the_allowance_strings_count_their_bytes_which_is_never_less() -> None:
    counter = PromptCounter(EXACT)
    first = prose(EXACT_CHARS - PER_STRING_CHARS - 10)
    assert counter.count(first) == EXACT.count(first)
    second = prose(100, seed=8) + " é€😀"
    assert counter.count(second) == utf8_length(second) == len(second.encode())
    assert utf8_length(second) >= EXACT.count(second)
    assert counter.estimated == 1


def test_many_short_strings_use_up_the_allowance_too() -> None:
    counter = PromptCounter(EXACT)
    exact = EXACT_CHARS // (PER_STRING_CHARS + 2)
    counts = [counter.count("hi") for _ in range(exact + 10)]
    assert counts[:exact] == [1] * exact  # "hi" is one token
    assert counts[exact:] == [2] * 10  # then its two bytes
    assert counter.estimated == 10


def test_a_lone_surrogate_from_json_counts_as_three_bytes() -> None:
    assert utf8_length("a\ud800b") == 5


def test_a_3_mb_prompt_without_spaces_is_estimated_at_once_and_not_under() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 3_000_000}], "max_tokens": 5}
    route = Route(
        id="r",
        name="r",
        namespace="default",
        model="m",
        backends=(
            Backend(name="a", provider="openai-compatible", model="gpt-4o-mini", base_url="http://a"),
            Backend(name="b", provider="openai-compatible", model="llama-3.1-8b", base_url="http://b"),
            Backend(name="c", provider="openai-compatible", model="gpt-4", base_url="http://c"),
        ),
    )
    started = time.process_time()
    prices = PriceBook(GatewayConfig(routes=(route,)))
    estimate = estimate_call("chat", body, route, prices, default_max_tokens=1)
    assert time.process_time() - started < 0.5  # tiktoken alone takes about a minute on this
    # 3 + 4 + "user" + the content's bytes: at least one byte per token, whatever the tokenizer.
    assert estimate.prompt_tokens >= 3_000_000
    assert counter_for_model("gpt-4o-mini").count("x" * 20_000) <= 20_000
