"""OpenAI chat completions clients → Google Vertex AI: Gemini (`ChatVertex`) and Claude (`ChatVertexClaude`).

Both authenticate with `Authorization: Bearer <access token>`: the backend's credential is refreshed
from its service-account key in the background (`providers.refresh`, `providers.google_auth`).

Gemini: the request is translated (`providers.vertex.chat_to_gemini`) and sent to `:generateContent`,
or `:streamGenerateContent?alt=sse` for a stream. A JSON answer becomes a `chat.completion`; the SSE
stream (each event a whole `GenerateContentResponse`) becomes `chat.completion.chunk` events:

- the first event → a chunk with `delta: {role: "assistant", content: ""}`;
- text parts → `delta.content` (thought parts → nothing); `functionCall` parts → a whole
  `delta.tool_calls[]` entry each (Gemini sends a call's arguments at once);
- the event with a `finishReason` → `delta: {}` with the mapped reason; then, once a
  `usageMetadata` has been seen (with the finish, as Vertex sends it, or after it), the usage chunk
  (`choices: []`, unless the gateway asked for usage on the client's behalf: `strip_usage_chunk`)
  and `[DONE]` (at the stream's end without usage, `[DONE]` alone);
- an error event → `data: {"error": {…}}` in OpenAI's shape.

Claude (`claude-*` models): the chat → Anthropic translation of `adapters.anthropic` sent to
`:rawPredict` / `:streamRawPredict`, the body without `model` and with `anthropic_version`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final

from tollway_sidecar.providers import vertex
from tollway_sidecar.providers.adapters.anthropic import AnthropicChat
from tollway_sidecar.providers.adapters.base import (
    AttemptRequest,
    ClientAnswer,
    Refused,
    UpstreamRequest,
    translated,
    untranslatable,
)
from tollway_sidecar.providers.adapters.openai import is_sse, not_json
from tollway_sidecar.providers.anthropic import TranslationError, chat_to_messages
from tollway_sidecar.providers.chat_out import ChunkWriter, call_id
from tollway_sidecar.providers.sse_blocks import SseBlocks
from tollway_sidecar.providers.usage import ParsedStream, TokenUsage

__all__ = ["ChatVertex", "ChatVertexClaude", "GeminiStreamReader", "bearer", "gemini_answer"]

_JSON: Final = "application/json"


def bearer(attempt: AttemptRequest) -> dict[str, str]:
    return {"authorization": f"Bearer {attempt.credential}"} if attempt.credential else {}


def gemini_answer(
    status: int, body: bytes, error_body: Callable[[int, bytes], tuple[bytes, str]]
) -> dict[str, Any] | ClientAnswer:
    """A `generateContent` answer's JSON (an object with `candidates`); or what the client receives in
    its place: the error answer for a failure (`error_body`), a 502 for a body that is not one."""
    if not 200 <= status < 300:
        error, ct = error_body(status, body)
        return ClientAnswer(body=error, content_type=ct, usage=None, error=f"Vertex answered {status}")
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ClientAnswer(None, None, None, error="not JSON", bad_gateway=not_json(status))
    if not isinstance(parsed, dict) or not isinstance(parsed.get("candidates"), list):
        return untranslatable(status, "generateContent")
    return parsed


class ChatVertex:
    """The adapter for (`chat`, `vertex`) on a Gemini model."""

    credential_headers: ClassVar[tuple[str, ...]] = ("authorization",)

    def check(self, body: dict[str, Any]) -> Refused | None:
        try:
            vertex.chat_to_gemini(body)
        except vertex.VertexRefusal as exc:
            return Refused(exc.message, exc.param)
        return None

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        try:
            gemini = vertex.chat_to_gemini(attempt.body or {})
        except vertex.VertexRefusal as exc:
            raise Refused(exc.message, exc.param) from None
        method = "streamGenerateContent?alt=sse" if attempt.stream else "generateContent"
        body = json.dumps(gemini, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"content-type": _JSON, **bearer(attempt)}
        return UpstreamRequest(
            path=vertex.model_path(attempt.backend, method), set_headers=headers, body=body
        )

    def is_stream(self, status: int, content_type: str) -> bool:
        return 200 <= status < 300 and is_sse(content_type)

    def stream_headers(self) -> dict[str, str]:
        return {}

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        parsed = gemini_answer(status, body, self.error_body)
        if isinstance(parsed, ClientAnswer):
            return parsed
        read = vertex.gemini_to_chat(parsed, model="", created=int(time.time()), call_id=call_id())
        if read is None:  # not reached: gemini_answer checked the shape gemini_to_chat reads
            return untranslatable(status, "generateContent")
        chat, usage = read
        choice = chat["choices"][0]
        return translated(
            chat,
            usage,
            finish_reason=choice["finish_reason"],
            text=choice["message"]["content"],
            model=chat["model"] or None,
        )

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> GeminiStreamReader:
        return GeminiStreamReader(
            model=client_model,
            include_usage=not strip_usage_chunk,
            created=int(time.time()),
            on_event=on_event,
        )

    def error_body(self, status: int, body: bytes) -> tuple[bytes, str]:
        return json.dumps(vertex.error_to_openai(status, body), separators=(",", ":")).encode(), _JSON


class GeminiStreamReader:
    """One `streamGenerateContent?alt=sse` answer, read into chat completion chunks (a `StreamReader`)."""

    def __init__(
        self,
        *,
        model: str,
        include_usage: bool,
        created: int,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> None:
        self._blocks = SseBlocks()
        self._out = ChunkWriter(model=model, created=created, on_event=on_event)
        self._model, self._include_usage = model, include_usage
        self._started = False
        self._calls = 0  # tool calls sent so far (their OpenAI indexes)
        self._usage: TokenUsage | str = "the stream carried no usageMetadata"
        self._finish: list[str] = []
        self._chunks = 0
        self._complete = False
        self.error: str | None = None

    @property
    def complete(self) -> bool:
        return self._complete

    def feed(self, chunk: bytes) -> bytes:
        if self._complete:
            return b""
        out = bytearray()
        for event in self._blocks.feed(chunk):
            if event.data is not None:
                out += self._translate(event.data)
        if self._blocks.overflowed:
            self._blocks.overflowed = False
            self._note("an event exceeded the size limit")
        return bytes(out)

    def flush(self) -> bytes:
        if self._complete:
            return b""
        last = self._blocks.flush()
        out = self._translate(last.data) if last is not None and last.data is not None else b""
        if not self._complete and self._finish:
            return out + self._end()  # finished, but no usage came: the answer is whole all the same
        if not self._complete:
            self._note("stream ended before Gemini's finishReason")
        return out

    def finish(self) -> ParsedStream:
        error = self.error
        if error is None and not self._complete:
            error = "stream ended before Gemini's finishReason"
        usage = self._usage if isinstance(self._usage, TokenUsage) else None
        if error is None and usage is None:
            error = str(self._usage)
        return ParsedStream(
            usage=usage,
            model=self._model or None,
            finish_reasons=tuple(self._finish),
            complete=self._complete,
            error=error,
            output_chunks=self._chunks,
        )

    def _translate(self, data: bytes) -> bytes:
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            self._note("event data is not JSON")
            return b""
        if not isinstance(event, dict):
            self._note("event data is not an object")
            return b""
        if isinstance(event.get("error"), dict):
            self._note(f"provider error: {event['error'].get('status') or 'error'}")
            status = event["error"].get("code")
            return self._out.send(vertex.error_to_openai(status if isinstance(status, int) else 500, event))
        out = bytearray()
        if not self._started:
            self._started = True
            out += self._out.chunk({"role": "assistant", "content": ""})
        if "usageMetadata" in event:
            self._usage = vertex.usage_from_gemini(event["usageMetadata"])
        candidates = event.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else {}
        if not isinstance(candidate, dict):
            return bytes(out)
        text = vertex.text_of(candidate)
        if text:
            self._chunks += 1
            out += self._out.chunk({"content": text})
        calls = vertex.tool_calls_of(candidate, self._calls)
        if calls:
            self._chunks += 1
            out += self._out.chunk(
                {"tool_calls": [{"index": self._calls + i, **call} for i, call in enumerate(calls)]}
            )
            self._calls += len(calls)
        reason = vertex.finish_reason(candidate.get("finishReason"), called=self._calls > 0)
        if reason is not None and not self._finish:
            self._finish.append(reason)
            out += self._out.chunk({}, reason)
        if self._finish and isinstance(self._usage, TokenUsage):
            out += self._end()  # usage comes with the finish, or in an event after it
        return bytes(out)

    def _end(self) -> bytes:
        self._complete = True
        out = b""
        if isinstance(self._usage, TokenUsage) and self._include_usage:
            out = self._out.usage(vertex.usage_to_openai(self._usage))
        return out + self._out.done()

    def _note(self, error: str) -> None:
        if self.error is None:
            self.error = error


def claude_body(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages body as Claude on Vertex takes it: no `model` (it is in the path), and
    the `anthropic_version` field in place of the header."""
    out = {name: value for name, value in body.items() if name != "model"}
    out["anthropic_version"] = vertex.ANTHROPIC_VERSION
    return out


def claude_path(attempt: AttemptRequest) -> str:
    return vertex.model_path(attempt.backend, "streamRawPredict" if attempt.stream else "rawPredict")


class ChatVertexClaude(AnthropicChat):
    """The adapter for (`chat`, `vertex`) on a `claude-*` model: the Anthropic translation, Vertex's
    path, body and auth."""

    credential_headers: ClassVar[tuple[str, ...]] = ("authorization",)

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        try:
            translated = chat_to_messages(attempt.body or {}, attempt.backend.model)
        except TranslationError as exc:
            raise Refused(exc.message, exc.param) from exc
        body = json.dumps(claude_body(translated), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"content-type": _JSON, **bearer(attempt)}
        return UpstreamRequest(path=claude_path(attempt), set_headers=headers, body=body)
