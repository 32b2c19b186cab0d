"""OpenAI chat completions ⇄ AWS Bedrock Converse, and SigV4 signing. Pure (the clock is an argument).

Credentials: a Bedrock backend's `credential` is a JSON object `{"access_key_id": …,
"secret_access_key": …, "session_token": …}` (the token optional), built by the operator from the
backend's Secret (`parse_credentials`).

Request (`chat_to_converse`), field by field; anything without a faithful Converse equivalent is
refused with a 400 naming the field (`BedrockRefusal`):

- `system` / `developer` messages → top-level `system` text blocks, in order.
- `user` / `assistant` turns keep their order, consecutive ones of a role merged. Text parts →
  `{text}`; `image_url` parts with a base64 `data:` URL of png/jpeg/gif/webp →
  `{image: {format, source: {bytes}}}` (Converse takes no image URLs: refused); an assistant's
  `tool_calls` → `{toolUse: {toolUseId, name, input}}`; `tool` messages → `{toolResult: {toolUseId,
  content: [{text}]}}` in a user turn.
- `max_completion_tokens` / `max_tokens` → `inferenceConfig.maxTokens`; `temperature`, `top_p`,
  `stop` → `temperature`, `topP`, `stopSequences`.
- `tools` → `toolConfig.tools[].toolSpec {name, description, inputSchema: {json}}`; `tool_choice`
  `auto` / `required` / a named function → `{auto: {}}` / `{any: {}}` / `{tool: {name}}`.
- Refused: `n` > 1, `logprobs`, `top_logprobs`, `presence_penalty`, `frequency_penalty`,
  `logit_bias`, `seed`, a non-text `response_format`, `tool_choice: none`, `parallel_tool_calls:
  false`, `audio`, non-text `modalities`, `prediction`. Ignored (no effect on the answer): `user`,
  `stream`, `stream_options`, `store`, `metadata`, `service_tier`.

Usage: Converse's `inputTokens` leaves cache reads and writes out (as Anthropic's does);
`TokenUsage.input_tokens` sums `inputTokens + cacheReadInputTokens + cacheWriteInputTokens`, as
genai-prices' AWS extractor does, and `cacheDetails[ttl=1h]` is the one-hour part of the writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.strictjson import BadJson, parse_strict

__all__ = [
    "SERVICE",
    "SIGNED_HEADERS",
    "BedrockRefusal",
    "chat_to_converse",
    "converse_path",
    "converse_to_chat",
    "default_base_url",
    "error_to_openai",
    "finish_reason",
    "parse_credentials",
    "sign",
    "usage_from_bedrock",
    "usage_to_openai",
]

SERVICE: Final = "bedrock"
# Every header `sign` may set; an attempt on another backend removes them.
SIGNED_HEADERS: Final = ("authorization", "x-amz-date", "x-amz-security-token")

_FINISH: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_IMAGE_FORMATS: Final = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
# Each changes what the model answers and has no Converse field: refused rather than dropped.
_UNSUPPORTED: Final = (
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "audio",
    "prediction",
)
# Bedrock's error statuses → (OpenAI error type, code), for an error body that names no type.
_ERRORS: Final = {
    400: ("invalid_request_error", "ValidationException"),
    401: ("invalid_request_error", "UnrecognizedClientException"),
    403: ("invalid_request_error", "AccessDeniedException"),
    404: ("invalid_request_error", "ResourceNotFoundException"),
    408: ("api_error", "ModelTimeoutException"),
    424: ("api_error", "ModelErrorException"),
    429: ("rate_limit_error", "ThrottlingException"),
    500: ("api_error", "InternalServerException"),
    503: ("api_error", "ServiceUnavailableException"),
}


class BedrockRefusal(ValueError):
    """A request Converse cannot express; `param` names the OpenAI field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def default_base_url(region: str) -> str:
    return f"https://bedrock-runtime.{region}.amazonaws.com"


def converse_path(backend: Backend, stream: bool) -> str:
    # The model id (`anthropic.claude-…-v1:0`, or an ARN) is one path segment: `:` and `/` escaped,
    # as the AWS SDKs send it.
    model = quote(backend.model, safe="")
    return f"{backend.path_prefix}/model/{model}/{'converse-stream' if stream else 'converse'}"


# --- credentials and signing ------------------------------------------------------------------------


def parse_credentials(credential: str | None) -> Credentials | None:
    """botocore credentials from a backend's serialized credential, or None when it holds none."""
    if not credential:
        return None
    try:
        data = json.loads(credential)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    key, secret = data.get("access_key_id"), data.get("secret_access_key")
    if not isinstance(key, str) or not isinstance(secret, str) or not key or not secret:
        return None
    token = data.get("session_token")
    return Credentials(key, secret, token if isinstance(token, str) and token else None)


class _Signer(SigV4Auth):  # type: ignore[misc]
    """`SigV4Auth` with the signing time given, not read from the clock (and nothing logged)."""

    def sign_at(self, request: AWSRequest, timestamp: str) -> None:
        request.context["timestamp"] = timestamp
        self._modify_request_before_signing(request)
        canonical = self.canonical_request(request)
        signature = self.signature(self.string_to_sign(request, canonical), request)
        self._inject_signature_to_request(request, signature)


def sign(
    *,
    credentials: Credentials,
    region: str,
    method: str,
    url: str,
    host: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    service: str = SERVICE,
) -> dict[str, str]:
    """The SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for one request.

    `host` is the Host header the backend receives (Envoy rewrites it to the backend's host name);
    `headers` the other headers to sign, sent exactly so.
    """
    request = AWSRequest(method=method, url=url, data=body, headers={"host": host, **headers})
    timestamp = datetime.fromtimestamp(now, tz=UTC).strftime(SIGV4_TIMESTAMP)
    _Signer(credentials, service, region).sign_at(request, timestamp)
    out = {"authorization": request.headers["Authorization"], "x-amz-date": request.headers["X-Amz-Date"]}
    if credentials.token:
        out["x-amz-security-token"] = credentials.token
    return out


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


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:"):
        raise BedrockRefusal(f"'{where}': Bedrock takes images as base64 data URLs only.", where)
    header, _, data = url.partition(",")
    media_type = header.removeprefix("data:").split(";", 1)[0]
    fmt = _IMAGE_FORMATS.get(media_type)
    if ";base64" not in header or fmt is None or not data:
        raise BedrockRefusal(f"'{where}' must be a base64 data URL of a png, jpeg, gif or webp image.", where)
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _content_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise BedrockRefusal(f"'{where}.content' must be a string or an array of parts.", where)
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str) and text:
                blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part, f"{where}.content[{i}]"))
        elif kind == "refusal":
            continue
        else:
            raise BedrockRefusal(
                f"'{where}.content[{i}].type' {kind!r} cannot be sent to a Bedrock backend.", where
            )
    return blocks


def _tool_uses(tool_calls: Any, where: str) -> list[dict[str, Any]]:
    if tool_calls is None:
        return []
    if not isinstance(tool_calls, list):
        raise BedrockRefusal(f"'{where}.tool_calls' must be an array.", where)
    blocks = []
    for i, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BedrockRefusal(f"'{where}.tool_calls[{i}].function.name' is required.", where)
        arguments = function.get("arguments") or "{}"
        try:
            parsed = parse_strict(arguments) if isinstance(arguments, str) else arguments
        except BadJson as exc:
            raise BedrockRefusal(
                f"'{where}.tool_calls[{i}].function.arguments' is not valid JSON: {exc.message}", where
            ) from None
        if not isinstance(parsed, dict):
            raise BedrockRefusal(
                f"'{where}.tool_calls[{i}].function.arguments' must be a JSON object.", where
            )
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": str(call.get("id") or f"call_{i}"),
                    "name": function["name"],
                    "input": parsed,
                }
            }
        )
    return blocks


def _turns(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
        if not isinstance(message, dict):
            raise BedrockRefusal(f"'{where}' must be an object.", where)
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"))
            if text:
                system.append({"text": text})
        elif role == "user":
            add("user", _content_blocks(message.get("content"), where))
        elif role == "assistant":
            add(
                "assistant",
                _content_blocks(message.get("content"), where) + _tool_uses(message.get("tool_calls"), where),
            )
        elif role == "tool":
            tool_call_id = message.get("tool_call_id")
            if not isinstance(tool_call_id, str) or not tool_call_id:
                raise BedrockRefusal(f"'{where}.tool_call_id' is required.", where)
            result = {"toolUseId": tool_call_id, "content": [{"text": _text_of(message.get("content"))}]}
            add("user", [{"toolResult": result}])
        else:
            raise BedrockRefusal(f"'{where}.role' {role!r} cannot be sent to a Bedrock backend.", where)
    return system, turns


def _tool_config(body: dict[str, Any]) -> dict[str, Any] | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if choice == "none":
        raise BedrockRefusal(
            "'tool_choice' none has no Bedrock equivalent; leave the tools out.", "tool_choice"
        )
    if body.get("parallel_tool_calls") is False:
        raise BedrockRefusal("'parallel_tool_calls' false has no Bedrock equivalent.", "parallel_tool_calls")
    if not tools:
        return None
    if not isinstance(tools, list):
        raise BedrockRefusal("'tools' must be an array.", "tools")
    specs = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise BedrockRefusal(f"'tools[{i}]' must be a function tool.", "tools")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BedrockRefusal(f"'tools[{i}].function.name' is required.", "tools")
        spec: dict[str, Any] = {
            "name": name,
            "inputSchema": {"json": function.get("parameters") or {"type": "object", "properties": {}}},
        }
        if isinstance(function.get("description"), str):
            spec["description"] = function["description"]
        specs.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        config["toolChoice"] = {"tool": {"name": str(choice["function"].get("name") or "")}}
    elif choice is not None:
        raise BedrockRefusal(f"'tool_choice' {choice!r} cannot be sent to a Bedrock backend.", "tool_choice")
    return config


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def chat_to_converse(body: dict[str, Any]) -> dict[str, Any]:
    """A Converse request body from an OpenAI chat completions request (the model is in the path)."""
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, False):
            raise BedrockRefusal(f"'{name}' is not supported by a Bedrock backend.", name)
    if body.get("n") not in (None, 1):
        raise BedrockRefusal("'n' greater than 1 is not supported by a Bedrock backend.", "n")
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and response_format.get("type") == "text"
    ):
        raise BedrockRefusal("'response_format' is not supported by a Bedrock backend.", "response_format")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise BedrockRefusal(
            "'modalities' other than text are not supported by a Bedrock backend.", "modalities"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BedrockRefusal("'messages' must be a non-empty array.", "messages")
    system, turns = _turns(messages)
    if not turns:
        raise BedrockRefusal("'messages' needs at least one user or assistant message.", "messages")
    out: dict[str, Any] = {"messages": turns}
    if system:
        out["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        inference["maxTokens"] = max_tokens
    if _number(body.get("temperature")):
        inference["temperature"] = body["temperature"]
    if _number(body.get("top_p")):
        inference["topP"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        inference["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        inference["stopSequences"] = [s for s in stop if isinstance(s, str)]
    if inference:
        out["inferenceConfig"] = inference
    tool_config = _tool_config(body)
    if tool_config is not None:
        out["toolConfig"] = tool_config
    return out


# --- response ---------------------------------------------------------------------------------------


def finish_reason(stop_reason: Any) -> str | None:
    if not isinstance(stop_reason, str):
        return None
    return _FINISH.get(stop_reason, "stop")


def _count(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name)
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise ValueError(f"not a token count: {name}={value!r}"[:200])
    return value


def usage_from_bedrock(usage: Any) -> TokenUsage | str:
    """TokenUsage from a Converse `usage` object, or the reason there is none."""
    if not isinstance(usage, dict):
        return "usage is not an object"
    if "inputTokens" not in usage:
        return "usage has no inputTokens"
    try:
        reads, writes = _count(usage, "cacheReadInputTokens"), _count(usage, "cacheWriteInputTokens")
        uncached, output = _count(usage, "inputTokens"), _count(usage, "outputTokens")
        one_hour = 0
        details = usage.get("cacheDetails")
        if isinstance(details, list):
            for entry in details:
                if isinstance(entry, dict) and entry.get("ttl") == "1h":
                    one_hour += _count(entry, "inputTokens")
    except ValueError as exc:
        return f"invalid usage: {exc}"
    return TokenUsage(
        input_tokens=uncached + reads + writes,
        output_tokens=output,
        cache_read_tokens=reads,
        cache_write_tokens=writes,
        cache_write_1h_tokens=min(one_hour, writes),
    )


def usage_to_openai(usage: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
    }


def tool_call(tool_use: Mapping[str, Any], index: int) -> dict[str, Any]:
    arguments = tool_use.get("input")
    return {
        "id": str(tool_use.get("toolUseId") or f"call_{index}"),
        "type": "function",
        "function": {
            "name": str(tool_use.get("name") or ""),
            "arguments": json.dumps(arguments if arguments is not None else {}, separators=(",", ":")),
        },
    }


def converse_to_chat(
    answer: Any, *, model: str, created: int, call_id: str
) -> tuple[dict[str, Any], TokenUsage | str] | None:
    """(`chat.completion`, usage or why none) from a Converse answer, or None when it is not one."""
    if not isinstance(answer, dict):
        return None
    output = answer.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            calls.append(tool_call(block["toolUse"], len(calls)))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    reply["refusal"] = None
    usage = usage_from_bedrock(answer.get("usage"))
    chat: dict[str, Any] = {
        "id": call_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": finish_reason(answer.get("stopReason")) or "stop",
                "logprobs": None,
            }
        ],
    }
    if isinstance(usage, TokenUsage):
        chat["usage"] = usage_to_openai(usage)
    return chat, usage


def error_message(body: bytes) -> str:
    """The `message` (or `Message`) of a Bedrock error body, else the body's text."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    if isinstance(parsed, dict):
        for name in ("message", "Message"):
            if isinstance(parsed.get(name), str) and parsed[name]:
                return str(parsed[name])
    return body.decode("utf-8", "replace").strip()[:500]


def error_to_openai(status: int, body: bytes, exception_type: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape for a Bedrock error answer (or a mid-stream exception event)."""
    kind, code = _ERRORS.get(status, ("invalid_request_error" if status < 500 else "api_error", ""))
    if exception_type:
        code = exception_type[:1].upper() + exception_type[1:]
        if code == "ThrottlingException":
            kind = "rate_limit_error"
    return {
        "error": {
            "message": error_message(body) or f"The Bedrock backend answered {status}.",
            "type": kind,
            "param": None,
            "code": code or None,
        }
    }
