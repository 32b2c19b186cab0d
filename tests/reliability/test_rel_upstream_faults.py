"""Upstream faults: what the client gets and what the call is charged, one fault at a time.

Each call reserves 9 prompt tokens + max_tokens 2000 (the estimate); "the prompt" below is the
estimated prompt alone. The standard: a broken answer is a 5xx in the OpenAI error shape, never
charged as a whole success; a cut stream is charged the prompt plus one output token per content
event the client received (docs/architecture.md, "Settle"; the bound used is one token per
content event at least and one per data event at most); a huge answer is charged exactly its
usage; and no reservation is left open.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from reliability_env import IN_PRICE, OUT_PRICE, Client, Reply, Shared, chat_body, get_json, key_value, record

MAX_TOKENS = 2000
PROMPT = 9 * IN_PRICE  # the estimated prompt of a "hi" chat call
RESERVATION = PROMPT + MAX_TOKENS * OUT_PRICE
TIMEOUT_S = 2.0  # the rel-chat and rel-faulty routes' per-attempt timeout


@dataclass
class Outcome:
    reply: Reply
    events: list[bytes]
    charged: Decimal
    requests: int

    @property
    def content_events(self) -> int:
        return sum(1 for event in self.events if b'"content":"' in event and b'"content":""' not in event)

    @property
    def data_events(self) -> int:
        return sum(1 for event in self.events if event.startswith(b"data: {"))

    def assert_charged_for_what_was_received(self) -> None:
        """At least the prompt + one token per content event received, at most one per event."""
        low = PROMPT + self.content_events * OUT_PRICE
        high = PROMPT + self.data_events * OUT_PRICE
        assert low <= self.charged <= high, (
            f"charged ${self.charged}; {self.content_events} content events of {self.data_events} "
            f"received: expected ${low}..${high}"
        )

    @property
    def seconds(self) -> float:
        return self.reply.ended - self.reply.started


def key_spend(shared: Shared) -> dict[str, Any]:
    return dict(get_json(f"{shared.gateway.admin_url}/spend")["keys"]["default/faults"])


async def faulty_call(
    shared: Shared,
    headers: dict[str, str],
    *,
    model: str = "rel-chat",
    stream: bool = False,
    max_tokens: int | None = MAX_TOKENS,
) -> Outcome:
    before = await asyncio.to_thread(key_spend, shared)
    body = chat_body(model, max_tokens=max_tokens, stream=stream)
    events: list[bytes] = []
    async with Client(shared.gateway.origin) as client:
        reply = await client.send(
            "POST",
            "/v1/chat/completions",
            body,
            {"authorization": f"Bearer {key_value('faults')}", "content-type": "application/json", **headers},
            timeout_s=20,
            stream_events=events if stream else None,
        )
    # The settle runs after the answer (in the background, or when Envoy closes the stream).
    deadline = time.monotonic() + 5
    after = await asyncio.to_thread(key_spend, shared)
    while (
        after["requests"] == before["requests"] or after["reserved_usd"] != "0"
    ) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        after = await asyncio.to_thread(key_spend, shared)
    assert after["reserved_usd"] == "0", f"a reservation is still open after the call: {after}"
    return Outcome(
        reply,
        events,
        Decimal(after["spent_usd"]) - Decimal(before["spent_usd"]),
        after["requests"] - before["requests"],
    )


def note(name: str, outcome: Outcome) -> None:
    error = outcome.reply.error_object()
    record(
        f"fault {name}",
        client_status=outcome.reply.status,
        client_code=error["code"] if error else (outcome.reply.error or "-"),
        seconds=round(outcome.seconds, 2),
        content_events=outcome.content_events,
        charged_usd=str(outcome.charged),
        reservation_usd=str(RESERVATION),
    )


def assert_broken_answer(outcome: Outcome) -> None:
    """A 502 in the OpenAI shape naming the backend, charged at most the prompt."""
    error = outcome.reply.error_object()
    assert outcome.reply.status == 502 and error is not None, (outcome.reply.status, outcome.reply.body[:300])
    assert "'rel-" in error["message"], error
    assert "x-tollway-cost-usd" not in outcome.reply.headers
    assert outcome.charged <= PROMPT, (
        f"charged ${outcome.charged} for a broken answer (the prompt is ${PROMPT})"
    )


async def test_invalid_json_200_is_a_502_charged_at_most_the_prompt(shared: Shared) -> None:
    outcome = await faulty_call(shared, {"x-mock-fail": "garbage"})
    note("invalid JSON (200, application/json)", outcome)
    assert_broken_answer(outcome)


async def test_truncated_json_200_is_a_502_charged_at_most_the_prompt(shared: Shared) -> None:
    outcome = await faulty_call(shared, {"x-fault": "truncated-json"}, model="rel-faulty")
    note("truncated JSON (200, whole message)", outcome)
    assert_broken_answer(outcome)


async def test_body_cut_by_a_reset_is_a_502_charged_at_most_the_prompt(shared: Shared) -> None:
    outcome = await faulty_call(shared, {"x-mock-fail": "broken-stream"})
    note("JSON body cut by a reset", outcome)
    assert_broken_answer(outcome)


async def test_html_200_is_a_502_charged_at_most_the_prompt(shared: Shared) -> None:
    outcome = await faulty_call(shared, {"x-fault": "html"}, model="rel-faulty")
    note("HTML page (200, text/html)", outcome)
    assert_broken_answer(outcome)


async def test_cut_stream_is_charged_the_prompt_and_the_events_received(shared: Shared) -> None:
    outcome = await faulty_call(
        shared, {"x-mock-fail": "broken-stream", "x-mock-chunk-delay-ms": "10"}, stream=True
    )
    note("SSE cut by a reset", outcome)
    # The client sees the break: no [DONE] (the transport error, or an error event, tells it how).
    assert outcome.reply.status == 200 and b"[DONE]" not in outcome.reply.body
    assert outcome.content_events > 0
    outcome.assert_charged_for_what_was_received()


async def test_stall_before_the_answer_is_a_504_within_the_timeout_and_not_charged_beyond_the_prompt(
    shared: Shared,
) -> None:
    outcome = await faulty_call(shared, {"x-mock-fail": "stall"})
    note("stall before the headers", outcome)
    error = outcome.reply.error_object()
    assert outcome.reply.status == 504 and error is not None, outcome.reply.body[:300]
    assert error["code"] == "backend_timeout" and "'rel-mock'" in error["message"]
    assert outcome.seconds < TIMEOUT_S + 2
    assert outcome.charged <= PROMPT


async def test_stall_mid_stream_is_cut_within_the_timeout_and_charged_the_events_received(
    shared: Shared,
) -> None:
    outcome = await faulty_call(shared, {"x-mock-chunk-delay-ms": "60000"}, stream=True)
    note("stall mid-stream", outcome)
    assert outcome.reply.status == 200 and outcome.content_events >= 1
    assert b"[DONE]" not in outcome.reply.body, "a stalled stream must not end as if complete"
    assert outcome.seconds < 2 * TIMEOUT_S + 2, f"the stalled stream ran {outcome.seconds:.1f} s"
    outcome.assert_charged_for_what_was_received()


async def test_large_answer_beyond_the_reservation_is_charged_its_usage_exactly(shared: Shared) -> None:
    # No max_tokens: the gateway reserves its default (4096 output tokens); the answer has 200,000.
    outcome = await faulty_call(shared, {"x-mock-completion-tokens": "200000"}, max_tokens=None)
    note("answer of 200,000 tokens (1.2 MB)", outcome)
    assert outcome.reply.status == 200
    usage = outcome.reply.json()["usage"]
    exact = usage["prompt_tokens"] * IN_PRICE + usage["completion_tokens"] * OUT_PRICE
    assert usage["completion_tokens"] == 200_000
    assert outcome.reply.cost == exact == outcome.charged


@pytest.mark.timeout(60)
async def test_answer_beyond_the_buffer_is_served_or_a_502_never_a_500(shared: Shared) -> None:
    # 2,000,000 tokens: ~12 MB of JSON, more than the gateway buffers.
    outcome = await faulty_call(shared, {"x-mock-completion-tokens": "2000000"}, max_tokens=None)
    note("answer of 2,000,000 tokens (12 MB)", outcome)
    if outcome.reply.status == 200:  # served: charged its usage (the cost header, when sent, agrees)
        usage = outcome.reply.json()["usage"]
        exact = usage["prompt_tokens"] * IN_PRICE + usage["completion_tokens"] * OUT_PRICE
        assert outcome.charged == exact
        assert outcome.reply.cost in (None, exact)
    else:
        assert_broken_answer(outcome)
