"""Per-provider attempt rewrites (each adapter's `request`), and which failed attempt a client hears
about."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.adapters.base import AttemptRequest
from tollway_sidecar.providers.adapters.registry import CREDENTIAL_HEADERS, adapter_for, removals
from tollway_sidecar.providers.attempts import Attempt, error_rank, most_useful, retry_after_seconds


@dataclass(frozen=True)
class Rewrite:
    path: str
    set_headers: dict[str, str]
    remove: tuple[str, ...]


def _request(
    backend: Backend, operation: str, path: str, headers: Mapping[str, str], body: dict[str, Any] | None
) -> Any:
    adapter = adapter_for(operation, backend.provider)
    assert adapter is not None, (operation, backend.provider)
    return adapter.request(
        AttemptRequest(backend, path, headers, body, None, backend.credential, time.time(), False)
    )


def request_headers(backend: Backend, operation: str, path: str, headers: Mapping[str, str]) -> Rewrite:
    """The attempt's path and headers, and what it removes (as the upstream filter sends them)."""
    upstream = _request(backend, operation, path, headers, None)
    return Rewrite(upstream.path, upstream.set_headers, removals(upstream))


def request_body(backend: Backend, operation: str, body: dict[str, Any]) -> Any:
    """The attempt's body, decoded; None when the client's is sent unchanged."""
    upstream = _request(backend, operation, "/v1/chat/completions", {}, body)
    return json.loads(upstream.body) if upstream.body is not None else None


CHAT = {"model": "client-name", "messages": [{"role": "user", "content": "hi"}]}


def make(provider: str, url: str, **extra: object) -> Backend:
    return Backend(
        name="b", provider=provider, model="upstream-model", base_url=url, credential="sk-1", **extra
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("backend", "path", "headers"),
    [
        (
            make("openai", "https://api.openai.com/v1"),
            "/v1/chat/completions",
            {"authorization": "Bearer sk-1"},
        ),
        (
            make("gemini", "https://generativelanguage.googleapis.com/v1beta/openai"),
            "/v1beta/openai/chat/completions",
            {"authorization": "Bearer sk-1"},
        ),
        (
            make(
                "azure-openai",
                "https://res.openai.azure.com/openai/deployments/gpt-4o",
                api_version="2024-10-21",
            ),
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            {"api-key": "sk-1"},
        ),
        (
            make("anthropic", "https://api.anthropic.com"),
            "/v1/messages",
            {"x-api-key": "sk-1", "anthropic-version": "2023-06-01"},
        ),
        (
            make("anthropic", "https://proxy.internal/anthropic/v1"),
            "/anthropic/v1/messages",
            {"x-api-key": "sk-1", "anthropic-version": "2023-06-01"},
        ),
    ],
)
def test_path_and_credentials_per_provider(backend: Backend, path: str, headers: dict[str, str]) -> None:
    rewrite = request_headers(backend, "chat", "/v1/chat/completions", {})
    assert rewrite.path == path
    assert rewrite.set_headers == headers
    # Every credential header another provider might have set on an earlier attempt is removed.
    assert set(rewrite.remove) == set(CREDENTIAL_HEADERS) - set(headers)


def test_azure_embeddings_and_a_keyless_local_model() -> None:
    azure = make(
        "azure-openai", "https://res.openai.azure.com/openai/deployments/emb", api_version="2024-10-21"
    )
    assert request_headers(azure, "embeddings", "/v1/embeddings", {}).path == (
        "/openai/deployments/emb/embeddings?api-version=2024-10-21"
    )
    local = Backend(
        name="l", provider="openai-compatible", model="llama", base_url="http://127.0.0.1:8000/v1"
    )
    rewrite = request_headers(local, "chat", "/v1/chat/completions?x=1", {})
    assert rewrite.path == "/v1/chat/completions?x=1"
    assert rewrite.set_headers == {} and "authorization" in rewrite.remove


def test_native_messages_keep_the_clients_api_version_and_query() -> None:
    anthropic = make("anthropic", "https://api.anthropic.com")
    rewrite = request_headers(
        anthropic, "messages", "/v1/messages?beta=true", {"anthropic-version": "2023-01-01"}
    )
    assert rewrite.path == "/v1/messages?beta=true"
    assert rewrite.set_headers["anthropic-version"] == "2023-01-01"


def test_bodies_per_provider() -> None:
    assert request_body(make("openai", "https://api.openai.com/v1"), "chat", CHAT) == {
        **CHAT,
        "model": "upstream-model",
    }
    same = Backend(name="s", provider="openai", model="client-name", base_url="https://api.openai.com/v1")
    assert request_body(same, "chat", CHAT) is None
    translated = request_body(make("anthropic", "https://api.anthropic.com"), "chat", CHAT)
    assert translated == {
        "model": "upstream-model",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    native = {"model": "client-name", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert request_body(make("anthropic", "https://api.anthropic.com"), "messages", native) == {
        **native,
        "model": "upstream-model",
    }


def attempt(number: int, status: int, body: bytes | None = b"{}") -> Attempt:
    return Attempt(
        number=number, backend=f"b{number}", provider="openai", started=0, status=status, error_body=body
    )


def test_auth_beats_request_errors_beat_rate_limits_beat_server_errors() -> None:
    assert [error_rank(s) for s in (401, 403, 400, 404, 429, 408, 500, 503, 0)] == [0, 0, 1, 1, 2, 3, 3, 3, 3]
    assert most_useful([attempt(1, 503), attempt(2, 429), attempt(3, 500)]) == attempt(2, 429)
    assert most_useful([attempt(1, 429), attempt(2, 401)]) == attempt(2, 401)
    assert most_useful([attempt(1, 502), attempt(2, 503)]) == attempt(1, 502)  # same rank: the first
    assert most_useful([attempt(1, 0, None), attempt(2, 503, None)]) is None  # nothing to show


def test_retry_after_in_seconds_milliseconds_or_a_date() -> None:
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "7"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None
