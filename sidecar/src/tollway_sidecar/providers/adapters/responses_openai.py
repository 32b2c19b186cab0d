"""The Responses API (`POST /v1/responses`) to backends that serve it themselves: passed through.

- `openai`: the backend's base path + `/responses`; `Authorization: Bearer`; `model` renamed.
- `azure-openai`: the resource's v1 API, `/openai/v1/responses` on the deployment URL's host (Azure
  names the deployment in `model` there, not in the path); `api-key`.

Answers and streams are the client's own API: read for usage (`usage.input_tokens` /
`output_tokens` with their details; a stream's usage is in its `response.completed` event), never
rewritten. Stored-response features (`store`, `previous_response_id`) are the backend's, so they
work only while one backend answers the calls that share them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from tollway_sidecar.providers.adapters.base import (
    AttemptRequest,
    ClientAnswer,
    Refused,
    StreamReader,
    UpstreamRequest,
)
from tollway_sidecar.providers.adapters.openai import AzureOpenAI, OpenAICompatible, not_json
from tollway_sidecar.providers.usage import SseParser, read_json, responses_finish

__all__ = ["AzureResponses", "OpenAIResponses", "output_text"]

_AZURE_DEPLOYMENTS = "/openai/deployments/"


def output_text(response: Any) -> str | None:
    """The text of a `response` object's message items (the SDK's `output_text`), for capture."""
    if not isinstance(response, dict) or not isinstance(response.get("output"), list):
        return None
    texts = [
        part["text"]
        for item in response["output"]
        if isinstance(item, dict) and item.get("type") == "message" and isinstance(item.get("content"), list)
        for part in item["content"]
        if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str)
    ]
    return "".join(texts) if texts else None


def _renamed(body: dict[str, Any] | None, model: str) -> bytes | None:
    if body is None or body.get("model") == model:
        return None
    return json.dumps({**body, "model": model}, separators=(",", ":")).encode()


class OpenAIResponses(OpenAICompatible):
    """responses → `openai`."""

    def check(self, body: dict[str, Any]) -> Refused | None:
        return None

    def answer(self, status: int, content_type: str, body: bytes) -> ClientAnswer:
        obj, parsed = read_json(False, body)
        if status < 300 and not isinstance(obj, dict):
            return ClientAnswer(None, None, None, error=parsed.error, bad_gateway=not_json(status))
        finish = responses_finish(obj) if status < 300 else ()
        return ClientAnswer(
            None, None, parsed.usage, parsed.model, finish, parsed.error, text=output_text(obj)
        )

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> StreamReader:
        return SseParser("openai", on_event=on_event, responses=True)


class AzureResponses(OpenAIResponses):
    """responses → `azure-openai`: the resource's `/openai/v1/responses`, the deployment as `model`."""

    credential_headers: ClassVar[tuple[str, ...]] = AzureOpenAI.credential_headers

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        backend = attempt.backend
        prefix, found, rest = backend.path_prefix.partition(_AZURE_DEPLOYMENTS)
        deployment = rest.split("/", 1)[0] if found and rest else backend.model
        query = attempt.client_path.partition("?")[2]
        path = prefix + "/openai/v1/responses" + (f"?{query}" if query else "")
        headers = {"api-key": attempt.credential} if attempt.credential else {}
        return UpstreamRequest(path=path, set_headers=headers, body=_renamed(attempt.body, deployment))
