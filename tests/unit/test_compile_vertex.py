"""Compiling vertex backends: project and region, the default endpoint, the service-account key Secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_compile import compile_docs, only_error, resource, route_error, secret

KEY = {
    "type": "service_account",
    "client_email": "gw@my-proj.iam.gserviceaccount.com",
    "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvSECRET\n-----END PRIVATE KEY-----\n",
    "token_uri": "https://oauth2.googleapis.com/token",
}


def vertex(**fields: Any) -> dict[str, Any]:
    return {
        "name": "vx",
        "provider": "vertex",
        "model": "gemini-2.5-flash",
        "project": "my-proj",
        "region": "us-central1",
        "credentialsSecretRef": {"name": "gcp", "key": "key.json"},
    } | fields


def key_secret(text: str | None = None) -> dict[str, Any]:
    # As a key file is downloaded: pretty-printed, newlines and a trailing newline.
    return secret("gcp", **{"key.json": text if text is not None else json.dumps(KEY, indent=2) + "\n"})


def test_vertex_backend_compiles_with_its_key_and_token_source(tmp_path: Path) -> None:
    result = compile_docs(
        tmp_path, key_secret(), resource("RouteRule", "vx", {"model": "fast", "backends": [vertex()]})
    )
    assert result.errors == ()
    (b,) = result.config.routes[0].backends
    assert (b.provider, b.project, b.region, b.base_url, b.credential_source) == (
        "vertex",
        "my-proj",
        "us-central1",
        "https://us-central1-aiplatform.googleapis.com",
        "google-service-account",
    )
    assert json.loads(b.credential or "") == KEY


def test_global_location_claude_model_and_base_url_override(tmp_path: Path) -> None:
    spec = {"model": "fast", "backends": [vertex(model="claude-haiku-4-5@20251001", region="global")]}
    result = compile_docs(tmp_path, key_secret(), resource("RouteRule", "vx", spec))
    assert result.errors == ()
    assert result.config.routes[0].backends[0].base_url == "https://aiplatform.googleapis.com"
    spec = {"model": "fast", "backends": [vertex(baseURL="http://127.0.0.1:9000")]}
    result = compile_docs(tmp_path, key_secret(), resource("RouteRule", "vx", spec))
    assert result.config.routes[0].backends[0].base_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize("field", ["project", "region"])
def test_project_and_region_are_required(tmp_path: Path, field: str) -> None:
    backend = vertex()
    del backend[field]
    error = route_error(tmp_path, key_secret(), backends=[backend])
    assert error.field.endswith(field) and "required for provider 'vertex'" in error.message


def test_an_aws_region_is_not_a_vertex_location(tmp_path: Path) -> None:
    error = route_error(tmp_path, key_secret(), backends=[vertex(region="us-east-1")])
    assert error.field.endswith("region") and "Google Cloud location" in error.message


def test_only_vertex_takes_a_project(tmp_path: Path) -> None:
    other = {
        "name": "m",
        "provider": "openai-compatible",
        "model": "x",
        "baseURL": "http://h/v1",
        "project": "my-proj",
    }
    error = route_error(tmp_path, backends=[other])
    assert error.field.endswith("project")


@pytest.mark.parametrize(
    "text", ["sk-not-a-key", json.dumps({"client_email": "a@b", "token_uri": "https://t"})]
)
def test_the_secret_must_hold_a_service_account_key_and_is_never_quoted(tmp_path: Path, text: str) -> None:
    result = compile_docs(
        tmp_path, key_secret(text), resource("RouteRule", "vx", {"model": "fast", "backends": [vertex()]})
    )
    error = only_error(result)
    assert error.field.endswith("credentialsSecretRef.key") and "service-account JSON key" in error.message
    assert "private_key" in error.message and text not in error.message
    assert result.config.routes == ()


def test_an_unpriced_vertex_model_needs_pricing(tmp_path: Path) -> None:
    spec = {"model": "fast", "backends": [vertex(model="my-tuned-model")]}
    error = only_error(compile_docs(tmp_path, key_secret(), resource("RouteRule", "vx", spec)))
    assert error.field.endswith("pricing")
