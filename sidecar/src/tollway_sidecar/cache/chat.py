"""An OpenAI chat completion as the cache keeps it: read from a JSON answer, rendered as JSON or SSE. Pure.

Kept: every choice's text, reasoning (`reasoning_content`, or `reasoning` as some OpenAI-compatible
servers spell it; the spelling is kept), refusal, function tool calls and finish reason; the answer's
id, model, `created`, `system_fingerprint` and `service_tier`. Usage is rendered from the entry's
`TokenUsage`. A message carrying anything else (audio, annotations, log probabilities, a legacy
`function_call`) is `Unstorable`: replaying it without that part would be a different answer.
Envelope fields the replay does not need (Azure's `prompt_filter_results`) are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from tollway_sidecar.cache.sse import dumps, pieces
from tollway_sidecar.cache.unstorable import Unstorable
from tollway_sidecar.providers.usage import TokenUsage

__all__ = [
    "FINISHED",
    "REASONING_FIELDS",
    "ChatAnswer",
    "ChatChoice",
    "ToolCall",
    "chat_from_json",
    "chat_json",
    "chat_sse",
    "openai_usage",
]

FINISHED: Final = frozenset({"stop", "tool_calls"})  # finished normally or with tool calls
REASONING_FIELDS: Final = ("reasoning_content", "reasoning")
_MESSAGE_FIELDS: Final = frozenset({"role", "content", "refusal", "tool_calls", *REASONING_FIELDS})
# Message fields that may be present as long as they carry nothing (null, an empty list).
_EMPTY_OK: Final = frozenset({"annotations", "audio", "function_call"})


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text the model wrote, as it wrote it


@dataclass(frozen=True, slots=True)
class ChatChoice:
    index: int
    finish_reason: str
    content: str | None
    reasoning: str | None = None
    reasoning_field: str = "reasoning_content"
    refusal: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    id: str
    model: str
    created: int
    choices: tuple[ChatChoice, ...]
    system_fingerprint: str | None = None
    service_tier: str | None = None

    def check_finished(self) -> None:
        if not self.choices:
            raise Unstorable("answer has no choices")
        for choice in self.choices:
            if choice.finish_reason not in FINISHED:
                raise Unstorable(f"finish_reason {choice.finish_reason!r}")


def _str(obj: dict[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise Unstorable(f"{name} is not a string")
    return value


def _int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise Unstorable(f"{name} is not a non-negative integer")
    return value


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


def chat_from_json(obj: Any) -> ChatAnswer:
    """The answer in a `chat.completion` object; `Unstorable` when it cannot be replayed as it is."""
    if not isinstance(obj, dict):
        raise Unstorable("answer is not a JSON object")
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise Unstorable("answer has no choices")
    # Some OpenAI-compatible servers leave out `id` or `created`; the replay then has them empty.
    return ChatAnswer(
        id=_str(obj, "id", optional=True) or "",
        model=_str(obj, "model") or "",
        created=_int(obj.get("created", 0), "created"),
        choices=tuple(_choice(choice) for choice in choices),
        system_fingerprint=_str(obj, "system_fingerprint", optional=True),
        service_tier=_str(obj, "service_tier", optional=True),
    )


def _choice(choice: Any) -> ChatChoice:
    if not isinstance(choice, dict) or not isinstance(message := choice.get("message"), dict):
        raise Unstorable("a choice has no message")
    if not _empty(choice.get("logprobs")):
        raise Unstorable("log probabilities are not replayed")
    for name, value in message.items():
        if name not in _MESSAGE_FIELDS and not (name in _EMPTY_OK and _empty(value)):
            raise Unstorable(f"message field {name!r} is not replayed")
    reasoning_field, reasoning = "reasoning_content", None
    for name in REASONING_FIELDS:
        if (value := message.get(name)) is not None:
            if reasoning is not None:
                raise Unstorable("message has two reasoning fields")
            reasoning_field, reasoning = name, _str(message, name)
    return ChatChoice(
        index=_int(choice.get("index"), "index"),
        finish_reason=_str(choice, "finish_reason", optional=True) or "",
        content=_str(message, "content", optional=True),
        reasoning=reasoning,
        reasoning_field=reasoning_field,
        refusal=_str(message, "refusal", optional=True),
        tool_calls=tuple(_tool_call(call) for call in message.get("tool_calls") or ()),
    )


def _tool_call(call: Any) -> ToolCall:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise Unstorable("only function tool calls are replayed")
    function = call.get("function")
    if not isinstance(function, dict):
        raise Unstorable("a tool call has no function")
    return ToolCall(
        id=_str(call, "id") or "",
        name=_str(function, "name") or "",
        arguments=_str(function, "arguments") or "",
    )


def openai_usage(usage: TokenUsage) -> dict[str, Any]:
    """OpenAI's usage object for a call's tokens (`prompt_tokens` includes the cached ones)."""
    prompt: dict[str, int] = {"cached_tokens": usage.cache_read_tokens}
    if usage.cache_write_tokens:
        prompt["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": prompt,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _message(choice: ChatChoice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.content, "refusal": choice.refusal}
    if choice.reasoning is not None:
        message[choice.reasoning_field] = choice.reasoning
    if choice.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in choice.tool_calls
        ]
    return message


def chat_json(answer: ChatAnswer, usage: TokenUsage) -> bytes:
    body: dict[str, Any] = {
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [
            {
                "index": choice.index,
                "message": _message(choice),
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
            for choice in answer.choices
        ],
        "usage": openai_usage(usage),
    }
    if answer.system_fingerprint is not None:
        body["system_fingerprint"] = answer.system_fingerprint
    if answer.service_tier is not None:
        body["service_tier"] = answer.service_tier
    return dumps(body).encode()


def _deltas(choice: ChatChoice) -> Iterator[str]:
    """The deltas of one choice as JSON text, as a provider streams them: role, reasoning, text,
    refusal, tool calls. Text pieces are spelled out directly: most of a replay is made of them."""
    yield dumps({"role": "assistant", "content": "" if choice.content is not None else None})
    for name, text in (
        (choice.reasoning_field, choice.reasoning),
        ("content", choice.content),
        ("refusal", choice.refusal),
    ):
        head = "{" + dumps(name) + ":"
        for piece in pieces(text or ""):
            yield head + dumps(piece) + "}"
    for index, call in enumerate(choice.tool_calls):
        start = {"index": index, "id": call.id, "type": "function"}
        yield dumps({"tool_calls": [{**start, "function": {"name": call.name, "arguments": ""}}]})
        head = '{"tool_calls":[{"index":' + str(index) + ',"function":{"arguments":'
        for piece in pieces(call.arguments):
            yield head + dumps(piece) + "}}]}"


def chat_sse(answer: ChatAnswer, usage: TokenUsage, *, include_usage: bool) -> bytes:
    """The answer as `chat.completion.chunk` events, then the usage chunk (when the client asked for it
    with `stream_options.include_usage`; every other chunk then has `"usage": null`, as OpenAI's do)."""
    envelope: dict[str, Any] = {
        "id": answer.id,
        "object": "chat.completion.chunk",
        "created": answer.created,
        "model": answer.model,
    }
    if answer.system_fingerprint is not None:
        envelope["system_fingerprint"] = answer.system_fingerprint
    if answer.service_tier is not None:
        envelope["service_tier"] = answer.service_tier
    # One encoding of the envelope for every chunk: only the choice differs.
    head = ("data: " + dumps(envelope)[:-1] + ',"choices":[').encode()
    tail = (',"usage":null}\n\n' if include_usage else "}\n\n").encode()
    out = bytearray()
    for choice in answer.choices:
        item = '{"index":' + str(choice.index) + ',"delta":'
        for delta in _deltas(choice):
            out += head + (item + delta + ',"logprobs":null,"finish_reason":null}]').encode() + tail
        last = {"index": choice.index, "delta": {}, "logprobs": None, "finish_reason": choice.finish_reason}
        out += head + dumps(last).encode() + b"]" + tail
    if include_usage:
        out += head + b'],"usage":' + dumps(openai_usage(usage)).encode() + b"}\n\n"
    out += b"data: [DONE]\n\n"
    return bytes(out)
