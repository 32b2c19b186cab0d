"""Anthropic Messages clients (`/v1/messages`) → Gemini on Google Vertex AI, translated both ways.

Request, field by field (anything else is refused with a 400 naming it): `system` (a string or text
blocks) → `systemInstruction`; `messages` → `contents` (roles `user` / `model`), with `text`,
base64 `image`, `tool_use` and `tool_result` blocks mapped to `text`, `inlineData`, `functionCall`
and `functionResponse` parts (the function's name found from the `tool_use` with that id);
`max_tokens`, `temperature`, `top_p`, `top_k`, `stop_sequences` → `generationConfig`; `tools` →
`functionDeclarations` (`input_schema` as `parametersJsonSchema`); `tool_choice` `auto` / `any` /
`tool` / `none` → mode `AUTO` / `ANY` / `ANY` with `allowedFunctionNames` / `NONE`. Refused:
`thinking`, `disable_parallel_tool_use`, URL images, documents. Ignored: `metadata`, `service_tier`.

A JSON answer becomes a Messages `message` (usage as Anthropic spells it: `input_tokens` without the
cached part, reported beside it); a stream becomes Anthropic's SSE events — `message_start`, per
content block `content_block_start` / `content_block_delta` (`text_delta`, `input_json_delta`) /
`content_block_stop`, then `message_delta` (stop reason, usage) and `message_stop` once Gemini's
finish and usage have arrived. An error event becomes an Anthropic `error` event and ends the stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, Final

from tollway_sidecar.providers import anthropic_out, vertex
from tollway_sidecar.providers.adapters.base import (
    AttemptRequest,
    ClientAnswer,
    Refused,
    UpstreamRequest,
    translated,
)
from tollway_sidecar.providers.adapters.chat_vertex import bearer, gemini_answer
from tollway_sidecar.providers.adapters.openai import is_sse
from tollway_sidecar.providers.errors import anthropic_error_body
from tollway_sidecar.providers.sse_blocks import SseBlocks
from tollway_sidecar.providers.usage import ParsedStream, TokenUsage

__all__ = ["GeminiMessagesStream", "MessagesGemini", "messages_to_gemini"]

_JSON: Final = "application/json"
_KNOWN: Final = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "stream",
        "metadata",
        "service_tier",
    }
)
_STOP: Final = {"MAX_TOKENS": "max_tokens", "STOP": "end_turn"}


def _parts(content: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise Refused(f"'{where}.content' must be a string or an array of blocks.", where)
    out: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        here = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            if block["text"]:
                out.append({"text": block["text"]})
        elif kind == "image":
            source = block.get("source") if isinstance(block.get("source"), dict) else {}
            media = source.get("media_type")
            if (
                source.get("type") != "base64"
                or not isinstance(media, str)
                or not isinstance(source.get("data"), str)
            ):
                raise Refused(f"'{here}': a Vertex backend takes base64 images only.", here)
            out.append({"inlineData": {"mimeType": media, "data": source["data"]}})
        elif kind == "tool_use":
            name = str(block.get("name") or "")
            names[str(block.get("id") or "")] = name
            args = block.get("input") if isinstance(block.get("input"), dict) else {}
            out.append({"functionCall": {"name": name, "args": args}})
        elif kind == "tool_result":
            use_id = str(block.get("tool_use_id") or "")
            if use_id not in names:
                raise Refused(f"'{here}.tool_use_id' must name a tool_use of an earlier message.", here)
            inner = block.get("content")
            text = (
                inner
                if isinstance(inner, str)
                else "".join(p.get("text", "") for p in _parts(inner or [], here, names))
            )
            response: dict[str, Any] = {"content": text}
            if block.get("is_error") is True:
                response = {"error": text}
            out.append({"functionResponse": {"name": names[use_id], "response": response}})
        else:
            raise Refused(f"'{here}.type' {kind!r} cannot be sent to a Vertex (Gemini) backend.", here)
    return out


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True:
        raise Refused("'tool_choice.disable_parallel_tool_use' has no Gemini equivalent.", "tool_choice")
    if not tools:
        return None, None
    if not isinstance(tools, list):
        raise Refused("'tools' must be an array.", "tools")
    declarations = []
    for i, tool in enumerate(tools):
        if (
            not isinstance(tool, dict)
            or not isinstance(tool.get("name"), str)
            or tool.get("type", "custom") != "custom"
        ):
            raise Refused(f"'tools[{i}]' must be a custom tool with a name.", "tools")
        declaration: dict[str, Any] = {"name": tool["name"]}
        if isinstance(tool.get("description"), str):
            declaration["description"] = tool["description"]
        if tool.get("input_schema"):
            declaration["parametersJsonSchema"] = tool["input_schema"]
        declarations.append(declaration)
    kind = choice.get("type") if isinstance(choice, dict) else None
    modes = {"auto": {"mode": "AUTO"}, "any": {"mode": "ANY"}, "none": {"mode": "NONE"}}
    mode: dict[str, Any] | None = modes.get(kind or "")
    if kind == "tool" and isinstance(choice, dict):
        mode = {"mode": "ANY", "allowedFunctionNames": [str(choice.get("name") or "")]}
    config = {"functionCallingConfig": mode} if mode else None
    return [{"functionDeclarations": declarations}], config


def messages_to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """A `generateContent` body from an Anthropic Messages request. Raises `Refused`."""
    unknown = sorted(name for name in body if name not in _KNOWN and body[name] is not None)
    if unknown:
        raise Refused(f"'{unknown[0]}' is not supported by a Vertex (Gemini) backend.", unknown[0])
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused("'messages' must be a non-empty array.", "messages")
    names: dict[str, str] = {}
    contents: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise Refused(f"'messages[{i}].role' must be user or assistant.", f"messages[{i}].role")
        parts = _parts(message.get("content"), f"messages[{i}]", names)
        gemini_role = "user" if role == "user" else "model"
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        elif parts:
            contents.append({"role": gemini_role, "parts": parts})
    out: dict[str, Any] = {"contents": contents}
    system = body.get("system")
    if system is not None:
        out["systemInstruction"] = {"parts": _parts(system, "system", names)}
    config: dict[str, Any] = {}
    for src, dst in (
        ("max_tokens", "maxOutputTokens"),
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
    ):
        value = body.get(src)
        if isinstance(value, int | float) and not isinstance(value, bool):
            config[dst] = value
    if isinstance(body.get("stop_sequences"), list) and body["stop_sequences"]:
        config["stopSequences"] = [s for s in body["stop_sequences"] if isinstance(s, str)]
    if config:
        out["generationConfig"] = config
    tools, tool_config = _tools(body)
    if tools is not None:
        out["tools"] = tools
    if tool_config is not None:
        out["toolConfig"] = tool_config
    return out


def stop_reason(reason: Any, *, called: bool) -> str:
    mapped = _STOP.get(reason, "refusal") if isinstance(reason, str) else "end_turn"
    if reason == "OTHER" or reason == "FINISH_REASON_UNSPECIFIED":
        mapped = "end_turn"
    return "tool_use" if called and mapped == "end_turn" else mapped


def _blocks(candidate: dict[str, Any], first: int = 0) -> list[dict[str, Any]]:
    """Anthropic content blocks from a candidate's parts: its text (thoughts left out), then its
    function calls (ids made up from their index when Gemini gives none)."""
    blocks: list[dict[str, Any]] = []
    for call in vertex.tool_calls_of(candidate, first):
        made_up = call["id"].startswith("call_")
        blocks.append(
            {
                "type": "tool_use",
                "id": "toolu_" + call["id"].removeprefix("call_") if made_up else call["id"],
                "name": call["function"]["name"],
                "input": json.loads(call["function"]["arguments"]),
            }
        )
    text = vertex.text_of(candidate)
    return ([{"type": "text", "text": text}] if text else []) + blocks


class MessagesGemini:
    """The adapter for (`messages`, `vertex`) on a Gemini model."""

    credential_headers: ClassVar[tuple[str, ...]] = ("authorization",)

    def check(self, body: dict[str, Any]) -> Refused | None:
        try:
            messages_to_gemini(body)
        except Refused as exc:
            return exc
        return None

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        body = json.dumps(messages_to_gemini(attempt.body or {}), separators=(",", ":"), ensure_ascii=False)
        method = "streamGenerateContent?alt=sse" if attempt.stream else "generateContent"
        headers = {"content-type": _JSON, **bearer(attempt)}
        return UpstreamRequest(
            path=vertex.model_path(attempt.backend, method), set_headers=headers, body=body.encode()
        )

    def is_stream(self, status: int, content_type: str) -> bool:
        return 200 <= status < 300 and is_sse(content_type)

    def stream_headers(self) -> dict[str, str]:
        return {}

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        parsed = gemini_answer(status, body, self.error_body)
        if isinstance(parsed, ClientAnswer):
            return parsed
        candidates = parsed["candidates"]
        candidate = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
        content = _blocks(candidate)
        stop = stop_reason(
            candidate.get("finishReason"), called=any(b["type"] == "tool_use" for b in content)
        )
        usage = vertex.usage_from_gemini(parsed.get("usageMetadata"))
        version = parsed.get("modelVersion")
        message = anthropic_out.message(
            model=version if isinstance(version, str) else "", content=content, stop_reason=stop, usage=usage
        )
        return translated(message, usage, finish_reason=stop, text=anthropic_out.text_of(content))

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> GeminiMessagesStream:
        return GeminiMessagesStream(model=client_model, on_event=on_event)

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        message = vertex.error_to_openai(status, body)["error"]["message"]
        return anthropic_error_body(status, message), _JSON


class GeminiMessagesStream:
    """One `streamGenerateContent?alt=sse` answer as Anthropic Messages SSE events (a `StreamReader`)."""

    def __init__(self, *, model: str, on_event: Callable[[bytes | None, bytes], None] | None = None) -> None:
        self._blocks = SseBlocks()
        self._out = anthropic_out.MessagesEvents(model=model, on_event=on_event)
        self._model = model
        self._index = 0  # the next content block's index
        self._text_open = False
        self._called = False
        self._stop: str | None = None
        self._usage: TokenUsage | str = "the stream carried no usageMetadata"
        self._chunks = 0
        self._started = self._complete = self._ended = False
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        return self._complete

    def feed(self, chunk: bytes) -> bytes:
        if self._ended:
            return b""
        out = bytearray()
        for event in self._blocks.feed(chunk):
            if event.data is not None and not self._ended:
                out += self._translate(event.data)
        return bytes(out)

    def flush(self) -> bytes:
        if self._ended:
            return b""
        last = self._blocks.flush()
        out = self._translate(last.data) if last is not None and last.data is not None else b""
        if not self._ended and self._stop is not None:
            return out + self._end()
        if not self._ended:
            self._note("stream ended before Gemini's finishReason")
        return out

    def finish(self) -> ParsedStream:
        usage = self._usage if isinstance(self._usage, TokenUsage) else None
        error = self.error
        if error is None and not self._complete:
            error = "stream ended before Gemini's finishReason"
        if error is None and usage is None:
            error = str(self._usage)
        return ParsedStream(
            usage=usage,
            model=self._model or None,
            finish_reasons=(self._stop,) if self._stop else (),
            complete=self._complete,
            error=error,
            output_chunks=self._chunks,
        )

    def _close_text(self) -> bytes:
        if not self._text_open:
            return b""
        self._text_open = False
        self._index += 1
        return self._out.block_stop(self._index - 1)

    def _translate(self, data: bytes) -> bytes:
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            self._note("event data is not JSON")
            return b""
        if not isinstance(event, dict):
            return b""
        if isinstance(event.get("error"), dict):
            self._note(f"provider error: {event['error'].get('status') or 'error'}")
            self._ended = True
            return self._out.error(vertex.error_to_openai(500, event)["error"]["message"])
        out = bytearray()
        if not self._started:
            self._started = True
            out += self._out.start()
        if "usageMetadata" in event:
            self._usage = vertex.usage_from_gemini(event["usageMetadata"])
        candidates = event.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else {}
        candidate = candidate if isinstance(candidate, dict) else {}
        text = vertex.text_of(candidate)
        if text:
            if not self._text_open:
                self._text_open = True
                out += self._out.block_start(self._index, {"type": "text", "text": ""})
            self._chunks += 1
            out += self._out.text_delta(self._index, text)
        calls = {"content": {"parts": [p for p in _parts_of(candidate) if "functionCall" in p]}}
        if calls["content"]["parts"]:
            out += self._close_text()  # first: the calls' blocks take the indexes after it
        for block in _blocks(calls, self._index):
            self._called, self._chunks = True, self._chunks + 1
            arguments = json.dumps(block["input"], separators=(",", ":"))
            i = self._index
            out += self._out.block_start(i, {**block, "input": {}})
            out += self._out.json_delta(i, arguments)
            out += self._out.block_stop(i)
            self._index += 1
        if candidate.get("finishReason") is not None and self._stop is None:
            self._stop = stop_reason(candidate["finishReason"], called=self._called)
        if self._stop is not None and isinstance(self._usage, TokenUsage):
            out += self._end()
        return bytes(out)

    def _end(self) -> bytes:
        self._complete = self._ended = True
        usage = self._usage if isinstance(self._usage, TokenUsage) else None
        return self._close_text() + self._out.end(self._stop, usage)

    def _note(self, error: str) -> None:
        if self.error is None:
            self.error = error


def _parts_of(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
