"""Token usage from provider responses: whole JSON bodies, and SSE streams parsed incrementally.

Pure: no I/O, no clock, no logging. No function here raises on any input bytes; what could not be read
is reported in an `error` field instead.

Two usage shapes exist:

- OpenAI (`openai`, `openai-compatible`, `azure-openai`, `gemini`): `prompt_tokens` (includes
  `prompt_tokens_details.cached_tokens`), `completion_tokens` (includes
  `completion_tokens_details.reasoning_tokens`), `total_tokens`. Embeddings report only
  `prompt_tokens` and `total_tokens`. The Responses API's `input_tokens`/`output_tokens` spelling is
  read too.
- Anthropic Messages: `input_tokens` excludes cache reads and writes, which are reported beside it as
  `cache_read_input_tokens` and `cache_creation_input_tokens`. `TokenUsage.input_tokens` sums all
  three, as genai-prices' Anthropic extractor does.

Gemini through its OpenAI-compatible endpoint (`…/v1beta/openai/`). Google documents thinking for the
native API only: `usageMetadata.thoughtsTokenCount` is reported apart from `candidatesTokenCount`, and
"response pricing is the sum of output tokens and thinking tokens" (ai.google.dev/gemini-api/docs/
thinking); `totalTokenCount` covers prompt, candidates, thoughts and tool-use prompts. The
OpenAI-compatibility page (ai.google.dev/gemini-api/docs/openai) says nothing about how usage is
mapped. What the endpoint is publicly reported to send (discuss.ai.google.dev, thread 127400,
"…/v1beta/openai/chat/completions is not compliant with API specs", Feb 2026) is
`{"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 103}`: `completion_tokens` leaves the
thought tokens out, no `completion_tokens_details.reasoning_tokens` is given, and only `total_tokens`
includes them. The same report shows the stream carrying a cumulative `usage` on every chunk rather
than one usage-only chunk. Third-party gateways translating the native API disagree among themselves
(some fold thoughts into `completion_tokens`, some only into `reasoning_tokens`). So, for every
OpenAI-shape provider: output tokens are `max(completion_tokens, total_tokens - prompt_tokens)`, and
any excess of `total_tokens` over `prompt_tokens + completion_tokens` is counted as reasoning (thought)
tokens. OpenAI's own contract is `total = prompt + completion`, so this changes nothing there, and if
Google starts including thoughts in `completion_tokens` the excess simply becomes zero. For streams the
last usage seen wins, which is right both for OpenAI's single final usage and for Gemini's cumulative
per-chunk usage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from tollway_sidecar.config.models import Provider

__all__ = [
    "ANTHROPIC_SHAPE",
    "MAX_EVENT_BYTES",
    "ParsedResponse",
    "ParsedStream",
    "SseParser",
    "TokenUsage",
    "parse_json",
    "read_json",
    "read_response",
    "responses_finish",
    "usage_from_anthropic",
    "usage_from_openai",
]

# Providers whose responses use the Anthropic Messages shape; every other provider uses OpenAI's.
ANTHROPIC_SHAPE: Final[frozenset[str]] = frozenset({"anthropic"})

_ERROR_TEXT_LIMIT: Final = 200


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens of one call.

    `input_tokens` counts every prompt token, cache reads and cache writes included;
    `output_tokens` counts every completion token, reasoning included. The other counts are parts of
    those two. `cache_write_1h_tokens` is the part of `cache_write_tokens` written with Anthropic's
    one-hour TTL, which is billed at a higher rate than the default five-minute writes.
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"TokenUsage.{name} must be a non-negative int, got {value!r}")

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens neither read from nor written to a cache."""
        return max(0, self.input_tokens - self.cache_read_tokens - self.cache_write_tokens)


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    """What a whole (non-streamed) response body says. `error` says why `usage` is None."""

    usage: TokenUsage | None
    model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedStream:
    """What a streamed response said.

    `complete` is True once the provider's end marker was seen (`data: [DONE]`, Anthropic's
    `message_stop`). `error` is the first problem met (a provider error event, an undecodable event, a
    stream cut mid-event) or, failing that, why `usage` is None; usage may be present even when an
    error is reported. `output_chunks` counts content-bearing events, for estimating what a client was
    sent before the stream broke off.
    """

    usage: TokenUsage | None
    model: str | None
    finish_reasons: tuple[str, ...]
    complete: bool
    error: str | None
    output_chunks: int


# --------------------------------------------------------------------------------------------------
# Usage objects


class _Invalid(Exception):
    """A usage object that does not hold token counts."""


def _count(value: object) -> int | None:
    """A token count, or None for a missing/null value. Raises `_Invalid` for anything else."""
    if value is None:
        return None
    if type(value) is int and value >= 0:
        return value
    if type(value) is float and value >= 0 and value.is_integer():
        return int(value)
    raise _Invalid(f"not a token count: {value!r}"[:_ERROR_TEXT_LIMIT])


def _sub(details: object, key: str) -> int:
    if not isinstance(details, dict):
        return 0
    return _count(details.get(key)) or 0


def usage_from_openai(usage: object) -> TokenUsage | str:
    """TokenUsage from an OpenAI-shape `usage` object, or the reason there is none."""
    if not isinstance(usage, dict):
        return "usage is not an object"
    try:
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        if prompt is None and completion is None and "input_tokens" in usage:
            # The Responses API spells the same counts differently.
            prompt = _count(usage.get("input_tokens"))
            completion = _count(usage.get("output_tokens"))
            prompt_details = usage.get("input_tokens_details")
            completion_details = usage.get("output_tokens_details")
        else:
            prompt_details = usage.get("prompt_tokens_details")
            completion_details = usage.get("completion_tokens_details")
        if prompt is None:
            return "usage has no prompt_tokens"
        output = completion or 0  # embeddings have no completion
        cache_read = _sub(prompt_details, "cached_tokens")
        cache_write = _sub(prompt_details, "cache_write_tokens")
        reasoning = _sub(completion_details, "reasoning_tokens")
        total = _count(usage.get("total_tokens"))
    except _Invalid as exc:
        return f"invalid usage: {exc}"
    if total is not None and total > prompt + output:
        # Gemini's OpenAI-compatible endpoint leaves thought tokens out of completion_tokens and
        # reports them only in total_tokens; see the module docstring.
        hidden = total - prompt - output
        output += hidden
        reasoning = max(reasoning, hidden)
    cache_read = min(cache_read, prompt)
    cache_write = min(cache_write, prompt - cache_read)
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=min(reasoning, output),
    )


def usage_from_anthropic(usage: object) -> TokenUsage | str:
    """TokenUsage from an Anthropic Messages `usage` object, or the reason there is none."""
    if not isinstance(usage, dict):
        return "usage is not an object"
    try:
        uncached = _count(usage.get("input_tokens"))
        output = _count(usage.get("output_tokens"))
        cache_read = _count(usage.get("cache_read_input_tokens")) or 0
        cache_write = _count(usage.get("cache_creation_input_tokens"))
        by_ttl = usage.get("cache_creation")
        write_1h = _sub(by_ttl, "ephemeral_1h_input_tokens")
        if cache_write is None:
            cache_write = _sub(by_ttl, "ephemeral_5m_input_tokens") + write_1h
        reasoning = _sub(usage.get("output_tokens_details"), "thinking_tokens")
    except _Invalid as exc:
        return f"invalid usage: {exc}"
    if uncached is None:
        return "usage has no input_tokens"
    if output is None:
        return "usage has no output_tokens"
    return TokenUsage(
        input_tokens=uncached + cache_read + cache_write,
        output_tokens=output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=min(reasoning, output),
        cache_write_1h_tokens=min(write_1h, cache_write),
    )


def _usage_for(anthropic: bool, usage: object) -> TokenUsage | str:
    return usage_from_anthropic(usage) if anthropic else usage_from_openai(usage)


def _provider_error(obj: dict[str, Any]) -> str | None:
    """`type: message` of an error body or event (OpenAI `{"error": {...}}`, Anthropic
    `{"type": "error", "error": {...}}`), or None when `obj` is not one."""
    error = obj.get("error")
    if error is None:
        return None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or error.get("status") or "error"
        message = error.get("message") or ""
        text = f"{kind}: {message}" if message else str(kind)
    else:
        text = str(error)
    return f"provider error: {text}"[:_ERROR_TEXT_LIMIT]


def responses_finish(response: Any) -> tuple[str, ...]:
    """A Responses API `response` object's end, in chat completions' finish reasons: `tool_calls`
    when it asks for function calls, `length` / `content_filter` when incomplete for that reason."""
    if not isinstance(response, dict):
        return ()
    status = response.get("status")
    if status == "incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return ("length",) if reason == "max_output_tokens" else (str(reason or "incomplete"),)
    if status != "completed":
        return (str(status),) if isinstance(status, str) else ()
    output = response.get("output")
    calls = isinstance(output, list) and any(
        isinstance(item, dict) and item.get("type") == "function_call" for item in output
    )
    return ("tool_calls",) if calls else ("stop",)


def _finish_reasons(obj: dict[str, Any]) -> list[str]:
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return []
    return [
        reason
        for choice in choices
        if isinstance(choice, dict) and isinstance(reason := choice.get("finish_reason"), str)
    ]


# --------------------------------------------------------------------------------------------------
# Whole bodies


def parse_json(provider: Provider | str, body: bytes) -> ParsedResponse:
    """Usage, model and finish reasons of a whole JSON response body. Never raises."""
    try:
        return _parse_json(provider in ANTHROPIC_SHAPE, body)
    except Exception as exc:  # last-resort guard: the contract is "never raises"
        return ParsedResponse(None, error=f"unreadable body ({type(exc).__name__})")


def _parse_json(anthropic: bool, body: bytes) -> ParsedResponse:
    return read_json(anthropic, body)[1]


def read_json(anthropic: bool, body: bytes) -> tuple[Any, ParsedResponse]:
    """The decoded body (None when it is not JSON) and what it says, in one decode. Never raises."""
    try:
        if not body.strip():
            return None, ParsedResponse(None, error="empty body")
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            return None, ParsedResponse(None, error="body is not JSON")
        return obj, read_response(anthropic, obj)
    except Exception as exc:  # last-resort guard: the contract is "never raises"
        return None, ParsedResponse(None, error=f"unreadable body ({type(exc).__name__})")


def read_response(anthropic: bool, obj: Any) -> ParsedResponse:
    """Usage, model and finish reasons of a decoded response body (Anthropic's shape or OpenAI's)."""
    if not isinstance(obj, dict):
        return ParsedResponse(None, error="body is not a JSON object")
    model = obj.get("model")
    model = model if isinstance(model, str) and model else None
    if (error := _provider_error(obj)) is not None:
        return ParsedResponse(None, model, error=error)
    if anthropic:
        stop = obj.get("stop_reason")
        finish: tuple[str, ...] = (stop,) if isinstance(stop, str) else ()
    else:
        finish = tuple(_finish_reasons(obj))
    if obj.get("usage") is None:
        return ParsedResponse(None, model, finish, error="no usage field")
    usage = _usage_for(anthropic, obj["usage"])
    if isinstance(usage, str):
        return ParsedResponse(None, model, finish, error=usage)
    return ParsedResponse(usage, model, finish)


# --------------------------------------------------------------------------------------------------
# Streams

# Cheap tests on an event's raw data, so that only the few events that matter are JSON-decoded. A
# pattern that starts with an unescaped quote cannot match inside a JSON string (whose quotes are all
# escaped), so these only ever see object keys.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*(?:\[\s*\]|null)')
_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)+)"')
_CONTENT = re.compile(rb'"(?:content|arguments|refusal|reasoning_content|reasoning)"\s*:\s*"(?!")')
_EVENT_TYPE = re.compile(rb'"type"\s*:\s*"([A-Za-z_]+)"')
_RESPONSES_TYPE = re.compile(rb'"type"\s*:\s*"([A-Za-z_.]+)"')
# Responses API events that end a response (each carries the whole response, usage included), and
# those that carry output text or arguments.
_RESPONSES_END: Final = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
_RESPONSES_OUTPUT: Final = frozenset(
    {
        b"response.output_text.delta",
        b"response.refusal.delta",
        b"response.function_call_arguments.delta",
        b"response.reasoning_summary_text.delta",
        b"response.reasoning_text.delta",
    }
)
# `"usage": null` as a member of an object (OpenAI puts it on every chunk once
# `stream_options.include_usage` is set). The pattern starts with a literal, which `re` finds fast; the
# separator around the member is handled by `_without_usage_null`.
_USAGE_NULL = re.compile(rb'"usage"[ \t]*:[ \t]*null(?=[ \t]*[,}])')

# An incomplete event is buffered up to this size; beyond it the stream is passed through unread.
MAX_EVENT_BYTES: Final = 16 * 1024 * 1024
_DONE: Final = b"[DONE]"
_KNOWN_FIELDS: Final = frozenset({b"data", b"event", b"id", b"retry"})
_DROP: Final = b""  # a dispatch result: leave the event out of the forwarded bytes


class SseParser:
    """Reads one streamed response as it passes, chunk by chunk.

    `feed(chunk)` returns the bytes to forward to the client in place of `chunk`, or None for "forward
    `chunk` unchanged". Without `strip_usage_chunk` it always returns None and only observes. With it
    (the gateway added `stream_options.include_usage` the client did not ask for), the OpenAI
    usage-only chunk (`"choices": []` with a usage object) is removed, as is the `"usage": null`
    member OpenAI adds to every other chunk, so the client receives what the provider would have sent
    it; every other byte is forwarded as it came. An event split across chunks is held back until it
    is complete, so a returned value may be shorter than the chunk, or empty. At the end of the stream
    call `flush()` for any held-back bytes, then `finish()` for what was read.

    Lines may end in `\\n` or `\\r\\n` (a lone `\\r` is not treated as a line end); `data:` may span
    several lines; comments (`: ping`), `event:`, `id:` and `retry:` lines are understood. Chunk
    boundaries may fall anywhere, even inside a UTF-8 sequence. Only events that can carry usage, the
    model, a finish reason or an error are JSON-decoded; each byte is scanned a bounded number of times.

    `on_event(name, data)` (optional) is called with every dispatched event's `event:` name (None when
    it has none) and its joined `data:` lines, in order: a reader that needs the whole content (the
    response cache) reuses this framing instead of splitting the stream a second way.
    """

    __slots__ = (
        "_anthropic",
        "_anthropic_usage",
        "_buf",
        "_chunks",
        "_complete",
        "_data",
        "_ended",
        "_error",
        "_event",
        "_finish",
        "_model",
        "_on_event",
        "_owed",
        "_pos",
        "_responses",
        "_scan",
        "_strip",
        "_usage_src",
    )

    def __init__(
        self,
        provider: Provider | str,
        *,
        strip_usage_chunk: bool = False,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
        responses: bool = False,
    ) -> None:
        self._anthropic = provider in ANTHROPIC_SHAPE
        self._responses = responses and not self._anthropic  # the Responses API's typed events
        self._on_event = on_event
        self._strip = strip_usage_chunk and not self._anthropic
        self._buf = bytearray()  # from the start of the first event not yet complete
        self._pos = 0  # start of the first line in _buf not yet read
        self._scan = 0  # where to resume looking for a line end
        self._data: list[bytes] = []  # `data:` lines of the event being read
        self._event: bytes | None = None  # its `event:` name
        self._model: str | None = None
        self._finish: list[str] = []
        self._complete = False
        self._error: str | None = None
        self._chunks = 0
        self._usage_src: object = None  # the last usage seen: decoded, or raw event data to decode
        self._anthropic_usage: dict[str, Any] | None = None
        self._ended = False
        self._owed = b""  # held-back bytes still to forward once the stream has ended (stripping)

    # ---- public

    @property
    def complete(self) -> bool:
        """True once the provider's end marker (`[DONE]`, `message_stop`) has been read: the usage is
        final, and `finish()` may be called before the transport reports the end of the stream."""
        return self._complete

    def feed(self, chunk: bytes) -> bytes | None:
        """The bytes to forward in place of `chunk`; None to forward `chunk` unchanged."""
        if self._ended:
            # After finish(): pass everything through, after any bytes still held back.
            if self._owed:
                owed, self._owed = self._owed, b""
                return owed + chunk
            return None
        try:
            return self._feed(chunk)
        except Exception as exc:  # last-resort guard: a parser bug must not break the stream
            self._note(f"parser failure ({type(exc).__name__})")
            held = bytes(self._buf) if self._strip else None  # held back, never forwarded
            self._ended = True
            self._buf = bytearray()
            return held

    def flush(self) -> bytes:
        """At the end of the stream: the held-back bytes still owed to the client (stripping only).

        That is a last event which never got its terminating blank line: it is read (and stripped)
        when its lines are complete, forwarded as it came when it was cut off mid-line. Safe to call
        before or after `finish()`, and more than once.
        """
        self._end()
        owed, self._owed = self._owed, b""
        return owed

    def finish(self) -> ParsedStream:
        """What the stream said. Call after the last `feed`, or as soon as `complete` is True; bytes
        fed afterwards are passed through unread."""
        try:
            self._end()
            return self._result()
        except Exception as exc:  # last-resort guard
            self._note(f"parser failure ({type(exc).__name__})")
            return ParsedStream(
                None, self._model, tuple(self._finish), self._complete, self._error, self._chunks
            )

    # ---- framing

    def _feed(self, chunk: bytes) -> bytes | None:
        if not chunk:
            return None
        buf = self._buf
        held = len(buf)
        buf += chunk
        strip = self._strip
        out = bytearray() if strip else None
        changed = False
        event_start = 0
        pos = self._pos
        scan = self._scan
        while (nl := buf.find(b"\n", scan)) >= 0:
            end = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
            if end == pos:  # blank line: the event is complete
                result = self._dispatch(buf, event_start, nl + 1)
                if out is not None:
                    if result is None:
                        out += buf[event_start : nl + 1]
                    else:
                        out += result
                        changed = True
                event_start = nl + 1
            else:
                self._field(buf[pos:end])
            pos = scan = nl + 1
        if event_start:
            del buf[:event_start]
        self._pos = pos - event_start
        self._scan = len(buf)
        if len(buf) > MAX_EVENT_BYTES:
            # Not an event stream this parser can follow: stop reading, forward what is held.
            self._note("event too large")
            self._ended = True
            self._buf = bytearray()
            if out is None:
                return None
            out += buf
            changed = True
        if out is None or (not changed and not held and not self._buf):
            return None
        return bytes(out)

    def _field(self, line: bytearray) -> None:
        if line[0] == 0x3A:  # ":" starts a comment
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = bytes(line), b""
        else:
            name = bytes(line[:colon])
            value = bytes(line[colon + 2 :] if line[colon + 1 : colon + 2] == b" " else line[colon + 1 :])
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name not in _KNOWN_FIELDS:
            self._note("unexpected line in event stream")

    def _dispatch(self, buf: bytearray, start: int, end: int) -> bytes | None:
        """Read a complete event; return None to forward it as it is, or the bytes to forward."""
        lines, event = self._data, self._event
        self._data, self._event = [], None
        if not lines:
            return None  # comments or empty lines only: nothing is dispatched
        data = lines[0] if len(lines) == 1 else b"\n".join(lines)
        if self._on_event is not None:
            self._on_event(event, data)
        if self._anthropic:
            self._anthropic_event(event, data)
            return None
        if self._responses:
            self._responses_event(event, data)
            return None
        return self._openai_event(data, buf, start, end)

    # ---- OpenAI shape

    def _openai_event(self, data: bytes, buf: bytearray, start: int, end: int) -> bytes | None:
        body = data.strip()
        if body == _DONE:
            self._complete = True
            return None
        if not (body.startswith(b"{") and body.endswith(b"}")):
            self._note("event data is not JSON")
            return None
        # Beyond that, events are decoded (and so validated) only when they can carry what is read.
        if self._model is None and (match := _MODEL.search(body)) is not None:
            self._model = _json_string(match.group(1))
        obj: Any = None
        if _FINISH_REASON.search(body) is not None or b'"error"' in body:
            obj = self._decode(body)
            if isinstance(obj, dict):
                if (error := _provider_error(obj)) is not None:
                    self._note(error)
                self._finish.extend(_finish_reasons(obj))
        if _CONTENT.search(body) is not None:
            self._chunks += 1
        if _USAGE_OBJECT.search(body) is not None:
            if self._strip and (_EMPTY_CHOICES.search(body) is not None or b'"choices"' not in body):
                obj = self._decode(body) if obj is None else obj
                if isinstance(obj, dict) and isinstance(obj.get("usage"), dict) and not obj.get("choices"):
                    self._usage_src = obj["usage"]
                    return _DROP  # the usage-only chunk the client did not ask for
            if isinstance(obj, dict):
                if isinstance(obj.get("usage"), dict):
                    self._usage_src = obj["usage"]
            else:
                # Decoded only if it is still the last usage when the stream ends: Gemini repeats a
                # cumulative usage on every chunk.
                self._usage_src = body
            return None
        if self._strip and b'"usage"' in body:
            return _without_usage_null(bytes(buf[start:end]))
        return None

    # ---- the Responses API

    def _responses_event(self, event: bytes | None, data: bytes) -> None:
        if event is None or event == b"message":
            match = _RESPONSES_TYPE.search(data)
            event = match.group(1) if match is not None else b""
        if event in _RESPONSES_OUTPUT:
            self._chunks += 1
        elif event in _RESPONSES_END or event == b"error":
            obj = self._decode(data)
            if not isinstance(obj, dict):
                return
            if event == b"error":  # {"type": "error", "code", "message", "param"}
                code, message = obj.get("code") or "error", obj.get("message") or ""
                self._note(f"provider error: {code}: {message}"[:_ERROR_TEXT_LIMIT])
                return
            response = obj.get("response")
            if not isinstance(response, dict):
                self._note("end event without a response")
                return
            self._complete = True
            model = response.get("model")
            if isinstance(model, str) and model:
                self._model = model
            self._finish.extend(responses_finish(response))
            if (error := _provider_error(response)) is not None:
                self._note(error)
            if isinstance(response.get("usage"), dict):
                self._usage_src = response["usage"]
        elif self._model is None and event == b"response.created":
            if (match := _MODEL.search(data)) is not None:
                self._model = _json_string(match.group(1))
        elif event == b"":
            self._note("event without a type")

    # ---- Anthropic shape

    def _anthropic_event(self, event: bytes | None, data: bytes) -> None:
        if event is None or event == b"message":
            match = _EVENT_TYPE.search(data)
            event = match.group(1) if match is not None else b""
        if event == b"content_block_delta":
            self._chunks += 1
        elif event == b"message_stop":
            self._complete = True
        elif event in (b"message_start", b"message_delta", b"error"):
            obj = self._decode(data)
            if not isinstance(obj, dict):
                return
            if event == b"message_start":
                message = obj.get("message")
                if isinstance(message, dict):
                    model = message.get("model")
                    if isinstance(model, str) and model:
                        self._model = model
                    if isinstance(usage := message.get("usage"), dict):
                        self._anthropic_usage = dict(usage)
            elif event == b"message_delta":
                delta = obj.get("delta")
                if isinstance(delta, dict) and isinstance(stop := delta.get("stop_reason"), str):
                    self._finish.append(stop)
                if isinstance(usage := obj.get("usage"), dict):
                    # Counts in message_delta are cumulative; a field left out or null keeps its value.
                    merged = self._anthropic_usage if self._anthropic_usage is not None else {}
                    merged.update((key, value) for key, value in usage.items() if value is not None)
                    self._anthropic_usage = merged
            else:
                self._note(_provider_error(obj) or "provider error")
        elif event == b"":
            self._note("event without a type")
        # ping, content_block_start/stop and event types added later carry nothing read here.

    # ---- end of stream

    def _end(self) -> None:
        """Read what is left of the stream, once; keep the bytes still to forward in `_owed`."""
        if self._ended:
            return
        self._ended = True
        buf, self._buf = self._buf, bytearray()
        if not buf:
            return
        owed: bytes = bytes(buf)
        if buf[self._pos :].strip():
            if not self._complete:  # bytes after the end marker do not matter
                self._note("stream ended mid-event")
        elif self._data:
            # Complete lines without the terminating blank line: read them, as lenient clients do.
            result = self._dispatch(buf, 0, len(buf))
            if result is not None:
                owed = result
        if self._strip:
            self._owed = owed

    def _result(self) -> ParsedStream:
        usage: TokenUsage | None = None
        reason: str
        if self._anthropic:
            src: object = self._anthropic_usage
        else:
            src = self._usage_src
            if isinstance(src, bytes):
                obj = self._decode(src)
                src = obj.get("usage") if isinstance(obj, dict) else None
        if src is None:
            reason = "no usage in stream" if self._complete else "stream ended before usage"
        else:
            result = _usage_for(self._anthropic, src)
            if isinstance(result, str):
                reason = result
            else:
                usage = result
        error = self._error
        if error is None and usage is None:
            error = reason
        elif error is None and not self._complete:
            error = "stream ended before its end marker"
        return ParsedStream(
            usage=usage,
            model=self._model,
            finish_reasons=tuple(self._finish),
            complete=self._complete,
            error=error,
            output_chunks=self._chunks,
        )

    # ---- helpers

    def _decode(self, data: bytes) -> Any:
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            self._note("event data is not JSON")
            return None

    def _note(self, error: str) -> None:
        if self._error is None:
            self._error = error


def _without_usage_null(raw: bytes) -> bytes | None:
    """`raw` without its `"usage": null` members (and the comma that separated each), or None when it
    has none. Bytes outside those members are kept as they are."""
    pieces: list[bytes] = []
    kept_from = 0
    for match in _USAGE_NULL.finditer(raw):
        start, end = match.span()
        before = start
        while before > kept_from and raw[before - 1] in b" \t":
            before -= 1
        if before > kept_from and raw[before - 1] == 0x2C:  # `,"usage":null`: drop the comma before
            cut_from, cut_to = before - 1, end
        elif before > kept_from and raw[before - 1] == 0x7B:  # `{"usage":null, …`: drop the comma after
            cut_from, cut_to = before, end
            while cut_to < len(raw) and raw[cut_to] in b" \t":
                cut_to += 1
            if cut_to < len(raw) and raw[cut_to] == 0x2C:
                cut_to += 1
                while cut_to < len(raw) and raw[cut_to] in b" \t":
                    cut_to += 1
        else:
            continue  # not where an object member starts: leave it
        pieces.append(raw[kept_from:cut_from])
        kept_from = cut_to
    if not pieces:
        return None
    pieces.append(raw[kept_from:])
    return b"".join(pieces)


def _json_string(raw: bytes) -> str | None:
    try:
        value = json.loads(b'"' + raw + b'"')
    except ValueError:
        return None
    return value if isinstance(value, str) and value else None
