"""An OpenAI Responses API response as the cache keeps it: the final `response` object. Pure.

Only a call that asks the provider to keep nothing is cached (`responses_uncacheable`): by default a provider
stores each response under its id for `GET /v1/responses/{id}` and `previous_response_id`, which a
replayed answer cannot honour; `background` and `previous_response_id` need that stored state too.

The answer is the `response` object as the client received it (the JSON body, or a stream's
`response.completed` event), kept whole; its usage is the one it carried, or the entry's
`TokenUsage` when it had none. Only a `completed` response is stored, and only of output items the
replayed stream can spell out as the API does: `message` (`output_text` without annotations or
log probabilities, `refusal`), `reasoning` (summary and `reasoning_text` parts, an
`encrypted_content` kept as it is) and `function_call`. Built-in tool calls are `Unstorable`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from tollway_sidecar.cache.sse import dumps, pieces
from tollway_sidecar.cache.unstorable import Unstorable
from tollway_sidecar.providers.responses import responses_usage
from tollway_sidecar.providers.responses_events import ResponsesEvents
from tollway_sidecar.providers.usage import TokenUsage

__all__ = [
    "ResponsesAnswer",
    "responses_from_json",
    "responses_json",
    "responses_sse",
    "responses_uncacheable",
]

_MESSAGE_PARTS: Final = frozenset({"output_text", "refusal"})


def responses_uncacheable(body: Mapping[str, Any]) -> str | None:
    """Why a Responses request must not be answered from the cache, or None when it may be."""
    if body.get("store") is not False:
        return "the provider stores the response (store is not false)"
    if body.get("background") is True:
        return "a background response is stored by the provider"
    if body.get("previous_response_id") is not None:
        return "it continues a response stored by the provider"
    return None


@dataclass(frozen=True, slots=True)
class ResponsesAnswer:
    response: dict[str, Any]  # the final `response` object; never mutated

    def check_finished(self) -> None:
        status = self.response.get("status")
        if status != "completed":
            raise Unstorable(f"response status {status!r}")
        if self.response.get("store") is True:
            raise Unstorable("the provider stored the response")


def _str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise Unstorable(f"{name} is not a string")
    return value


def _parts(item: Mapping[str, Any], name: str, kinds: frozenset[str]) -> None:
    parts = item.get(name, [])
    if not isinstance(parts, list):
        raise Unstorable(f"{item.get('type')} {name} is not a list")
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise Unstorable(f"{item.get('type')} part type {kind!r} is not replayed")
        _str(part, "refusal" if kind == "refusal" else "text")
        if part.get("annotations") or part.get("logprobs"):
            raise Unstorable("annotations and log probabilities are not replayed")


def _check_item(item: Any) -> None:
    if not isinstance(item, dict):
        raise Unstorable("an output item is not an object")
    kind = item.get("type")
    _str(item, "id")
    if kind == "message":
        _parts(item, "content", _MESSAGE_PARTS)
    elif kind == "reasoning":
        _parts(item, "summary", frozenset({"summary_text"}))
        _parts(item, "content", frozenset({"reasoning_text"}))
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            _str(item, name)
    else:
        raise Unstorable(f"output item type {kind!r} is not replayed")


def responses_from_json(obj: Any) -> ResponsesAnswer:
    """The answer in a `response` object; `Unstorable` when it cannot be replayed as it is."""
    if not isinstance(obj, dict) or obj.get("object") != "response":
        raise Unstorable("answer is not a response")
    _str(obj, "id")
    output = obj.get("output")
    if not isinstance(output, list):
        raise Unstorable("response has no output list")
    for item in output:
        _check_item(item)
    return ResponsesAnswer(copy.deepcopy(obj))


def _whole(answer: ResponsesAnswer, usage: TokenUsage) -> dict[str, Any]:
    response = answer.response
    if isinstance(response.get("usage"), dict):
        return response
    return {**response, "usage": responses_usage(usage)}


def responses_json(answer: ResponsesAnswer, usage: TokenUsage) -> bytes:
    return dumps(_whole(answer, usage)).encode()


def _item_events(events: ResponsesEvents, index: int, item: dict[str, Any]) -> bytes:
    """One output item as it streams: added (still empty), its parts' deltas, done (whole)."""
    kind, identifier = item["type"], item["id"]
    shell = {**item, "status": "in_progress"} if "status" in item else dict(item)
    if kind == "message":
        shell["content"] = []
    elif kind == "reasoning":
        shell["summary"] = []
        if "content" in item:
            shell["content"] = []
    else:
        shell["arguments"] = ""
    out = events.event("response.output_item.added", output_index=index, item=shell)
    if kind == "function_call":
        where = {"item_id": identifier, "output_index": index}
        for piece in pieces(item["arguments"]):
            out += events.event("response.function_call_arguments.delta", **where, delta=piece)
        out += events.event("response.function_call_arguments.done", **where, arguments=item["arguments"])
    if kind == "reasoning":
        for summary_index, part in enumerate(item["summary"]):
            where = {"item_id": identifier, "output_index": index, "summary_index": summary_index}
            empty = {**part, "text": ""}
            out += events.event("response.reasoning_summary_part.added", **where, part=empty)
            for piece in pieces(part["text"]):
                out += events.event("response.reasoning_summary_text.delta", **where, delta=piece)
            out += events.event("response.reasoning_summary_text.done", **where, text=part["text"])
            out += events.event("response.reasoning_summary_part.done", **where, part=part)
    for content_index, part in enumerate(item.get("content", []) if kind != "function_call" else ()):
        out += events.part_added(identifier, index, content_index, part)
        text = part["refusal" if part["type"] == "refusal" else "text"]
        for piece in pieces(text):
            out += events.part_delta(identifier, index, content_index, part["type"], piece)
        out += events.part_done(identifier, index, content_index, part)
    return out + events.event("response.output_item.done", output_index=index, item=item)


def responses_sse(answer: ResponsesAnswer, usage: TokenUsage) -> bytes:
    """The response as the API streams it: `response.created` and `response.in_progress` (no
    output, no usage), each output item's events, `response.completed` with the whole response."""
    whole = _whole(answer, usage)
    shell = {**whole, "status": "in_progress", "output": [], "usage": None}
    if "completed_at" in shell:
        shell["completed_at"] = None
    events = ResponsesEvents()
    out = events.event("response.created", response=shell)
    out += events.event("response.in_progress", response=shell)
    for index, item in enumerate(whole["output"]):
        out += _item_events(events, index, item)
    return out + events.event("response.completed", response=whole)
