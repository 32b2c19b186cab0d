"""Anthropic wire format: the Messages API (JSON and its SSE event sequence) and count_tokens."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .content import Plan, count_prompt, int_or_none, last_user_text, plan_reply, split_pieces
from .knobs import dumps
from .runtime import Call, sse_event

_PING = sse_event("ping", '{"type":"ping"}')
_STOP = sse_event("message_stop", '{"type":"message_stop"}')


def anthropic_usage(plan: Plan, output_tokens: int) -> dict[str, Any]:
    """Anthropic usage: ``input_tokens`` excludes the cache reads and writes (they add up)."""
    usage: dict[str, Any] = {
        "input_tokens": plan.prompt_tokens,
        "cache_creation_input_tokens": plan.cache_creation_tokens,
        "cache_read_input_tokens": plan.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": plan.cache_creation_tokens,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
    if plan.reasoning_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": plan.reasoning_tokens}
    return usage


def _delta_usage(plan: Plan) -> dict[str, Any]:
    """message_delta usage: cumulative totals, as the API sends them at the end of a stream."""
    usage: dict[str, Any] = {
        "input_tokens": plan.prompt_tokens,
        "cache_creation_input_tokens": plan.cache_creation_tokens,
        "cache_read_input_tokens": plan.cached_tokens,
        "output_tokens": plan.completion_tokens,
    }
    if plan.reasoning_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": plan.reasoning_tokens}
    return usage


def _validate(call: Call) -> tuple[str, list[Any], int] | web.Response:
    body = call.body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return call.error(400, "model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return call.error(400, "messages: Field required")
    max_tokens = int_or_none(body.get("max_tokens"))
    if max_tokens is None:
        return call.error(400, "max_tokens: Field required")
    return model, messages, max_tokens


async def messages(call: Call) -> web.StreamResponse:
    checked = _validate(call)
    if isinstance(checked, web.Response):
        return checked
    model, msgs, max_tokens = checked
    plan = plan_reply(
        counted_prompt=count_prompt(msgs, call.body.get("system")),
        prompt_text=last_user_text(msgs),
        knobs=call.knobs,
        limit=max_tokens,
    )
    stop_reason = "max_tokens" if plan.truncated else "end_turn"
    message_id = call.state.new_id("msg_")
    content: list[dict[str, Any]] = [{"type": "text", "text": plan.text}] if plan.words else []

    if call.body.get("stream") is True:
        return await _stream_message(call, message_id, model, plan, stop_reason)

    reply: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }
    if not call.no_usage:
        reply["usage"] = call.reported(anthropic_usage(plan, plan.completion_tokens))
    return await call.json(dumps(reply).encode())


async def _stream_message(
    call: Call, message_id: str, model: str, plan: Plan, stop_reason: str
) -> web.StreamResponse:
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if not call.no_usage:
        # Like the API: message_start carries the input side and a first small output count.
        start["usage"] = call.reported(anthropic_usage(plan, min(1, plan.completion_tokens)))
    head = [sse_event("message_start", dumps({"type": "message_start", "message": start}))]
    texts = split_pieces(plan.words, call.knobs.chunks)
    tail: list[bytes] = []
    if texts:
        head.append(
            sse_event(
                "content_block_start",
                '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
            )
        )
        tail.append(sse_event("content_block_stop", '{"type":"content_block_stop","index":0}'))
    head.append(_PING)
    pieces = [
        sse_event(
            "content_block_delta",
            f'{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{dumps(t)}}}}}',
        )
        for t in texts
    ]
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if not call.no_usage:
        delta["usage"] = call.reported(_delta_usage(plan))
    tail.append(sse_event("message_delta", dumps(delta)))
    tail.append(_STOP)
    return await call.stream(head, pieces, tail)


async def count_tokens(call: Call) -> web.StreamResponse:
    msgs = call.body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return call.error(400, "messages: Field required")
    tokens = call.knobs.prompt_tokens
    if tokens is None:
        tokens = count_prompt(msgs, call.body.get("system"))
    return await call.json(dumps({"input_tokens": tokens}).encode())
