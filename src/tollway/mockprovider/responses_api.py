"""OpenAI Responses API wire format: create (JSON and its SSE event sequence), retrieve, the input
items list, delete.

A request is counted as its chat.completions equivalent would be: `instructions` is one system
message, a string `input` one user message, every input item one message (consecutive
`function_call` items one assistant message, as chat carries them in one `tool_calls` list). So a
Responses request and its translation to chat report the same usage.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any, Final

from aiohttp import web

from .content import Plan, count_prompt, int_or_none, last_user_text, plan_reply, split_pieces
from .knobs import JSON_CT, dumps, openai_error_body
from .runtime import Call, sse_event

__all__ = ["STORE_KEY", "ResponseStore", "create", "delete", "input_items", "responses_usage", "retrieve"]

STORED_LIMIT: Final = 1000  # oldest stored responses are forgotten beyond this


class ResponseStore:
    """Responses created with `store` not false, for `GET`/`DELETE /v1/responses/{id}`."""

    def __init__(self, limit: int = STORED_LIMIT) -> None:
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._inputs: dict[str, list[dict[str, Any]]] = {}
        self._limit = limit

    def put(self, response: dict[str, Any], inputs: list[dict[str, Any]] | None = None) -> None:
        self._items[response["id"]] = response
        self._inputs[response["id"]] = inputs or []
        while len(self._items) > self._limit:
            forgotten, _ = self._items.popitem(last=False)
            self._inputs.pop(forgotten, None)

    def get(self, response_id: str) -> dict[str, Any] | None:
        return self._items.get(response_id)

    def inputs(self, response_id: str) -> list[dict[str, Any]] | None:
        return self._inputs.get(response_id) if response_id in self._items else None

    def pop(self, response_id: str) -> dict[str, Any] | None:
        self._inputs.pop(response_id, None)
        return self._items.pop(response_id, None)


def _input_items(call: Call, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's `input` as the input items OpenAI lists for a stored response (each with an id;
    a message's string content as one `input_text` part)."""
    raw = body.get("input")
    items = [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw
    listed = []
    for item in items if isinstance(items, list) else []:
        entry = {"type": "message", **item}
        if entry["type"] == "message":
            content = entry.get("content")
            if isinstance(content, str):
                entry["content"] = [{"type": "input_text", "text": content}]
            entry.setdefault("status", "completed")
        entry.setdefault("id", call.state.new_id("msg_"))
        listed.append(entry)
    return listed


STORE_KEY: Final = web.AppKey("tollway_mock_responses", ResponseStore)


def responses_usage(plan: Plan) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": min(plan.cached_tokens, plan.prompt_tokens),
            "cache_write_tokens": 0,
        },
        "output_tokens": plan.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
    }


def _messages(body: dict[str, Any]) -> list[dict[str, Any]] | tuple[str, str]:
    """The request as chat messages (for counting), or (error message, param)."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    raw = body.get("input")
    if raw is None:
        return "Missing required parameter: 'input'.", "input"
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
        return messages
    if not isinstance(raw, list):
        return (
            f"Invalid type for 'input': expected one of a string or array of input items, "
            f"but got {type(raw).__name__} instead.",
            "input",
        )
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            return f"Invalid type for 'input[{index}]': expected an object.", f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "function_call":
            if not (messages and messages[-1].get("role") == "assistant" and messages[-1].get("calls")):
                messages.append({"role": "assistant", "content": "", "calls": True})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": item.get("output")})
        else:
            messages.append({"role": item.get("role"), "content": item.get("content")})
    return messages


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The function the request forces a call of (`tool_choice` "required" or a named function)."""
    tools = body.get("tools")
    names = [
        tool["name"]
        for tool in (tools if isinstance(tools, list) else [])
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str)
    ]
    choice = body.get("tool_choice")
    if choice == "required" and names:
        return str(names[0])
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name") in names:
        return str(choice["name"])
    return None


def _echo_tools(body: dict[str, Any]) -> list[Any]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    out: list[Any] = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            # The API echoes function tools with its defaults filled in.
            out.append({"description": None, "parameters": None, "strict": True, **tool})
        else:
            out.append(tool)
    return out


class _Reply:
    """One response being built: its items, in order, as whole objects and as stream events."""

    def __init__(self, call: Call, model: str, plan: Plan, tool: str | None) -> None:
        body = call.body
        self.call, self.plan = call, plan
        self.id = call.state.new_id("resp_")
        self.created_at = int(time.time())
        self.status = "incomplete" if plan.truncated else "completed"
        store = body.get("store")
        self.store = store is not False
        reasoning = body.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
        text = body.get("text")
        self.shell: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "in_progress",
            "background": False,
            "completed_at": None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": model,
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": effort, "summary": None},
            "safety_identifier": body.get("safety_identifier"),
            "service_tier": "default",
            "store": self.store,
            "temperature": body.get("temperature", 1.0),
            "text": text if isinstance(text, dict) else {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": _echo_tools(body),
            "top_logprobs": body.get("top_logprobs", 0),
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": None,
            "user": body.get("user"),
            "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        }
        self.tool = tool
        self.item_status = "incomplete" if plan.truncated else "completed"
        self.reasoning_id = call.state.new_id("rs_") if plan.reasoning_tokens else None
        self.item_id = call.state.new_id("fc_" if tool else "msg_")
        self.call_id = call.state.new_id("call_")
        self.arguments = dumps({"input": plan.text})

    def items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if self.reasoning_id is not None:
            items.append({"id": self.reasoning_id, "type": "reasoning", "summary": []})
        if self.tool is not None:
            items.append(self._function_call(self.arguments, self.item_status))
        elif self.plan.words:
            items.append(self._message([self._part(self.plan.text)], self.item_status))
        return items

    def whole(self) -> dict[str, Any]:
        response = {
            **self.shell,
            "status": self.status,
            "output": self.items(),
            "usage": self.call.reported(responses_usage(self.plan)),
        }
        if self.plan.truncated:
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        else:
            response["completed_at"] = int(time.time())
        return response

    def _message(self, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        }

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def _function_call(self, arguments: str, status: str) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": self.call_id,
            "name": self.tool,
        }

    def events(self, final: dict[str, Any]) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """(head, deltas, tail) of the SSE stream ending in `final`, numbered in order."""
        sequence = iter(range(1 << 62))

        def event(kind: str, **fields: Any) -> bytes:
            return sse_event(kind, dumps({"type": kind, "sequence_number": next(sequence), **fields}))

        head = [
            event("response.created", response=self.shell),
            event("response.in_progress", response=self.shell),
        ]
        deltas: list[bytes] = []
        tail: list[bytes] = []
        index = 0
        if self.reasoning_id is not None:
            item = {"id": self.reasoning_id, "type": "reasoning", "summary": []}
            head.append(event("response.output_item.added", output_index=index, item=item))
            head.append(event("response.output_item.done", output_index=index, item=item))
            index += 1
        pieces = split_pieces(self.plan.words, self.call.knobs.chunks)
        where = {"item_id": self.item_id, "output_index": index}
        if self.tool is not None:
            added = self._function_call("", "in_progress")
            head.append(event("response.output_item.added", output_index=index, item=added))
            for piece in _slices(self.arguments, max(1, len(pieces))):
                deltas.append(event("response.function_call_arguments.delta", **where, delta=piece))
            tail.append(event("response.function_call_arguments.done", **where, arguments=self.arguments))
            done = self._function_call(self.arguments, self.item_status)
            tail.append(event("response.output_item.done", output_index=index, item=done))
        elif pieces:
            part = {**where, "content_index": 0}
            head.append(
                event("response.output_item.added", output_index=index, item=self._message([], "in_progress"))
            )
            head.append(event("response.content_part.added", **part, part=self._part("")))
            for piece in pieces:
                deltas.append(event("response.output_text.delta", **part, delta=piece, logprobs=[]))
            text = self.plan.text
            tail.append(event("response.output_text.done", **part, text=text, logprobs=[]))
            tail.append(event("response.content_part.done", **part, part=self._part(text)))
            done_item = self._message([self._part(text)], self.item_status)
            tail.append(event("response.output_item.done", output_index=index, item=done_item))
        kind = "response.incomplete" if self.plan.truncated else "response.completed"
        tail.append(event(kind, response=final))
        return head, deltas, tail


def _slices(text: str, count: int) -> list[str]:
    size = len(text)
    count = max(1, min(count, size))
    return [text[i * size // count : (i + 1) * size // count] for i in range(count)]


async def create(call: Call) -> web.StreamResponse:
    body = call.body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return call.error(
            400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    messages = _messages(body)
    if isinstance(messages, tuple):
        message, param = messages
        code = "missing_required_parameter" if message.startswith("Missing") else "invalid_type"
        return call.error(400, message, param=param, code=code)
    previous = body.get("previous_response_id")
    if previous is not None and (
        not isinstance(previous, str) or call.request.app[STORE_KEY].get(previous) is None
    ):
        return call.error(
            400,
            f"Previous response with id '{previous}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    plan = plan_reply(
        counted_prompt=count_prompt(messages),
        prompt_text=last_user_text(messages),
        knobs=call.knobs,
        limit=int_or_none(body.get("max_output_tokens")),
    )
    reply = _Reply(call, model, plan, _forced_tool(body))
    final = reply.whole()
    if reply.store:
        call.request.app[STORE_KEY].put(final, _input_items(call, body))
    if body.get("stream") is True:
        return await call.stream(*reply.events(final))
    return await call.json(dumps(final).encode())


def _not_found(call: Call, response_id: str) -> web.Response:
    body = openai_error_body(404, f"Response with id '{response_id}' not found.")
    body["error"]["code"] = None
    return web.Response(status=404, text=json.dumps(body), content_type=JSON_CT, headers=call.id_headers())


async def retrieve(call: Call) -> web.StreamResponse:
    response_id = call.request.match_info["response_id"]
    stored = call.request.app[STORE_KEY].get(response_id)
    if stored is None:
        return _not_found(call, response_id)
    return await call.json(dumps(stored).encode())


async def input_items(call: Call) -> web.StreamResponse:
    """`GET /v1/responses/{id}/input_items`: newest first unless `order=asc`; `limit` (default 20)
    and `after` (an item id) page through them."""
    response_id = call.request.match_info["response_id"]
    items = call.request.app[STORE_KEY].inputs(response_id)
    if items is None:
        return _not_found(call, response_id)
    query = call.request.query
    ordered = list(items) if query.get("order") == "asc" else list(reversed(items))
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    raw_limit = query.get("limit", "")
    limit = min(max(int(raw_limit), 1), 100) if raw_limit.isdigit() else 20
    page = ordered[:limit]
    listing = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > limit,
    }
    return await call.json(dumps(listing).encode())


async def delete(call: Call) -> web.StreamResponse:
    response_id = call.request.match_info["response_id"]
    if call.request.app[STORE_KEY].pop(response_id) is None:
        return _not_found(call, response_id)
    return await call.json(dumps({"id": response_id, "object": "response", "deleted": True}).encode())
