"""How one attempt's request is rewritten for its backend's provider: path, credentials, body. Pure.

Envoy keeps the header mutations of an earlier attempt on a retry, so `request_headers` returns a
value for, or removes, every header any provider rewrite touches: each attempt is right for its own
backend whatever the previous attempt set.

- `openai`, `openai-compatible`, `gemini`: base path + the client path without `/v1`;
  `Authorization: Bearer`; `model` renamed.
- `azure-openai`: the deployment URL + `/chat/completions` (or `/embeddings`) `?api-version=…`;
  `api-key`; `model` renamed (Azure reads the deployment from the path).
- `anthropic`: the API root + `/v1/messages`; `x-api-key` and `anthropic-version`; the body translated
  from chat completions, or (native `/v1/messages` clients) only `model` renamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.anthropic import ANTHROPIC_VERSION, chat_to_messages

__all__ = ["CREDENTIAL_HEADERS", "UpstreamRequest", "request_body", "request_headers"]

# Every header a provider rewrite sets; each attempt sets or removes each of them.
CREDENTIAL_HEADERS: Final = ("authorization", "api-key", "x-api-key", "anthropic-version")


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    path: str
    set_headers: dict[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


def _anthropic_root(prefix: str) -> str:
    return prefix.removesuffix("/v1")


def request_headers(
    backend: Backend, operation: str, client_path: str, client_headers: Mapping[str, str]
) -> UpstreamRequest:
    """The path and headers of one attempt on `backend` for a client call to `client_path`."""
    path, _, query = client_path.partition("?")
    prefix = backend.path_prefix
    headers: dict[str, str] = {}
    if backend.provider == "anthropic":
        upstream_path = _anthropic_root(prefix) + "/v1/messages"
        if operation == "messages" and query:
            upstream_path += "?" + query
        if backend.credential:
            headers["x-api-key"] = backend.credential
        # A native Anthropic client says which API version it speaks; a translated call speaks ours.
        client_version = client_headers.get("anthropic-version") if operation == "messages" else None
        headers["anthropic-version"] = client_version or ANTHROPIC_VERSION
    elif backend.provider == "azure-openai":
        upstream_path = prefix + path.removeprefix("/v1")
        if backend.api_version:
            upstream_path += "?api-version=" + quote(backend.api_version, safe="")
        if backend.credential:
            headers["api-key"] = backend.credential
    else:
        upstream_path = prefix + path.removeprefix("/v1")
        if query:
            upstream_path += "?" + query
        if backend.credential:
            headers["authorization"] = f"Bearer {backend.credential}"
    remove = tuple(name for name in CREDENTIAL_HEADERS if name not in headers)
    return UpstreamRequest(path=upstream_path, set_headers=headers, remove=remove)


def request_body(backend: Backend, operation: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON body for this attempt, or None to send the client's body as it is.

    Raises `anthropic.TranslationError` when a chat request cannot be expressed for Anthropic.
    """
    if backend.provider == "anthropic" and operation == "chat":
        return chat_to_messages(body, backend.model)
    if body.get("model") == backend.model:
        return None
    return {**body, "model": backend.model}
