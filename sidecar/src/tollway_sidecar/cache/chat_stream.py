"""A streamed OpenAI chat completion, event by event, back into the one answer it spelled out. Pure.

Fed the decoded `data:` of each event by `fill.StreamFill` (which reuses `SseParser`'s framing).
Deltas are joined per choice: text, reasoning (`reasoning_content` / `reasoning`), refusal, and tool
calls by their `index` (id and type from the first delta, name and arguments joined). A delta that
carries anything else, or log probabilities, makes the stream `Unstorable`, as in `chat`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from tollway_sidecar.cache.chat import REASONING_FIELDS, ChatAnswer, ChatChoice, ToolCall
from tollway_sidecar.cache.unstorable import Unstorable

__all__ = ["ChatStream"]

_DELTA_FIELDS: Final = frozenset({"role", "content", "refusal", "tool_calls", *REASONING_FIELDS})
_EMPTY_OK: Final = frozenset({"annotations", "audio", "function_call"})


@dataclass
class _Call:
    id: str = ""
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Choice:
    content: list[str] | None = None  # None until a string content delta (tool-call answers: null)
    reasoning: list[str] | None = None
    reasoning_field: str = "reasoning_content"
    refusal: list[str] | None = None
    calls: dict[int, _Call] = field(default_factory=dict)
    finish_reason: str | None = None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Unstorable(f"{what} is not a string")
    return value


class ChatStream:
    """Joins `chat.completion.chunk` objects. `chars` counts the text kept, for the size bound."""

    def __init__(self) -> None:
        self.chars = 0
        self._id = ""
        self._model = ""
        self._created = 0
        self._fingerprint: str | None = None
        self._tier: str | None = None
        self._choices: dict[int, _Choice] = {}

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            raise Unstorable("event is not a JSON object")
        if chunk.get("error") is not None:
            raise Unstorable("the stream reported an error")
        if not self._id and isinstance(chunk.get("id"), str):
            self._id = chunk["id"]
        if not self._model and isinstance(chunk.get("model"), str):
            self._model = chunk["model"]
        if not self._created and type(chunk.get("created")) is int:
            self._created = chunk["created"]
        if self._fingerprint is None and isinstance(chunk.get("system_fingerprint"), str):
            self._fingerprint = chunk["system_fingerprint"]
        if self._tier is None and isinstance(chunk.get("service_tier"), str):
            self._tier = chunk["service_tier"]
        for item in chunk.get("choices") or ():
            self._choice(item)

    def _choice(self, item: Any) -> None:
        if not isinstance(item, dict) or type(index := item.get("index")) is not int:
            raise Unstorable("a chunk's choice has no index")
        if item.get("logprobs") not in (None, {}, []):
            raise Unstorable("log probabilities are not replayed")
        choice = self._choices.setdefault(index, _Choice())
        if isinstance(reason := item.get("finish_reason"), str):
            choice.finish_reason = reason
        delta = item.get("delta")
        if not isinstance(delta, dict):
            return
        for name, value in delta.items():
            if value is None or name == "role":
                continue
            if name == "content":
                choice.content = self._join(choice.content, value, name)
            elif name in REASONING_FIELDS:
                if choice.reasoning is not None and choice.reasoning_field != name:
                    raise Unstorable("stream has two reasoning fields")
                choice.reasoning_field = name
                choice.reasoning = self._join(choice.reasoning, value, name)
            elif name == "refusal":
                choice.refusal = self._join(choice.refusal, value, name)
            elif name == "tool_calls":
                self._calls(choice, value)
            elif not (name in _EMPTY_OK and value in ([], {})):
                raise Unstorable(f"delta field {name!r} is not replayed")

    def _join(self, parts: list[str] | None, value: Any, what: str) -> list[str]:
        text = _text(value, what)
        self.chars += len(text)
        kept = parts if parts is not None else []
        kept.append(text)
        return kept

    def _calls(self, choice: _Choice, calls: Any) -> None:
        if not isinstance(calls, list):
            raise Unstorable("tool_calls is not a list")
        for delta in calls:
            if not isinstance(delta, dict) or type(index := delta.get("index")) is not int:
                raise Unstorable("a tool call delta has no index")
            if delta.get("type", "function") not in ("function", None):
                raise Unstorable("only function tool calls are replayed")
            call = choice.calls.setdefault(index, _Call())
            if isinstance(delta.get("id"), str) and not call.id:
                call.id = delta["id"]
            function = delta.get("function")
            if isinstance(function, dict):
                if function.get("name") is not None:
                    self._join(call.name, function["name"], "a tool call's name")
                if function.get("arguments") is not None:
                    self._join(call.arguments, function["arguments"], "a tool call's arguments")

    def answer(self) -> ChatAnswer:
        choices = []
        for index in sorted(self._choices):
            choice = self._choices[index]
            if choice.finish_reason is None:
                raise Unstorable(f"choice {index} has no finish_reason")
            calls = tuple(
                ToolCall(call.id, "".join(call.name), "".join(call.arguments))
                for _, call in sorted(choice.calls.items())
            )
            choices.append(
                ChatChoice(
                    index=index,
                    finish_reason=choice.finish_reason,
                    content=None if choice.content is None else "".join(choice.content),
                    reasoning=None if choice.reasoning is None else "".join(choice.reasoning),
                    reasoning_field=choice.reasoning_field,
                    refusal=None if choice.refusal is None else "".join(choice.refusal),
                    tool_calls=calls,
                )
            )
        return ChatAnswer(
            id=self._id,
            model=self._model,
            created=self._created,
            choices=tuple(choices),
            system_fingerprint=self._fingerprint,
            service_tier=self._tier,
        )
