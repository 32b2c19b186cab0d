"""`chat.completion.chunk` SSE events → the Responses API's typed events, chunk by chunk. Pure.

`ChatStreamToResponses.feed(raw)` takes a chat stream's bytes as they arrive (event boundaries may
fall anywhere) and returns the Responses SSE bytes to send in their place (`event: <type>` +
`data: {..., "type", "sequence_number"}`, numbered from 0; possibly empty while an event is
incomplete). In order:

- the first chunk → `response.created` and `response.in_progress` (status `in_progress`, no output);
- `delta.reasoning_content` (or `delta.reasoning`) → a `reasoning` item: `output_item.added`,
  `content_part.added` (`reasoning_text`), `reasoning_text.delta`…;
- `delta.content` → a `message` item: `output_item.added`, `content_part.added` (`output_text`),
  `output_text.delta`…;
- `delta.tool_calls[]` → one `function_call` item per call index: `output_item.added` (with its
  `call_id` and `name`), `function_call_arguments.delta`…;
- an item closes when the next one starts, or at `finish_reason`: `reasoning_text.done` /
  `output_text.done` + `content_part.done`, or `function_call_arguments.done`; then
  `output_item.done`;
- the usage chunk is kept (the last usage seen wins, as for the gateway's own reading);
- `[DONE]` → `response.completed` (`response.incomplete` when `finish_reason` was `length` or
  `content_filter`) with the whole response and its usage;
- `data: {"error": {...}}` → an `error` event with its code and message.

A refusal delta is not streamed (chat backends other than OpenAI's send none).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from tollway_sidecar.providers.responses import (
    function_call_item,
    item_id,
    message_item,
    reasoning_item,
    response_object,
    status_of,
    usage_of,
)
from tollway_sidecar.providers.responses_events import ResponsesEvents
from tollway_sidecar.providers.sse_blocks import SseBlocks, SseEvent

__all__ = ["ChatStreamToResponses"]

_DONE: Final = b"[DONE]"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class _Item:
    """One output item being streamed."""

    __slots__ = ("call_id", "id", "index", "kind", "name", "text")

    def __init__(self, kind: str, identifier: str, index: int, call_id: str = "", name: str = "") -> None:
        self.kind, self.id, self.index = kind, identifier, index
        self.call_id, self.name = call_id, name
        self.text: list[str] = []  # text, reasoning or arguments deltas

    def value(self) -> str:
        return "".join(self.text)

    def whole(self, status: str) -> dict[str, Any]:
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.value())
        if self.kind == "message":
            return message_item(self.id, self.value(), None, status)
        return function_call_item(self.id, self.call_id, self.name, self.value(), status)


class ChatStreamToResponses:
    def __init__(
        self,
        *,
        request: dict[str, Any],
        response_id: str,
        created_at: int,
        model: str,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> None:
        self._request, self._id, self._created, self._model = request, response_id, created_at, model
        self._events = ResponsesEvents(on_event)
        self._event = self._events.event
        self._blocks = SseBlocks()
        self._started = False
        self._done = False
        self._items: list[_Item] = []  # every item, in output order
        self._open: _Item | None = None  # the reasoning or message item receiving deltas
        self._calls: dict[int, _Item] = {}  # chat tool_calls index → its open function_call item
        self._finish: str | None = None
        self._usage: Any = None
        self.error: str | None = None  # the first thing that could not be translated

    @property
    def done(self) -> bool:
        """True once `[DONE]` was translated into the final event."""
        return self._done

    def feed(self, raw: bytes) -> bytes:
        out = b"".join(self._block(event) for event in self._blocks.feed(raw))
        if self._blocks.overflowed:
            self._note("event too large")
        return out

    def flush(self) -> bytes:
        """At the end of the stream: an unterminated last event, if its lines were complete."""
        event = self._blocks.flush()
        return self._block(event) if event is not None else b""

    def _block(self, event: SseEvent) -> bytes:
        if event.data is None or self._done:
            return b""
        payload = event.data.strip()
        if payload == _DONE:
            return self._end()
        try:
            obj = json.loads(payload)
        except ValueError:
            self._note("event data is not JSON")
            return b""
        return self._chunk(obj) if isinstance(obj, dict) else b""

    # ---- chunks

    def _response(self, status: str, incomplete: str | None = None, *, usage: Any = None) -> dict[str, Any]:
        item_status = "incomplete" if status == "incomplete" else "completed"
        return response_object(
            request=self._request,
            response_id=self._id,
            created_at=self._created,
            model=self._model,
            status=status,
            output=[item.whole(item_status) for item in self._items] if status != "in_progress" else [],
            usage=usage,
            incomplete_reason=incomplete,
        )

    def _start(self, obj: dict[str, Any]) -> bytes:
        self._started = True
        if isinstance(obj.get("model"), str) and obj["model"]:
            self._model = obj["model"]
        shell = self._response("in_progress")
        return self._event("response.created", response=shell) + self._event(
            "response.in_progress", response=shell
        )

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        error = obj.get("error")
        if error is not None:
            details = _obj(error)
            message = str(details.get("message") or error)
            code = details.get("code") or details.get("type")
            self._note(f"provider error: {message}"[:200])
            return self._event(
                "error", code=str(code) if code else None, message=message, param=details.get("param")
            )
        out = b"" if self._started else self._start(obj)
        if obj.get("usage") is not None:
            self._usage = obj["usage"]
        choices = obj.get("choices")
        choice = _obj(choices[0]) if isinstance(choices, list) and choices else {}
        delta = _obj(choice.get("delta"))
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            out += self._text("reasoning", reasoning)
        content = delta.get("content")
        if isinstance(content, str) and content:
            out += self._text("message", content)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                out += self._tool_call(call)
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self._finish = finish
            out += self._close_all()
        return out

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        item = self._open
        if item is None or item.kind != kind:
            out += self._close_all()
            prefix = "rs" if kind == "reasoning" else "msg"
            item = _Item(kind, item_id(self._id, prefix, len(self._items)), len(self._items))
            self._items.append(item)
            self._open = item
            added: dict[str, Any]
            part: dict[str, Any]
            if kind == "reasoning":
                added = {"id": item.id, "type": "reasoning", "summary": [], "content": []}
                part = {"type": "reasoning_text", "text": ""}
            else:
                added = message_item(item.id, "", None, "in_progress")
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._event("response.output_item.added", output_index=item.index, item=added)
            out += self._events.part_added(item.id, item.index, 0, part)
        item.text.append(text)
        part_kind = "reasoning_text" if kind == "reasoning" else "output_text"
        return out + self._events.part_delta(item.id, item.index, 0, part_kind, text)

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        out = b""
        index = call.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else 0
        function = _obj(call.get("function"))
        item = self._calls.get(index)
        if item is None:
            if self._open is not None:
                out += self._close(self._open)
            identifier = item_id(self._id, "fc", len(self._items))
            given = call.get("id")
            call_id = given if isinstance(given, str) and given else identifier.replace("fc_", "call_", 1)
            item = _Item(
                "function_call", identifier, len(self._items), call_id, str(function.get("name") or "")
            )
            self._items.append(item)
            self._calls[index] = item
            added = function_call_item(item.id, item.call_id, item.name, "", "in_progress")
            out += self._event("response.output_item.added", output_index=item.index, item=added)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.text.append(arguments)
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=item.id,
                output_index=item.index,
                delta=arguments,
            )
        return out

    def _close(self, item: _Item) -> bytes:
        if self._open is item:
            self._open = None
        else:
            self._calls = {k: v for k, v in self._calls.items() if v is not item}
        status = "incomplete" if status_of(self._finish)[0] == "incomplete" else "completed"
        where = {"item_id": item.id, "output_index": item.index}
        value = item.value()
        if item.kind == "function_call":
            out = self._event("response.function_call_arguments.done", **where, arguments=value)
        elif item.kind == "reasoning":
            out = self._events.part_done(item.id, item.index, 0, {"type": "reasoning_text", "text": value})
        else:
            part = {"type": "output_text", "text": value, "annotations": [], "logprobs": []}
            out = self._events.part_done(item.id, item.index, 0, part)
        return out + self._event(
            "response.output_item.done", output_index=item.index, item=item.whole(status)
        )

    def _close_all(self) -> bytes:
        out = b""
        if self._open is not None:
            out += self._close(self._open)
        for item in list(self._calls.values()):
            out += self._close(item)
        return out

    def _end(self) -> bytes:
        out = b"" if self._started else self._start({})
        out += self._close_all()
        self._done = True
        status, incomplete = status_of(self._finish)
        response = self._response(status, incomplete, usage=usage_of(self._usage))
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return out + self._event(kind, response=response)

    def _note(self, error: str) -> None:
        if self.error is None:
            self.error = error
