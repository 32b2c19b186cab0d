"""The worst case of a call, before it is sent: prompt tokens, the most output it may produce, its cost.

Pure: a request body and the route in, an `Estimate` out. The prompt is counted per backend of the
route with that backend's tokenizer (`tokens.TokenCounter`: exact for OpenAI models, a high estimate
otherwise), and the worst backend wins, since any of them may end up serving the call.

Chat prompt tokens: every string in every message (content text, names, tool calls and their
arguments, ...) plus `PER_MESSAGE_TOKENS` per message and `REPLY_PRIMING_TOKENS` once — OpenAI
documents 3 + 3 for its chat format; we reserve 4 + 3. Non-text parts (images, audio, files) are
reserved at a flat `MEDIA_PART_TOKENS` each. `tools`, `functions`, `response_format` and
`prediction` are counted as their compact JSON text. Output: `max_completion_tokens`, else
`max_tokens`, else the configured default cap, times `n`. Embeddings: the input's tokens (token-id
arrays count one per id) and no output.

Counting is bounded (`bound.PromptCounter`): past a per-request allowance, or for a string the
tokenizer would take quadratic time on, a string counts as its UTF-8 bytes, an upper bound.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from tollway_sidecar.config.models import Route
from tollway_sidecar.pricing import PriceBook
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.quota.bound import Counts, PromptCounter
from tollway_sidecar.quota.tokens import TokenCounter, counter_for_model

__all__ = [
    "MEDIA_PART_TOKENS",
    "PER_MESSAGE_TOKENS",
    "REPLY_PRIMING_TOKENS",
    "Estimate",
    "estimate_call",
    "output_cap",
    "prompt_tokens",
]

PER_MESSAGE_TOKENS: Final = 4
REPLY_PRIMING_TOKENS: Final = 3
MEDIA_PART_TOKENS: Final = 2_000
_MEDIA_TYPES: Final = frozenset({"image_url", "input_image", "input_audio", "audio", "file", "input_file"})
_JSON_FIELDS: Final = ("tools", "functions", "response_format", "prediction")


@dataclass(frozen=True, slots=True)
class Estimate:
    """The most a call may use: `prompt_tokens` + `output_tokens` tokens, costing at most `cost_usd`."""

    prompt_tokens: int
    output_tokens: int
    cost_usd: Decimal

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


def _text_tokens(value: Any, counter: Counts) -> int:
    """Tokens of every string inside `value`; media parts at their flat allowance."""
    if isinstance(value, str):
        return counter.count(value)
    if isinstance(value, list):
        return sum(_text_tokens(item, counter) for item in value)
    if isinstance(value, dict):
        if value.get("type") in _MEDIA_TYPES:
            return MEDIA_PART_TOKENS
        return sum(_text_tokens(item, counter) for item in value.values())
    return 0


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def prompt_tokens(operation: str, body: Mapping[str, Any], counter: Counts) -> int:
    """The prompt tokens of a chat or embeddings request, counted (or estimated high) with `counter`."""
    if operation == "embeddings":
        return _embedding_tokens(body.get("input"), counter)
    total = REPLY_PRIMING_TOKENS
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += PER_MESSAGE_TOKENS + _text_tokens(message, counter)
    if body.get("system") is not None:  # Anthropic Messages: the system prompt
        total += _text_tokens(body["system"], counter)
    for field in _JSON_FIELDS:
        if body.get(field) is not None:
            total += counter.count(_compact(body[field]))
    return total


def _embedding_tokens(value: Any, counter: Counts) -> int:
    if isinstance(value, str):
        return counter.count(value)
    if isinstance(value, list):
        if value and all(isinstance(item, int) for item in value):
            return len(value)  # one array of token ids
        return sum(_embedding_tokens(item, counter) for item in value)
    return 0


def output_cap(operation: str, body: Mapping[str, Any], default_max_tokens: int) -> int:
    """The most output tokens the call may produce."""
    if operation == "embeddings":
        return 0
    cap = default_max_tokens
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            cap = value
            break
    choices = body.get("n")
    if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1:
        cap *= choices
    return cap


def estimate_call(
    operation: str,
    body: Mapping[str, Any],
    route: Route,
    prices: PriceBook,
    *,
    default_max_tokens: int,
) -> Estimate:
    """The worst case of the call over every backend of `route`."""
    output = output_cap(operation, body, default_max_tokens)
    counted: dict[TokenCounter, int] = {}
    worst_prompt = 0
    worst_cost = Decimal(0)
    for backend in route.backends:
        counter = counter_for_model(backend.model)
        if counter not in counted:
            counted[counter] = prompt_tokens(operation, body, PromptCounter(counter))
        prompt = counted[counter]
        worst_prompt = max(worst_prompt, prompt)
        price = prices.price_for(route.id, backend.name)
        if price is not None:
            worst_cost = max(worst_cost, price.cost(TokenUsage(prompt, output)))
    return Estimate(prompt_tokens=worst_prompt, output_tokens=output, cost_usd=worst_cost)
