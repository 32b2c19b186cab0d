"""OpenAI wire format: chat completions (JSON and SSE), embeddings, models."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .content import (
    Plan,
    count_prompt,
    embedding_base64,
    embedding_inputs,
    embedding_vector,
    input_tokens,
    int_or_none,
    last_user_text,
    plan_reply,
    split_pieces,
)
from .knobs import dumps
from .runtime import Call, sse_data

SYSTEM_FINGERPRINT = "fp_tollway_mock"
MODEL_CREATED = 1_700_000_000
MAX_EMBEDDING_DIMENSIONS = 16_384

_ROLE_CHOICES = (
    '[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
    '"logprobs":null,"finish_reason":null}]'
)
_DONE = b"data: [DONE]\n\n"


def openai_usage(plan: Plan) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": min(plan.cached_tokens, plan.prompt_tokens),
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _model_of(call: Call) -> str | None:
    model = call.body.get("model")
    if isinstance(model, str) and model:
        return model
    deployment = call.request.match_info.get("deployment")  # Azure: the deployment names the model
    return deployment or None


async def chat_completions(call: Call) -> web.StreamResponse:
    body = call.body
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return call.error(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    model = _model_of(call)
    if model is None:
        return call.error(
            400, "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    limit = int_or_none(body.get("max_completion_tokens"))
    if limit is None:
        limit = int_or_none(body.get("max_tokens"))
    plan = plan_reply(
        counted_prompt=count_prompt(messages),
        prompt_text=last_user_text(messages),
        knobs=call.knobs,
        limit=limit,
    )
    finish_reason = "length" if plan.truncated else "stop"
    completion_id = call.state.new_id("chatcmpl-")
    created = int(time.time())
    usage = call.reported(openai_usage(plan))

    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return await _stream_chat(
            call, completion_id, created, model, plan, finish_reason, include_usage, usage
        )

    reply: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": plan.text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage is not None:
        reply["usage"] = usage
    reply["service_tier"] = "default"
    reply["system_fingerprint"] = SYSTEM_FINGERPRINT
    return await call.json(dumps(reply).encode())


async def _stream_chat(
    call: Call,
    completion_id: str,
    created: int,
    model: str,
    plan: Plan,
    finish_reason: str,
    include_usage: bool,
    usage: dict[str, Any] | None,
) -> web.StreamResponse:
    # Every chunk shares this prefix; ``usage`` is null on each chunk only when include_usage is set.
    prefix = (
        f'{{"id":{dumps(completion_id)},"object":"chat.completion.chunk","created":{created},'
        f'"model":{dumps(model)},"service_tier":"default","system_fingerprint":"{SYSTEM_FINGERPRINT}","choices":'
    )
    suffix = ',"usage":null}' if include_usage else "}"

    def chunk(choices: str) -> bytes:
        return sse_data(prefix + choices + suffix)

    head = [chunk(_ROLE_CHOICES)]
    pieces = [
        chunk(f'[{{"index":0,"delta":{{"content":{dumps(p)}}},"logprobs":null,"finish_reason":null}}]')
        for p in split_pieces(plan.words, call.knobs.chunks)
    ]
    tail = [chunk(f'[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{finish_reason}"}}]')]
    if include_usage and usage is not None:
        tail.append(sse_data(prefix + '[],"usage":' + dumps(usage) + "}"))
    tail.append(_DONE)
    return await call.stream(head, pieces, tail)


async def embeddings(call: Call) -> web.StreamResponse:
    body = call.body
    inputs = embedding_inputs(body.get("input"))
    if inputs is None:
        return call.error(
            400,
            "'input' must be a non-empty string, array of strings, array of tokens or array of token arrays.",
            param="input",
        )
    model = _model_of(call)
    if model is None:
        return call.error(
            400, "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    raw_dimensions = body.get("dimensions")
    dimensions = call.state.settings.embedding_dimensions
    if raw_dimensions is not None:
        value = int_or_none(raw_dimensions)
        if value is None or not 1 <= value <= MAX_EMBEDDING_DIMENSIONS:
            return call.error(400, f"Invalid 'dimensions': {raw_dimensions!r}.", param="dimensions")
        dimensions = value
    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        return call.error(
            400,
            f"Invalid value for 'encoding_format': {encoding_format!r}; expected 'float' or 'base64'.",
            param="encoding_format",
        )
    data: list[dict[str, Any]] = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item, dimensions)
        encoded: Any = embedding_base64(vector) if encoding_format == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    reply: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not call.no_usage:
        tokens = call.knobs.prompt_tokens
        if tokens is None:
            tokens = sum(input_tokens(item) for item in inputs)
        reply["usage"] = call.reported({"prompt_tokens": tokens, "total_tokens": tokens})
    return await call.json(dumps(reply).encode())


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}


async def list_models(call: Call) -> web.StreamResponse:
    reply = {"object": "list", "data": [_model_object(m) for m in call.state.settings.models]}
    return await call.json(dumps(reply).encode())


async def retrieve_model(call: Call) -> web.StreamResponse:
    """Any id exists: the mock serves every model name it is asked for."""
    return await call.json(dumps(_model_object(call.request.match_info["model"])).encode())
