"""OpenAI chat completions clients → AWS Bedrock Converse / ConverseStream backends.

The request is translated (`providers.bedrock.chat_to_converse`) and signed with SigV4 over exactly
the bytes sent. A JSON answer becomes a `chat.completion`; a ConverseStream answer (AWS event-stream
frames, `providers.eventstream`) becomes `chat.completion.chunk` SSE events, frame by frame:

- `messageStart` → a chunk with `delta: {role: "assistant", content: ""}`;
- `contentBlockStart` of a `toolUse` → `delta.tool_calls: [{index, id, type, function: {name,
  arguments: ""}}]`; `contentBlockDelta` `text` → `delta.content`, `toolUse.input` →
  `delta.tool_calls[].function.arguments`; reasoning deltas and `contentBlockStop` → nothing;
- `messageStop` → `delta: {}` with the mapped `finish_reason`;
- `metadata` (Bedrock's last event, after `messageStop`) → the usage chunk (`choices: []`, unless
  the gateway asked for usage on the client's behalf: `strip_usage_chunk`), then `[DONE]`;
- an exception event (`throttlingException`, …) → `data: {"error": {…}}` in OpenAI's shape.

A frame that fails to decode (a bad CRC or length) ends the translation: the client is sent one
`data: {"error": {…, "code": "bad_gateway"}}` event naming the Bedrock backend and no `[DONE]`; the
call is priced on the usage received before it (none, usually: Bedrock reports usage last).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final

from tollway_sidecar.providers import bedrock
from tollway_sidecar.providers.adapters.base import (
    AttemptRequest,
    ClientAnswer,
    Refused,
    UpstreamRequest,
    translated,
    untranslatable,
)
from tollway_sidecar.providers.adapters.openai import not_json
from tollway_sidecar.providers.chat_out import ChunkWriter, call_id
from tollway_sidecar.providers.eventstream import CONTENT_TYPE, FrameReader
from tollway_sidecar.providers.usage import ParsedStream, TokenUsage

__all__ = ["ChatBedrock", "ConverseStreamReader", "converse_answer"]

_JSON: Final = "application/json"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def converse_answer(
    status: int,
    body: bytes,
    error_body: Callable[[int, bytes], tuple[bytes, str]],
    *,
    created: int,
    chat_id: str,
) -> tuple[dict[str, Any], dict[str, Any], TokenUsage | str] | ClientAnswer:
    """A Converse answer read as (its JSON, it as a `chat.completion`, its usage or why none); or what
    the client receives in its place: the error answer for a failure (`error_body`), a 502 for a body
    that is not a Converse answer."""
    if not 200 <= status < 300:
        error, ct = error_body(status, body)
        return ClientAnswer(body=error, content_type=ct, usage=None, error=f"Bedrock answered {status}")
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if parsed is None:
        bad = not_json(status)
        return ClientAnswer(None, None, None, error=bad.message, bad_gateway=bad)
    chat = bedrock.converse_to_chat(parsed, model="", created=created, call_id=chat_id)
    if chat is None:
        return untranslatable(status, "Converse")
    return parsed, *chat


class ChatBedrock:
    """The adapter for (`chat`, `bedrock`)."""

    credential_headers: ClassVar[tuple[str, ...]] = bedrock.SIGNED_HEADERS

    def check(self, body: dict[str, Any]) -> Refused | None:
        try:
            bedrock.chat_to_converse(body)
        except bedrock.BedrockRefusal as exc:
            return Refused(exc.message, exc.param)
        return None

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        backend = attempt.backend
        try:
            converse = bedrock.chat_to_converse(attempt.body or {})
        except bedrock.BedrockRefusal as exc:
            raise Refused(exc.message, exc.param) from None
        body = json.dumps(converse, separators=(",", ":"), ensure_ascii=False).encode()
        path = bedrock.converse_path(backend, attempt.stream)
        headers = {"content-type": _JSON}
        credentials = bedrock.parse_credentials(attempt.credential)
        if credentials is not None and backend.region:
            headers |= bedrock.sign(
                credentials=credentials,
                region=backend.region,
                method="POST",
                url=f"{backend.scheme}://{backend.authority}{path}",
                host=backend.host,
                headers={"content-type": _JSON},
                body=body,
                now=attempt.now,
            )
        remove = tuple(name for name in self.credential_headers if name not in headers)
        return UpstreamRequest(path=path, set_headers=headers, remove=remove, body=body)

    def is_stream(self, status: int, content_type: str) -> bool:
        return 200 <= status < 300 and content_type.split(";", 1)[0].strip().lower() == CONTENT_TYPE

    def stream_headers(self) -> dict[str, str]:
        return {"content-type": "text/event-stream"}

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        read = converse_answer(status, body, self.error_body, created=int(time.time()), chat_id=call_id())
        if isinstance(read, ClientAnswer):
            return read
        _, chat, usage = read
        choice = chat["choices"][0]
        return translated(
            chat, usage, finish_reason=choice["finish_reason"], text=choice["message"]["content"]
        )

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> ConverseStreamReader:
        return ConverseStreamReader(
            model=client_model,
            include_usage=not strip_usage_chunk,
            created=int(time.time()),
            on_event=on_event,
        )

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        return json.dumps(bedrock.error_to_openai(status, body), separators=(",", ":")).encode(), _JSON


class ConverseStreamReader:
    """One ConverseStream answer, read frame by frame into chat completion chunks (a `StreamReader`)."""

    def __init__(
        self,
        *,
        model: str,
        include_usage: bool,
        created: int,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> None:
        self._frames = FrameReader()
        self._out = ChunkWriter(model=model, created=created, on_event=on_event)
        self._model, self._include_usage = model, include_usage
        self._tools: dict[int, int] = {}  # Bedrock content block index → OpenAI tool_calls index
        self._usage: TokenUsage | None = None
        self._usage_error: str | None = "the stream carried no usage"
        self._finish: list[str] = []
        self._chunks = 0
        self._complete = False
        self._broken = False
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        return self._complete

    def feed(self, chunk: bytes) -> bytes:
        if self._complete or self._broken:
            return b""
        out = bytearray()
        for frame in self._frames.feed(chunk):
            try:
                payload = json.loads(frame.payload) if frame.payload else {}
            except (ValueError, UnicodeDecodeError):
                self._note("event payload is not JSON")
                continue
            if frame.message_type == "event":
                out += self._translate(frame.event_type, _obj(payload))
            else:
                out += self._exception(frame.event_type, frame.payload)
        if self._frames.error is not None:
            self._broken = True
            self._note(self._frames.error)
            out += self._out.send(
                {
                    "error": {
                        "message": "The Bedrock backend sent a malformed event-stream frame.",
                        "type": "api_error",
                        "param": None,
                        "code": "bad_gateway",
                    }
                }
            )
        return bytes(out)

    def flush(self) -> bytes:
        if self._frames.partial and not self._complete:
            self._note("stream ended mid-frame")
        return b""

    def finish(self) -> ParsedStream:
        error = self.error
        if error is None and not self._complete:
            error = "stream ended before Bedrock's metadata event"
        if error is None and self._usage is None:
            error = self._usage_error
        return ParsedStream(
            usage=self._usage,
            model=self._model or None,
            finish_reasons=tuple(self._finish),
            complete=self._complete,
            error=error,
            output_chunks=self._chunks,
        )

    def _translate(self, kind: str, event: dict[str, Any]) -> bytes:
        if kind == "messageStart":
            return self._out.chunk({"role": "assistant", "content": ""})
        if kind == "contentBlockStart":
            tool = _obj(_obj(event.get("start")).get("toolUse"))
            if not tool:
                return b""
            index = len(self._tools)
            self._tools[_index(event.get("contentBlockIndex"))] = index
            self._chunks += 1
            call = {
                "index": index,
                "id": str(tool.get("toolUseId") or f"call_{index}"),
                "type": "function",
                "function": {"name": str(tool.get("name") or ""), "arguments": ""},
            }
            return self._out.chunk({"tool_calls": [call]})
        if kind == "contentBlockDelta":
            delta = _obj(event.get("delta"))
            if isinstance(delta.get("text"), str):
                self._chunks += 1
                return self._out.chunk({"content": delta["text"]})
            partial = _obj(delta.get("toolUse")).get("input")
            call_index = self._tools.get(_index(event.get("contentBlockIndex")))
            if isinstance(partial, str) and partial and call_index is not None:
                self._chunks += 1
                return self._out.chunk(
                    {"tool_calls": [{"index": call_index, "function": {"arguments": partial}}]}
                )
            return b""  # reasoning content, citations
        if kind == "messageStop":
            reason = bedrock.finish_reason(event.get("stopReason")) or "stop"
            self._finish.append(reason)
            return self._out.chunk({}, reason)
        if kind == "metadata":
            self._complete = True
            usage = bedrock.usage_from_bedrock(event.get("usage"))
            out = b""
            if isinstance(usage, TokenUsage):
                self._usage = usage
                if self._include_usage:
                    out = self._out.usage(bedrock.usage_to_openai(usage))
            else:
                self._usage_error = usage
            return out + self._out.done()
        return b""  # contentBlockStop, event types added later

    def _exception(self, kind: str, payload: bytes) -> bytes:
        self._note(f"provider error: {kind or 'exception'}")
        status = 429 if kind == "throttlingException" else 500
        return self._out.send(bedrock.error_to_openai(status, payload, kind or None))

    def _note(self, error: str) -> None:
        if self.error is None:
            self.error = error


def _index(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
