"""OpenAI chat completions ⇄ Anthropic Messages: requests one way, whole responses and errors back.

Pure functions over decoded JSON. The streamed direction is `anthropic_stream.ChunkTranslator`.

Request (`chat_to_messages`), field by field:

- `system` and `developer` messages, wherever they stand, become the top-level `system` (text blocks
  in order); the Messages API has no system turn.
- `user` / `assistant` messages keep their order; consecutive messages of one role are merged into
  one turn. Text parts become `text` blocks, `image_url` parts `image` blocks (a `data:` URL as
  `base64`, anything else as `url`). An assistant's `tool_calls` become `tool_use` blocks (the
  arguments string is decoded to the `input` object); `tool` messages become `tool_result` blocks
  in a user turn.
- `max_completion_tokens`, else `max_tokens`, else `DEFAULT_MAX_TOKENS` (Anthropic requires one).
- `stop` (a string or a list) → `stop_sequences`; `temperature` (OpenAI 0..2) is capped at 1, the
  Messages API's maximum; `top_p`; `stream`; `user` → `metadata.user_id`.
- `tools` (`type: function`) → `{name, description, input_schema}`; `tool_choice` `auto`/`none`/
  `required`/a named function → `auto`/`none`/`any`/`tool`; `parallel_tool_calls: false` →
  `disable_parallel_tool_use`.
- Dropped (no Messages equivalent): `n`, `logprobs`, `top_logprobs`, `presence_penalty`,
  `frequency_penalty`, `logit_bias`, `seed`, `response_format`, `stream_options`, `service_tier`.

Response (`message_to_chat`): text blocks joined into `message.content`, `tool_use` blocks into
`tool_calls`, `thinking` blocks left out; `stop_reason` mapped to `finish_reason`; usage in OpenAI's
shape, where `prompt_tokens` counts every input token (Anthropic's `input_tokens` plus cache reads
and writes), `prompt_tokens_details.cached_tokens` the reads and `cache_write_tokens` the writes.
"""

from __future__ import annotations

import json
from typing import Any, Final

from tollway_sidecar.strictjson import BadJson, parse_strict

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "TranslationError",
    "chat_to_messages",
    "error_to_openai",
    "finish_reason",
    "message_to_chat",
    "usage_to_openai",
]

ANTHROPIC_VERSION: Final = "2023-06-01"
DEFAULT_MAX_TOKENS: Final = 4096
_MAX_TEMPERATURE: Final = 1.0

_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class TranslationError(ValueError):
    """A request the Messages API cannot express; `param` names the OpenAI field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# --- request ---------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise TranslationError(f"'{where}.image_url.url' must be a string.", where)
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header.removeprefix("data:").split(";", 1)[0]
        if ";base64" not in header or not media_type or not data:
            raise TranslationError(f"'{where}' must be a base64 data URL or an http(s) URL.", where)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"'{where}.content' must be a string or an array of parts.", where)
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise TranslationError(f"'{where}.content[{i}]' must be an object.", where)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str) and text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, f"{where}.content[{i}]"))
        elif kind == "refusal":
            continue
        else:
            raise TranslationError(
                f"'{where}.content[{i}].type' {kind!r} cannot be sent to an Anthropic backend.", where
            )
    return blocks


def _tool_use_blocks(tool_calls: Any, where: str) -> list[dict[str, Any]]:
    if tool_calls is None:
        return []
    if not isinstance(tool_calls, list):
        raise TranslationError(f"'{where}.tool_calls' must be an array.", where)
    blocks = []
    for i, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise TranslationError(f"'{where}.tool_calls[{i}].function.name' is required.", where)
        arguments = function.get("arguments") or "{}"
        try:
            # Strict: the decoded object is sent on as JSON, so NaN or deep nesting may not pass.
            parsed = parse_strict(arguments) if isinstance(arguments, str) else arguments
        except BadJson as exc:
            raise TranslationError(
                f"'{where}.tool_calls[{i}].function.arguments' is not valid JSON: {exc.message}", where
            ) from None
        if not isinstance(parsed, dict):
            raise TranslationError(
                f"'{where}.tool_calls[{i}].function.arguments' must be a JSON object.", where
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or f"call_{i}"),
                "name": function["name"],
                "input": parsed,
            }
        )
    return blocks


def _tool_result_block(message: dict[str, Any], where: str) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise TranslationError(f"'{where}.tool_call_id' is required.", where)
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    if isinstance(content, list):
        block["content"] = _content_blocks(content, where)
    else:
        block["content"] = _text_of(content)
    return block


def _turns(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, Anthropic turns) from OpenAI messages."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append({"type": "text", "text": text})
        elif role == "user":
            add("user", _content_blocks(message.get("content"), where))
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"), where)
            blocks += _tool_use_blocks(message.get("tool_calls"), where)
            add("assistant", blocks)
        elif role == "tool":
            add("user", [_tool_result_block(message, where)])
        else:
            raise TranslationError(f"'{where}.role' {role!r} cannot be sent to an Anthropic backend.", where)
    return system, turns


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array.", "tools")
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise TranslationError(f"'tools[{i}]' must be a function tool.", "tools")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"'tools[{i}].function.name' is required.", "tools")
        entry: dict[str, Any] = {
            "name": name,
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if isinstance(function.get("description"), str):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice is None:
        result = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        result = {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise TranslationError(
            f"'tool_choice' {choice!r} cannot be sent to an Anthropic backend.", "tool_choice"
        )
    if result is not None and parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def chat_to_messages(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Messages request from an OpenAI chat completions request."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty array.", "messages")
    system, turns = _turns(messages)
    if not turns:
        raise TranslationError("'messages' needs at least one user or assistant message.", "messages")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        out["system"] = system
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(float(temperature), _MAX_TEMPERATURE)
    if isinstance(body.get("top_p"), int | float) and not isinstance(body.get("top_p"), bool):
        out["top_p"] = body["top_p"]
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and "tools" in out:
        out["tool_choice"] = choice
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream") is True:
        out["stream"] = True
    return out


# --- response --------------------------------------------------------------------------------------


def finish_reason(stop_reason: Any) -> str | None:
    if not isinstance(stop_reason, str):
        return None
    return _FINISH.get(stop_reason, "stop")


def usage_to_openai(usage: Any) -> dict[str, Any] | None:
    """OpenAI-shaped usage from an Anthropic usage object (None when it has no counts)."""
    if not isinstance(usage, dict):
        return None

    def count(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    reads, writes = count("cache_read_input_tokens"), count("cache_creation_input_tokens")
    prompt = count("input_tokens") + reads + writes
    completion = count("output_tokens")
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reads, "cache_write_tokens": writes},
    }
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("thinking_tokens"), int):
        out["completion_tokens_details"] = {"reasoning_tokens": details["thinking_tokens"]}
    return out


def tool_call(block: dict[str, Any], index: int) -> dict[str, Any]:
    arguments = block.get("input")
    return {
        "id": str(block.get("id") or f"call_{index}"),
        "type": "function",
        "function": {
            "name": str(block.get("name") or ""),
            "arguments": json.dumps(arguments if arguments is not None else {}, separators=(",", ":")),
        },
    }


def message_to_chat(message: dict[str, Any], created: int) -> dict[str, Any] | None:
    """An OpenAI `chat.completion` from an Anthropic `message`, or None when it is not one."""
    if message.get("type") != "message" or not isinstance(message.get("content"), list):
        return None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(tool_call(block, len(calls)))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    reply["refusal"] = None
    out: dict[str, Any] = {
        "id": str(message.get("id") or ""),
        "object": "chat.completion",
        "created": created,
        "model": str(message.get("model") or ""),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": finish_reason(message.get("stop_reason")) or "stop",
                "logprobs": None,
            }
        ],
    }
    usage = usage_to_openai(message.get("usage"))
    if usage is not None:
        out["usage"] = usage
    return out


def error_to_openai(status: int, body: bytes) -> dict[str, Any]:
    """The OpenAI error shape for an Anthropic error answer (or any body, as its message)."""
    message, kind = "", ""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        kind = str(error.get("type") or "")
    if not message:
        text = body.decode("utf-8", "replace").strip()
        message = text[:500] if text else f"The Anthropic backend answered {status}."
    return {
        "error": {
            "message": message,
            "type": kind or ("invalid_request_error" if status < 500 else "api_error"),
            "param": None,
            "code": kind or None,
        }
    }
