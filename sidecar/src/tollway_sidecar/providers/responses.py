"""OpenAI Responses API ⇄ chat completions: requests one way, whole responses back. Pure.

The streamed direction is `responses_stream.ChatStreamToResponses`. A backend that speaks only chat
completions serves a Responses call through these; `adapters.responses_chat` composes them over
that backend's chat adapter.

Request (`to_chat`), field by field:

- `instructions` → a first `system` message; a string `input` → one `user` message.
- `input` items in order: `message` items (or role-only items) keep their role — `input_text` /
  `output_text` parts become text (joined into one string for `system`, `developer` and
  `assistant`), `input_image` an `image_url` part (its `detail` kept), `input_file` with
  `file_data` or `file_id` a `file` part, `input_audio` an `input_audio` part; `function_call`
  items become the preceding assistant message's `tool_calls` (a new assistant message when there
  is none), `function_call_output` items `tool` messages; `reasoning` items are dropped (chat has
  no way to send them back).
- `max_output_tokens` → `max_tokens`; `temperature`, `top_p`, `parallel_tool_calls`, `user`,
  `safety_identifier`, `prompt_cache_key`, `service_tier` as they are; `tools` of type `function`
  → chat function tools; `tool_choice` `auto`/`none`/`required`/a named function; `text.format`
  `json_schema` / `json_object` → `response_format` (`text`: nothing); `text.verbosity` →
  `verbosity`; `reasoning.effort` → `reasoning_effort`; `stream` → `stream` +
  `stream_options.include_usage` (the usage comes last, as the Responses API's does).
- Dropped: `metadata` (chat stores nothing to attach it to), `reasoning.summary` (chat returns no
  summaries), `top_logprobs` without `include`, `stream_options`, `store: false`,
  `truncation: "disabled"`.
- Refused (`unsupported`, a 400 naming the field): whatever needs the provider to keep state or run
  a tool itself — `previous_response_id`, `conversation`, `background`, `store: true`, `prompt`,
  `include`, `truncation: "auto"`, `max_tool_calls`, built-in tools (`tools[i].type`) and
  `item_reference` or built-in tool call items in `input`.

Response (`from_chat`): `reasoning_content` → a `reasoning` item (its text as `reasoning_text`
content), the message text (and a refusal) → a `message` item, `tool_calls` → `function_call`
items; `finish_reason` `length` → `status: "incomplete"` with `incomplete_details.reason:
"max_output_tokens"` (`content_filter` likewise); usage read as the gateway reads it
(`usage.usage_from_openai`) and written in the Responses shape, so the client sees the tokens it is
charged for. The request's parameters are echoed when the caller has them.
"""

from __future__ import annotations

import json
from typing import Any, Final

from tollway_sidecar.providers.usage import TokenUsage, usage_from_openai

__all__ = [
    "Untranslatable",
    "from_chat",
    "item_id",
    "response_object",
    "responses_usage",
    "to_chat",
    "unsupported",
]

# Fields that need state or machinery only the provider of the Responses API has.
_REFUSED_FIELDS: Final = (
    ("previous_response_id", "it needs the conversation stored by an OpenAI backend"),
    ("conversation", "it needs the conversation stored by an OpenAI backend"),
    ("prompt", "it needs a prompt template stored by OpenAI"),
    ("max_tool_calls", "a chat completions backend cannot limit built-in tool calls"),
)
_PASSED: Final = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
)
_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text", "summary_text"})
_CHAT_ONLY: Final = " cannot be sent to a chat completions backend"
_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}


class Untranslatable(ValueError):
    """A Responses request chat completions cannot express; `param` names the Responses field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


# --- refusals --------------------------------------------------------------------------------------


def unsupported(body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) for the first field with no faithful chat mapping, or None."""
    for name, why in _REFUSED_FIELDS:
        if body.get(name) is not None:
            return f"'{name}' is not supported on this route: {why}.", name
    if body.get("background") is True:
        return (
            "'background' is not supported on this route: a chat completions backend answers in the call.",
            "background",
        )
    if body.get("store") is True:
        return (
            "'store: true' is not supported on this route: the gateway's chat completions backend stores "
            "no responses (send 'store: false').",
            "store",
        )
    include = body.get("include")
    if isinstance(include, list) and include:
        return f"'include' is not supported on this route: {include[0]!r}{_CHAT_ONLY}.", "include"
    if body.get("truncation") not in (None, "disabled"):
        return "'truncation' other than 'disabled' is not supported on this route.", "truncation"
    tools = body.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            return (
                f"'tools[{index}].type' {kind!r} is a built-in tool the provider runs itself; "
                "only 'function' tools can be sent to a chat completions backend.",
                f"tools[{index}].type",
            )
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        return f"'tool_choice.type' {choice.get('type')!r}{_CHAT_ONLY}.", "tool_choice.type"
    items = body.get("input")
    for index, item in enumerate(items if isinstance(items, list) else ()):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind not in ("message", "function_call", "function_call_output", "reasoning"):
            return f"'input[{index}].type' {kind!r}{_CHAT_ONLY}.", f"input[{index}].type"
    return None


# --- request ---------------------------------------------------------------------------------------


def _text(parts: list[Any], where: str) -> str:
    texts = []
    for index, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind != "refusal":
            raise Untranslatable(
                f"'{where}[{index}].type' {kind!r}{_CHAT_ONLY} in this message.", f"{where}[{index}].type"
            )
    return "".join(texts)


def _part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise Untranslatable(
                f"'{where}.image_url' must be a URL (a 'file_id' image{_CHAT_ONLY}).", f"{where}.image_url"
            )
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        file = {
            key: part[key] for key in ("file_data", "file_id", "filename") if isinstance(part.get(key), str)
        }
        if "file_data" not in file and "file_id" not in file:
            raise Untranslatable(
                f"'{where}' needs 'file_data' or 'file_id' (a 'file_url'{_CHAT_ONLY}).", where
            )
        return {"type": "file", "file": file}
    if kind == "input_audio" and isinstance(part.get("input_audio"), dict):
        return {"type": "input_audio", "input_audio": part["input_audio"]}
    raise Untranslatable(f"'{where}.type' {kind!r}{_CHAT_ONLY}.", f"{where}.type")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise Untranslatable(f"'{where}.role' must be user, assistant, system or developer.", f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise Untranslatable(f"'{where}.content' must be a string or an array of parts.", f"{where}.content")
    if role != "user":
        return {"role": role, "content": _text(content, f"{where}.content")}
    return {"role": role, "content": [_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]}


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _text(output, where)
    raise Untranslatable(f"'{where}' must be a string or an array of text parts.", where)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise Untranslatable("'instructions' must be a string.", "instructions")
    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        return messages
    if not isinstance(items, list):
        raise Untranslatable("'input' must be a string or an array of items.", "input")
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise Untranslatable(f"'{where}' must be an object.", where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise Untranslatable(f"'{where}' needs a string 'call_id' and 'name'.", where)
            arguments = item.get("arguments")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else "{}"},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise Untranslatable(f"'{where}.call_id' must be a string.", f"{where}.call_id")
            content = _output_text(item.get("output"), f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
        elif kind != "reasoning":
            raise Untranslatable(f"'{where}.type' {kind!r}{_CHAT_ONLY}.", f"{where}.type")
    return messages


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {
        key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None
    }
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {
            key: fmt[key] for key in ("name", "description", "schema", "strict") if fmt.get(key) is not None
        }
        return {"type": "json_schema", "json_schema": schema}
    raise Untranslatable(f"'text.format.type' {fmt.get('type')!r}{_CHAT_ONLY}.", "text.format.type")


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat.completions request for a Responses request. Raises `Untranslatable`."""
    chat: dict[str, Any] = {}
    if body.get("model") is not None:
        chat["model"] = body["model"]
    chat["messages"] = _messages(body)
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in _PASSED:
        if body.get(name) is not None:
            chat[name] = body[name]
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chat["tools"] = [_tool(tool) for tool in tools if isinstance(tool, dict)]
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    text = body.get("text")
    if (response_format := _response_format(text)) is not None:
        chat["response_format"] = response_format
    if isinstance(text, dict) and isinstance(text.get("verbosity"), str):
        chat["verbosity"] = text["verbosity"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# --- response --------------------------------------------------------------------------------------


def item_id(response_id: str, kind: str, index: int) -> str:
    """A deterministic id for output item `index` of a response: `msg_…`, `fc_…`, `rs_…`."""
    return f"{kind}_{response_id.removeprefix('resp_')}{index:02d}"


def responses_usage(usage: TokenUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def response_object(
    *,
    request: dict[str, Any],
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete_reason: str | None = None,
) -> dict[str, Any]:
    """A `response` object with the request's parameters echoed (the defaults where it has none)."""
    reasoning = request.get("reasoning")
    text = request.get("text")
    metadata = request.get("metadata")
    tools = request.get("tools")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": created_at if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": incomplete_reason} if status == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {
            "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
            "summary": None,
        },
        "store": False,  # nothing is stored: a chat completions backend keeps no responses
        "temperature": request.get("temperature"),
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": tools if isinstance(tools, list) else [],
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": request.get("user"),
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def status_of(finish_reason: str | None) -> tuple[str, str | None]:
    """(status, incomplete reason) of a response whose chat choice ended with `finish_reason`."""
    reason = _INCOMPLETE.get(finish_reason or "")
    return ("incomplete", reason) if reason is not None else ("completed", None)


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    parsed = usage_from_openai(chat_usage) if chat_usage is not None else None
    return responses_usage(parsed) if isinstance(parsed, TokenUsage) else None


def message_item(identifier: str, text: str, refusal: str | None, status: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": identifier, "type": "message", "status": status, "role": "assistant", "content": content}


def reasoning_item(identifier: str, text: str) -> dict[str, Any]:
    return {
        "id": identifier,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def function_call_item(
    identifier: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": identifier,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def from_chat(
    chat_completion: dict[str, Any], *, request: dict[str, Any], response_id: str, created_at: int
) -> dict[str, Any] | None:
    """The `response` object for a `chat.completion`, or None when it is not one."""
    choices = chat_completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        return None
    finish = choice.get("finish_reason")
    status, incomplete = status_of(finish if isinstance(finish, str) else None)
    item_status = "incomplete" if status == "incomplete" else "completed"
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        output.append(reasoning_item(item_id(response_id, "rs", len(output)), reasoning))
    text = message.get("content")
    refusal = message.get("refusal")
    text = text if isinstance(text, str) else ""
    refusal = refusal if isinstance(refusal, str) else None
    if text or refusal:
        output.append(message_item(item_id(response_id, "msg", len(output)), text, refusal, item_status))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        identifier = item_id(response_id, "fc", len(output))
        call_id = call.get("id") if isinstance(call.get("id"), str) else identifier.replace("fc_", "call_", 1)
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {}, separators=(",", ":"))
        output.append(
            function_call_item(identifier, call_id, str(function.get("name") or ""), arguments, item_status)
        )
    model = chat_completion.get("model")
    return response_object(
        request=request,
        response_id=response_id,
        created_at=created_at,
        model=model if isinstance(model, str) and model else str(request.get("model") or ""),
        status=status,
        output=output,
        usage=usage_of(chat_completion.get("usage")),
        incomplete_reason=incomplete,
    )
