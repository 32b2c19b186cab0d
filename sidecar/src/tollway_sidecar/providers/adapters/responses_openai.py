"""The Responses API (`POST /v1/responses`) to backends that serve it themselves: passed through.

- `openai`: the backend's base path + `/responses`; `Authorization: Bearer`; `model` renamed.
- `azure-openai`: the resource's v1 API, `/openai/v1/responses` on the deployment URL's host (Azure
  names the deployment in `model` there, not in the path); `api-key`.

Answers and streams are the client's own API: read for usage (`usage.input_tokens` /
`output_tokens` with their details; a stream's usage is in its `response.completed` event), never
rewritten. Stored responses are the backend's: the answer's id (the JSON `id`, a stream's
`response.created` event) is handed to the router, which pins `GET`/`DELETE /v1/responses/{id}`,
`…/input_items` and `previous_response_id` to the backend that stored it; `request` rewrites those
paths as it does the POST's (`/responses/{id}…` under the backend's base path, Azure's
`/openai/v1/responses/{id}…`).
"""

from __future__ import annotations

import contextlib
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
from tollway_sidecar.providers.usage import ParsedStream, SseParser, read_json, responses_finish

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


def _response_id(obj: Any) -> str | None:
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and value else None


_ID_EVENTS = (b"response.created", b"response.completed")
_ID_PREFIXES = (b'{"type":"response.created"', b'{"type":"response.completed"')


class _IdReader:
    """A Responses stream's reader that also keeps the id its `response.created` event names."""

    __slots__ = ("_on_event", "_parser", "response_id")

    def __init__(self, on_event: Callable[[bytes | None, bytes], None] | None) -> None:
        self.response_id: str | None = None
        self._on_event = on_event
        self._parser = SseParser("openai", on_event=self._event, responses=True)

    def _event(self, name: bytes | None, data: bytes) -> None:
        # Named events as OpenAI sends them; a nameless one only if its type says so (cheaply).
        named = name in _ID_EVENTS or (name is None and data[:40].startswith(_ID_PREFIXES))
        if self.response_id is None and named:
            with contextlib.suppress(ValueError, AttributeError):  # the usage parser reports it
                self.response_id = _response_id(json.loads(data).get("response"))
        if self._on_event is not None:
            self._on_event(name, data)

    @property
    def complete(self) -> bool:
        return self._parser.complete

    def feed(self, chunk: bytes) -> bytes | None:
        return self._parser.feed(chunk)

    def flush(self) -> bytes:
        return self._parser.flush()

    def finish(self) -> ParsedStream:
        return self._parser.finish()


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
            None,
            None,
            parsed.usage,
            parsed.model,
            finish,
            parsed.error,
            text=output_text(obj),
            response_id=_response_id(obj) if status < 300 else None,
        )

    def stream(
        self,
        *,
        client_model: str,
        strip_usage_chunk: bool,
        on_event: Callable[[bytes | None, bytes], None] | None = None,
    ) -> StreamReader:
        return _IdReader(on_event)

    def stream_response_id(self, reader: StreamReader) -> str | None:
        return reader.response_id if isinstance(reader, _IdReader) else None


class AzureResponses(OpenAIResponses):
    """responses → `azure-openai`: the resource's `/openai/v1/responses`, the deployment as `model`."""

    credential_headers: ClassVar[tuple[str, ...]] = AzureOpenAI.credential_headers

    def request(self, attempt: AttemptRequest) -> UpstreamRequest:
        backend = attempt.backend
        prefix, found, rest = backend.path_prefix.partition(_AZURE_DEPLOYMENTS)
        deployment = rest.split("/", 1)[0] if found and rest else backend.model
        # `/v1/responses`, or a stored response's `/v1/responses/{id}…`, under the resource's `/openai`.
        client_path, _, query = attempt.client_path.partition("?")
        path = prefix + "/openai" + client_path + (f"?{query}" if query else "")
        headers = {"api-key": attempt.credential} if attempt.credential else {}
        return UpstreamRequest(path=path, set_headers=headers, body=_renamed(attempt.body, deployment))
