"""Anthropic Messages clients (`/v1/messages`) → AWS Bedrock Converse / ConverseStream backends.

Request, field by field (anything else that changes the answer is refused with a 400 naming it):
`system` (a string or text blocks) → `system`; `messages` keep their turns, with `text`,
base64 `image` (png/jpeg/gif/webp), `tool_use` and `tool_result` blocks mapped to Converse's
`text`, `image`, `toolUse` and `toolResult`; `max_tokens`, `temperature`, `top_p`,
`stop_sequences` → `inferenceConfig`; `tools` → `toolConfig.tools[].toolSpec`; `tool_choice`
`auto` / `any` / `tool` → `auto` / `any` / `tool`. Refused: `top_k`, `thinking`, `tool_choice:
none`, `disable_parallel_tool_use`, URL images, documents. Ignored: `metadata`, `service_tier`.

A JSON answer becomes a Messages `message` whose usage is Bedrock's as Anthropic spells it
(`input_tokens` without the cache reads and writes, which are reported beside it). A stream
becomes Anthropic's SSE events: `message_start`, then per content block `content_block_start` /
`content_block_delta` (`text_delta`, `input_json_delta`) / `content_block_stop`; Bedrock reports
usage only in its last event (`metadata`, after `messageStop`), so `message_delta` (stop reason and
usage) and `message_stop` are sent when it arrives. An exception event, or a malformed frame,
becomes an Anthropic `error` event (`api_error`, naming the Bedrock backend) and ends the stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, Final

from tollway_sidecar.providers import anthropic_out, bedrock
from tollway_sidecar.providers.adapters.base import (
    AttemptRequest,
    ClientAnswer,
    Refused,
    UpstreamRequest,
    translated,
)
from tollway_sidecar.providers.adapters.chat_bedrock import converse_answer
from tollway_sidecar.providers.eventstream import CONTENT_TYPE, FrameReader
from tollway_sidecar.providers.usage import ParsedStream, TokenUsage

__all__ = ["MessagesBedrock", "messages_to_converse"]

_JSON: Final = "application/json"
_IMAGE_FORMATS: Final = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
_STOP: Final = {"guardrail_intervened": "refusal", "content_filtered": "refusal"}
_UNSUPPORTED: Final = ("top_k", "thinking")
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise Refused(f"'{where}.content' must be a string or an array of blocks.", where)
    out: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        here = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            out.append({"text": block["text"]})
        elif kind == "image":
            source = block.get("source") if isinstance(block.get("source"), dict) else {}
            fmt = _IMAGE_FORMATS.get(str(source.get("media_type")))
            if source.get("type") != "base64" or fmt is None or not isinstance(source.get("data"), str):
                raise Refused(f"'{here}': Bedrock takes base64 png, jpeg, gif or webp images only.", here)
            out.append({"image": {"format": fmt, "source": {"bytes": source["data"]}}})
        elif kind == "tool_use":
            out.append(
                {
                    "toolUse": {
                        "toolUseId": str(block.get("id") or ""),
                        "name": str(block.get("name") or ""),
                        "input": block.get("input") if isinstance(block.get("input"), dict) else {},
                    }
                }
            )
        elif kind == "tool_result":
            inner = block.get("content")
            result: dict[str, Any] = {
                "toolUseId": str(block.get("tool_use_id") or ""),
                "content": [{"text": inner}] if isinstance(inner, str) else _blocks(inner or [], here),
            }
            if block.get("is_error") is True:
                result["status"] = "error"
            out.append({"toolResult": result})
        else:
            raise Refused(f"'{here}.type' {kind!r} cannot be sent to a Bedrock backend.", here)
    return out


def messages_to_converse(body: dict[str, Any]) -> dict[str, Any]:
    """A Converse request body from an Anthropic Messages request. Raises `Refused`."""
    for name in _UNSUPPORTED:
        if body.get(name) is not None:
            raise Refused(f"'{name}' is not supported by a Bedrock backend.", name)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused("'messages' must be a non-empty array.", "messages")
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise Refused(f"'messages[{i}].role' must be user or assistant.", f"messages[{i}].role")
        turns.append({"role": role, "content": _blocks(message.get("content"), f"messages[{i}]")})
    out: dict[str, Any] = {"messages": turns}
    system = body.get("system")
    if system is not None:
        out["system"] = _blocks(system, "system")
    inference: dict[str, Any] = {}
    for src, dst in (("max_tokens", "maxTokens"), ("temperature", "temperature"), ("top_p", "topP")):
        value = body.get(src)
        if isinstance(value, int | float) and not isinstance(value, bool):
            inference[dst] = value
    if isinstance(body.get("stop_sequences"), list) and body["stop_sequences"]:
        inference["stopSequences"] = [s for s in body["stop_sequences"] if isinstance(s, str)]
    if inference:
        out["inferenceConfig"] = inference
    tools, choice = body.get("tools"), body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "none":
        raise Refused("'tool_choice' none has no Bedrock equivalent; leave the tools out.", "tool_choice")
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True:
        raise Refused("'tool_choice.disable_parallel_tool_use' has no Bedrock equivalent.", "tool_choice")
    if tools:
        if not isinstance(tools, list):
            raise Refused("'tools' must be an array.", "tools")
        specs = []
        for i, tool in enumerate(tools):
            if (
                not isinstance(tool, dict)
                or not isinstance(tool.get("name"), str)
                or tool.get("type", "custom") != "custom"
            ):
                raise Refused(f"'tools[{i}]' must be a custom tool with a name.", "tools")
            spec: dict[str, Any] = {
                "name": tool["name"],
                "inputSchema": {"json": tool.get("input_schema") or {}},
            }
            if isinstance(tool.get("description"), str):
                spec["description"] = tool["description"]
            specs.append({"toolSpec": spec})
        config: dict[str, Any] = {"tools": specs}
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind == "auto":
            config["toolChoice"] = {"auto": {}}
        elif kind == "any":
            config["toolChoice"] = {"any": {}}
        elif kind == "tool":
            config["toolChoice"] = {"tool": {"name": str(choice.get("name") or "")}}  # type: ignore[union-attr]
        out["toolConfig"] = config
    return out


def _stop_reason(reason: Any) -> str:
    return _STOP.get(reason, reason) if isinstance(reason, str) else "end_turn"


def _error(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class MessagesBedrock:
    """The adapter for (`messages`, `bedrock`)."""

    credential_headers: ClassVar[tuple[str, ...]] = bedrock.SIGNED_HEADERS

    def check(self, body: dict[str, Any]) -> Refused | None:
        try:
            messages_to_converse(body)
        except Refused as exc:
            return exc
        return None

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        backend = attempt.backend
        body = json.dumps(messages_to_converse(attempt.body or {}), separators=(",", ":"), ensure_ascii=False)
        raw = body.encode()
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
                body=raw,
                now=attempt.now,
            )
        remove = tuple(name for name in self.credential_headers if name not in headers)
        return UpstreamRequest(path=path, set_headers=headers, remove=remove, body=raw)

    def is_stream(self, status: int, content_type: str) -> bool:
        return 200 <= status < 300 and content_type.split(";", 1)[0].strip().lower() == CONTENT_TYPE

    def stream_headers(self) -> dict[str, str]:
        return {"content-type": "text/event-stream"}

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        read = converse_answer(status, body, self.error_body, created=0, chat_id="")
        if isinstance(read, ClientAnswer):
            return read
        parsed, _, usage = read
        content: list[dict[str, Any]] = []
        for block in parsed["output"]["message"]["content"]:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                content.append({"type": "text", "text": block["text"]})
            elif isinstance(block, dict) and isinstance(block.get("toolUse"), dict):
                tool = block["toolUse"]
                content.append(
                    {
                        "type": "tool_use",
                        "id": str(tool.get("toolUseId") or ""),
                        "name": str(tool.get("name") or ""),
                        "input": tool.get("input") if isinstance(tool.get("input"), dict) else {},
                    }
                )
        stop = _stop_reason(parsed.get("stopReason"))
        message = anthropic_out.message(model="", content=content, stop_reason=stop, usage=usage)
        return translated(message, usage, finish_reason=stop, text=anthropic_out.text_of(content))

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> MessagesStreamReader:
        return MessagesStreamReader(model=client_model, on_event=on_event)

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        message = bedrock.error_message(body) or f"The Bedrock backend answered {status}."
        return json.dumps(_error(status, message), separators=(",", ":")).encode(), _JSON


class MessagesStreamReader:
    """One ConverseStream answer as Anthropic Messages SSE events (a `StreamReader`)."""

    def __init__(self, *, model: str, on_event: Callable[[bytes | None, bytes], None] | None = None) -> None:
        self._frames = FrameReader()
        self._out = anthropic_out.MessagesEvents(model=model, on_event=on_event)
        self._model = model
        self._open: set[int] = set()
        self._stop: str | None = None
        self._usage: TokenUsage | None = None
        self._chunks = 0
        self._complete = self._ended = False
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        return self._complete

    def feed(self, chunk: bytes) -> bytes:
        if self._ended:
            return b""
        out = bytearray()
        for frame in self._frames.feed(chunk):
            try:
                payload = json.loads(frame.payload) if frame.payload else {}
            except (ValueError, UnicodeDecodeError):
                self._note("event payload is not JSON")
                continue
            if frame.message_type != "event":
                self._note(f"provider error: {frame.event_type or 'exception'}")
                out += self._fail(
                    bedrock.error_message(frame.payload) or "The Bedrock backend failed mid-stream."
                )
                break
            out += self._translate(frame.event_type, payload if isinstance(payload, dict) else {})
        if self._frames.error is not None and not self._ended:
            self._note(self._frames.error)
            out += self._fail("The Bedrock backend sent a malformed event-stream frame.")
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
            error = "the stream carried no usage"
        return ParsedStream(
            usage=self._usage,
            model=self._model or None,
            finish_reasons=(self._stop,) if self._stop else (),
            complete=self._complete,
            error=error,
            output_chunks=self._chunks,
        )

    def _fail(self, message: str) -> bytes:
        self._ended = True
        return self._out.error(message)

    def _start_block(self, index: int, block: dict[str, Any]) -> bytes:
        self._open.add(index)
        return self._out.block_start(index, block)

    def _translate(self, kind: str, event: dict[str, Any]) -> bytes:
        index = event.get("contentBlockIndex")
        index = index if isinstance(index, int) and not isinstance(index, bool) else 0
        if kind == "messageStart":
            return self._out.start()
        if kind == "contentBlockStart":
            tool = event.get("start", {}).get("toolUse") if isinstance(event.get("start"), dict) else None
            if isinstance(tool, dict):
                self._chunks += 1
                block = {
                    "type": "tool_use",
                    "id": str(tool.get("toolUseId") or ""),
                    "name": str(tool.get("name") or ""),
                    "input": {},
                }
                return self._start_block(index, block)
            return b""
        if kind == "contentBlockDelta":
            delta: dict[str, Any] = event["delta"] if isinstance(event.get("delta"), dict) else {}
            out = b""
            if isinstance(delta.get("text"), str):
                if index not in self._open:  # Converse opens text blocks implicitly
                    out = self._start_block(index, {"type": "text", "text": ""})
                self._chunks += 1
                return out + self._out.text_delta(index, delta["text"])
            partial = (
                delta.get("toolUse", {}).get("input") if isinstance(delta.get("toolUse"), dict) else None
            )
            if isinstance(partial, str) and index in self._open:
                self._chunks += 1
                return self._out.json_delta(index, partial)
            return b""
        if kind == "contentBlockStop":
            if index not in self._open:
                return b""
            self._open.discard(index)
            return self._out.block_stop(index)
        if kind == "messageStop":
            self._stop = _stop_reason(event.get("stopReason"))
            return b""
        if kind == "metadata":
            self._complete = self._ended = True
            usage = bedrock.usage_from_bedrock(event.get("usage"))
            if isinstance(usage, TokenUsage):
                self._usage = usage
            else:
                self._note(usage)
            return self._out.end(self._stop, self._usage)
        return b""

    def _note(self, error: str) -> None:
        if self.error is None:
            self.error = error
