"""OpenAI chat completions ⇄ Gemini on Google Vertex AI, and Vertex's paths. Pure.

Publisher: a backend model named `claude-*` is Anthropic's on Vertex (`publisher`: the Messages API
behind Vertex's paths and auth), any other is Google's (Gemini, `generateContent`).

Request (`chat_to_gemini`), field by field; a field outside this list is refused with a 400 naming it
(`VertexRefusal`), as is a value without a faithful Gemini equivalent:

- `system` / `developer` messages → `systemInstruction.parts[].text`, in order.
- `user` / `assistant` turns → `contents[]` with role `user` / `model`, consecutive ones of a role
  merged. Text parts → `{text}`; `image_url` parts with a base64 `data:` URL → `{inlineData:
  {mimeType, data}}` (other URLs refused); an assistant's `tool_calls` → `{functionCall: {name,
  args}}`; `tool` messages → `{functionResponse: {name, response: {content}}}` in a user turn, the
  name found from the assistant's call with that `tool_call_id`.
- `max_completion_tokens` / `max_tokens`, `temperature`, `top_p`, `stop`, `seed`,
  `presence_penalty`, `frequency_penalty` → `generationConfig.maxOutputTokens`, `temperature`,
  `topP`, `stopSequences`, `seed`, `presencePenalty`, `frequencyPenalty`; `response_format`
  `json_object` / `json_schema` → `responseMimeType: application/json` (+ `responseJsonSchema`).
- `tools` → `tools[0].functionDeclarations[] {name, description, parametersJsonSchema}`;
  `tool_choice` `auto` / `none` / `required` / a named function → `toolConfig.functionCallingConfig`
  mode `AUTO` / `NONE` / `ANY` / `ANY` with `allowedFunctionNames`.
- Ignored (no effect on the answer): `model`, `stream`, `stream_options`, `user`, `store`,
  `metadata`, `service_tier`, `n: 1`, `modalities: ["text"]`, `parallel_tool_calls: true`.

Usage: `promptTokenCount` counts cached tokens too (`cachedContentTokenCount`, a part of it), and
`candidatesTokenCount` leaves the thinking out: `TokenUsage.output_tokens` is candidates + thoughts
(`thoughtsTokenCount`, also `reasoning_tokens`); tool-use prompt tokens count as input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import quote

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.strictjson import BadJson, parse_strict

__all__ = [
    "ANTHROPIC_VERSION",
    "VertexRefusal",
    "chat_to_gemini",
    "default_base_url",
    "error_to_openai",
    "finish_reason",
    "gemini_to_chat",
    "model_path",
    "publisher",
    "tool_calls_of",
    "usage_from_gemini",
    "usage_to_openai",
]

# The `anthropic_version` body field Claude on Vertex requires (in place of the header).
ANTHROPIC_VERSION: Final = "vertex-2023-10-16"

_FINISH: Final = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# Fields read below, and those with no effect on the answer: anything else is refused.
_KNOWN: Final = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "n",
        "modalities",
        "stream",
        "stream_options",
        "user",
        "store",
        "metadata",
        "service_tier",
    }
)
# Google's error `status` names → OpenAI error types.
_ERROR_TYPES: Final = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
}


class VertexRefusal(ValueError):
    """A chat request Gemini cannot express; `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def publisher(model: str) -> Literal["anthropic", "google"]:
    """Whose model a Vertex backend serves: `claude-*` is Anthropic's, the rest Google's."""
    return "anthropic" if model.startswith("claude-") else "google"


def default_base_url(region: str) -> str:
    """Vertex's regional endpoint (`global` has no region prefix)."""
    return (
        "https://aiplatform.googleapis.com"
        if region == "global"
        else f"https://{region}-aiplatform.googleapis.com"
    )


def model_path(backend: Backend, method: str) -> str:
    """`{prefix}/v1/projects/{p}/locations/{r}/publishers/{pub}/models/{m}:{method}`."""
    project, region = quote(backend.project or "", safe=""), quote(backend.region or "", safe="")
    model = quote(backend.model, safe="@.-_")
    return (
        f"{backend.path_prefix}/v1/projects/{project}/locations/{region}"
        f"/publishers/{publisher(backend.model)}/models/{model}:{method}"
    )


# --- request ----------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _image_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:"):
        raise VertexRefusal(f"'{where}': a Vertex backend takes images as base64 data URLs only.", where)
    header, _, data = url.partition(",")
    mime = header.removeprefix("data:").split(";", 1)[0]
    if ";base64" not in header or not mime.startswith("image/") or not data:
        raise VertexRefusal(f"'{where}' must be a base64 data URL of an image.", where)
    return {"inlineData": {"mimeType": mime, "data": data}}


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise VertexRefusal(f"'{where}.content' must be a string or an array of parts.", where)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if isinstance(part.get("text"), str) and part["text"]:
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_image_part(part, f"{where}.content[{i}]"))
        elif kind != "refusal":
            raise VertexRefusal(
                f"'{where}.content[{i}].type' {kind!r} cannot be sent to a Vertex backend.", where
            )
    return parts


def _function_calls(tool_calls: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    if tool_calls is None:
        return []
    if not isinstance(tool_calls, list):
        raise VertexRefusal(f"'{where}.tool_calls' must be an array.", where)
    parts = []
    for i, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise VertexRefusal(f"'{where}.tool_calls[{i}].function.name' is required.", where)
        arguments = function.get("arguments") or "{}"
        try:
            args = parse_strict(arguments) if isinstance(arguments, str) else arguments
        except BadJson as exc:
            raise VertexRefusal(
                f"'{where}.tool_calls[{i}].function.arguments' is not valid JSON: {exc.message}", where
            ) from None
        if not isinstance(args, dict):
            raise VertexRefusal(f"'{where}.tool_calls[{i}].function.arguments' must be a JSON object.", where)
        if isinstance(call.get("id"), str):
            names[call["id"]] = function["name"]
        parts.append({"functionCall": {"name": function["name"], "args": args}})
    return parts


def _contents(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name, for the function responses

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise VertexRefusal(f"'{where}' must be an object.", where)
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append({"text": text})
        elif role == "user":
            add("user", _parts(message.get("content"), where))
        elif role == "assistant":
            parts = _parts(message.get("content"), where)
            add("model", parts + _function_calls(message.get("tool_calls"), where, names))
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in names:
                raise VertexRefusal(
                    f"'{where}.tool_call_id' must name a tool call of an earlier assistant message.", where
                )
            response = {"name": names[call_id], "response": {"content": _text_of(message.get("content"))}}
            add("user", [{"functionResponse": response}])
        else:
            raise VertexRefusal(f"'{where}.role' {role!r} cannot be sent to a Vertex backend.", where)
    return system, contents


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if body.get("parallel_tool_calls") is False:
        raise VertexRefusal("'parallel_tool_calls' false has no Gemini equivalent.", "parallel_tool_calls")
    declarations = []
    if tools:
        if not isinstance(tools, list):
            raise VertexRefusal("'tools' must be an array.", "tools")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
                raise VertexRefusal(f"'tools[{i}]' must be a function tool.", "tools")
            if not isinstance(function.get("name"), str) or not function["name"]:
                raise VertexRefusal(f"'tools[{i}].function.name' is required.", "tools")
            declaration: dict[str, Any] = {"name": function["name"]}
            if isinstance(function.get("description"), str):
                declaration["description"] = function["description"]
            if function.get("parameters"):
                declaration["parametersJsonSchema"] = function["parameters"]
            declarations.append(declaration)
    mode: dict[str, Any] | None = None
    if choice in ("auto", "none", "required"):
        mode = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        mode = {"mode": "ANY", "allowedFunctionNames": [str(choice["function"].get("name") or "")]}
    elif choice is not None:
        raise VertexRefusal(f"'tool_choice' {choice!r} cannot be sent to a Vertex backend.", "tool_choice")
    if not declarations:
        return None, None
    return [{"functionDeclarations": declarations}], ({"functionCallingConfig": mode} if mode else None)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        config["maxOutputTokens"] = max_tokens
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if _number(body.get(ours)):
            config[theirs] = body[ours]
    if isinstance(body.get("seed"), int) and not isinstance(body["seed"], bool):
        config["seed"] = body["seed"]
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = [s for s in stop if isinstance(s, str)]
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
            schema = response_format.get("json_schema") if isinstance(response_format, dict) else None
            if kind == "json_schema" and isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
                config["responseJsonSchema"] = schema["schema"]
        elif kind != "text":
            raise VertexRefusal(
                f"'response_format' {kind!r} is not supported by a Vertex backend.", "response_format"
            )
    return config


def chat_to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """A `generateContent` request body from an OpenAI chat completions request (the model is in the path)."""
    unknown = sorted(name for name in body if name not in _KNOWN and body[name] is not None)
    if unknown:
        raise VertexRefusal(f"'{unknown[0]}' is not supported by a Vertex (Gemini) backend.", unknown[0])
    if body.get("n") not in (None, 1):
        raise VertexRefusal("'n' greater than 1 is not supported by a Vertex backend.", "n")
    if body.get("modalities") not in (None, ["text"]):
        raise VertexRefusal(
            "'modalities' other than text are not supported by a Vertex backend.", "modalities"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise VertexRefusal("'messages' must be a non-empty array.", "messages")
    system, contents = _contents(messages)
    if not contents:
        raise VertexRefusal("'messages' needs at least one user or assistant message.", "messages")
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    tools, tool_config = _tools(body)
    if tools is not None:
        out["tools"] = tools
    if tool_config is not None:
        out["toolConfig"] = tool_config
    return out


# --- response ---------------------------------------------------------------------------------------


def finish_reason(reason: Any, *, called: bool = False) -> str | None:
    """OpenAI's finish reason for Gemini's; a stop that called functions is `tool_calls`."""
    if not isinstance(reason, str):
        return None
    mapped = _FINISH.get(reason, "stop")
    return "tool_calls" if called and mapped == "stop" else mapped


def _count(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name)
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise ValueError(f"not a token count: {name}={value!r}"[:200])
    return value


def usage_from_gemini(usage: Any) -> TokenUsage | str:
    """TokenUsage from a `usageMetadata` object, or the reason there is none."""
    if not isinstance(usage, dict):
        return "the answer has no usageMetadata"
    if "promptTokenCount" not in usage:
        return "usageMetadata has no promptTokenCount"
    try:
        prompt, tool_prompt = _count(usage, "promptTokenCount"), _count(usage, "toolUsePromptTokenCount")
        candidates, thoughts = _count(usage, "candidatesTokenCount"), _count(usage, "thoughtsTokenCount")
        cached = _count(usage, "cachedContentTokenCount")
    except ValueError as exc:
        return f"invalid usage: {exc}"
    return TokenUsage(
        input_tokens=prompt + tool_prompt,
        output_tokens=candidates + thoughts,
        cache_read_tokens=min(cached, prompt),
        reasoning_tokens=thoughts,
    )


def usage_to_openai(usage: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _candidate(answer: Mapping[str, Any]) -> dict[str, Any]:
    candidates = answer.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    return first if isinstance(first, dict) else {}


def _answer_parts(candidate: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def text_of(candidate: Mapping[str, Any]) -> str:
    """The answer's text, thought summaries left out."""
    return "".join(
        p["text"] for p in _answer_parts(candidate) if isinstance(p.get("text"), str) and not p.get("thought")
    )


def tool_calls_of(candidate: Mapping[str, Any], first_index: int = 0) -> list[dict[str, Any]]:
    """OpenAI `tool_calls` from a candidate's `functionCall` parts (ids made up when Gemini gives none)."""
    calls: list[dict[str, Any]] = []
    for part in _answer_parts(candidate):
        call = part.get("functionCall")
        if not isinstance(call, dict):
            continue
        index = first_index + len(calls)
        args = call.get("args")
        calls.append(
            {
                "id": str(call.get("id") or f"call_{index}"),
                "type": "function",
                "function": {
                    "name": str(call.get("name") or ""),
                    "arguments": json.dumps(args if args is not None else {}, separators=(",", ":")),
                },
            }
        )
    return calls


def gemini_to_chat(
    answer: Any, *, model: str, created: int, call_id: str
) -> tuple[dict[str, Any], TokenUsage | str] | None:
    """(`chat.completion`, usage or why none) from a `generateContent` answer, or None when it is not one."""
    if not isinstance(answer, dict) or not isinstance(answer.get("candidates"), list):
        return None
    candidate = _candidate(answer)
    text = text_of(candidate)
    calls = tool_calls_of(candidate)
    reply: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        reply["tool_calls"] = calls
    reply["refusal"] = None
    usage = usage_from_gemini(answer.get("usageMetadata"))
    version = answer.get("modelVersion")
    chat: dict[str, Any] = {
        "id": call_id,
        "object": "chat.completion",
        "created": created,
        "model": model or (version if isinstance(version, str) else ""),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": finish_reason(candidate.get("finishReason"), called=bool(calls)) or "stop",
                "logprobs": None,
            }
        ],
    }
    if isinstance(usage, TokenUsage):
        chat["usage"] = usage_to_openai(usage)
    return chat, usage


def error_to_openai(status: int, body: bytes | Any) -> dict[str, Any]:
    """The OpenAI error shape for a Google error (`{"error": {"code", "message", "status"}}`)."""
    parsed: Any = body
    if isinstance(body, bytes):
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        error = parsed[0].get("error")  # a stream's error comes as a one-element array
    message, code = "", None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        code = error.get("status") if isinstance(error.get("status"), str) else None
    elif isinstance(body, bytes):
        message = body.decode("utf-8", "replace").strip()[:500]
    kind = _ERROR_TYPES.get(code or "", "invalid_request_error" if status < 500 else "api_error")
    return {
        "error": {
            "message": message or f"The Vertex backend answered {status}.",
            "type": kind,
            "param": None,
            "code": code,
        }
    }
