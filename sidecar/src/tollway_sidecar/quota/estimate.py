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
arrays count one per id) and no output. Responses API: `instructions` and `input` (text, or items
counted like messages), tools and `text` (its format) as JSON; output `max_output_tokens`.

Counting is bounded (`bound.PromptCounter`): past a per-request allowance, or for a string the
tokenizer would take quadratic time on, a string counts as its UTF-8 bytes, an upper bound.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    "PromptParts",
    "estimate_call",
    "output_cap",
    "prompt_parts",
    "prompt_tokens",
]

PER_MESSAGE_TOKENS: Final = 4
REPLY_PRIMING_TOKENS: Final = 3
MEDIA_PART_TOKENS: Final = 2_000
_MEDIA_TYPES: Final = frozenset({"image_url", "input_image", "input_audio", "audio", "file", "input_file"})
_JSON_FIELDS: Final = ("tools", "functions", "response_format", "prediction", "text")


@dataclass(frozen=True, slots=True)
class Estimate:
    """The most a call may use: `prompt_tokens` + `output_tokens` tokens, costing at most `cost_usd`."""

    prompt_tokens: int
    output_tokens: int
    cost_usd: Decimal

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


@dataclass(slots=True)
class PromptParts:
    """What a prompt is made of: tokens known without a tokenizer, and the strings to count.

    Walking a large body costs more than counting its strings (a 10 MiB body may hold 300,000
    messages), so it is walked once per call and its strings counted with each backend's tokenizer.
    """

    fixed: int = 0
    strings: list[str] = field(default_factory=list)

    def tokens(self, counter: Counts) -> int:
        return self.fixed + sum(counter.count(text) for text in self.strings)


def _collect(value: Any, parts: PromptParts) -> None:
    """Every string inside `value`; media parts at their flat allowance."""
    if isinstance(value, str):
        parts.strings.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect(item, parts)
    elif isinstance(value, dict):
        kind = value.get("type")
        if isinstance(kind, str) and kind in _MEDIA_TYPES:  # any JSON value may stand there
            parts.fixed += MEDIA_PART_TOKENS
        else:
            for item in value.values():
                _collect(item, parts)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def prompt_parts(operation: str, body: Mapping[str, Any]) -> PromptParts:
    """The strings and fixed tokens of a chat, messages or embeddings request's prompt."""
    parts = PromptParts()
    if operation == "embeddings":
        _embedding_parts(body.get("input"), parts)
        return parts
    parts.fixed = REPLY_PRIMING_TOKENS
    messages = body.get("messages")
    if isinstance(messages, list):
        parts.fixed += PER_MESSAGE_TOKENS * len(messages)
        for message in messages:
            _collect(message, parts)
    if body.get("system") is not None:  # Anthropic Messages: the system prompt
        _collect(body["system"], parts)
    if operation == "responses":
        items = body.get("input")
        parts.fixed += PER_MESSAGE_TOKENS * (len(items) if isinstance(items, list) else 1)
        _collect(items, parts)
        if body.get("instructions") is not None:
            parts.fixed += PER_MESSAGE_TOKENS
            _collect(body["instructions"], parts)
    for name in _JSON_FIELDS:
        if body.get(name) is not None:
            parts.strings.append(_compact(body[name]))
    return parts


def prompt_tokens(operation: str, body: Mapping[str, Any], counter: Counts) -> int:
    """The prompt tokens of a chat or embeddings request, counted (or estimated high) with `counter`."""
    return prompt_parts(operation, body).tokens(counter)


def _embedding_parts(value: Any, parts: PromptParts) -> None:
    if isinstance(value, str):
        parts.strings.append(value)
    elif isinstance(value, list):
        if value and all(isinstance(item, int) for item in value):
            parts.fixed += len(value)  # one array of token ids
        else:
            for item in value:
                _embedding_parts(item, parts)


def output_cap(operation: str, body: Mapping[str, Any], default_max_tokens: int) -> int:
    """The most output tokens the call may produce."""
    if operation == "embeddings":
        return 0
    cap = default_max_tokens
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
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
    parts = prompt_parts(operation, body)
    counted: dict[TokenCounter, int] = {}
    worst_prompt = 0
    worst_cost = Decimal(0)
    for backend in route.backends:
        counter = counter_for_model(backend.model)
        if counter not in counted:
            counted[counter] = parts.tokens(PromptCounter(counter))
        prompt = counted[counter]
        worst_prompt = max(worst_prompt, prompt)
        price = prices.price_for(route.id, backend.name)
        if price is not None:
            worst_cost = max(worst_cost, price.cost(TokenUsage(prompt, output)))
    return Estimate(prompt_tokens=worst_prompt, output_tokens=output, cost_usd=worst_cost)
