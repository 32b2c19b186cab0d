"""Through the real gateway: request shapes that once crashed the router filter are 400s naming the
field, non-JSON constants and encoded bodies never reach the provider, a trailing slash is served."""

from __future__ import annotations

import gzip
import json
import sys

import pytest
from gateway_env import DEMO_KEY, ROOT, Gateway
from httpcall import bearer, call

sys.path.insert(0, str(ROOT / "tests"))
import fuzzbodies

CHAT = fuzzbodies.CHAT
GOOD = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _mutation(endpoint: str, model: str, field: str, kind: str) -> fuzzbodies.Mutation:
    for mutation in fuzzbodies.mutations(endpoint, model, kinds=(kind,)):
        if mutation.field == field:
            return mutation
    raise AssertionError(f"fuzzbodies has no {field} := {kind} for {endpoint}")


# (endpoint, model, field mutated, replacement, param the 400 must name). Before strict parsing and
# typed validation each was a 500, a 400 naming another field, or a body forwarded to the provider.
CRASHERS = [
    (CHAT, "gpt-4o-mini", "messages[1].content[0].type", "empty_object", "messages[1].content[0]"),
    (CHAT, "gpt-4o-mini", "messages", "deep_array", "messages"),
    (CHAT, "gpt-4o-mini", "tools[0].function.parameters", "deep_object", "tools"),
    (CHAT, "gpt-4o-mini", "temperature", "nan", "temperature"),
    (CHAT, "gpt-4o-mini", "top_p", "infinity", "top_p"),
    (CHAT, "gpt-4o-mini", "temperature", "float_overflow", "temperature"),
    (CHAT, "gpt-4o-mini", "user", "lone_surrogate", "user"),
    (CHAT, "gpt-4o-mini", "messages[2].tool_calls[0].type", "empty_array", "messages[2].tool_calls[0].type"),
    (CHAT, "claude-haiku", "temperature", "huge_int", "temperature"),
    (CHAT, "claude-haiku", "messages[4].content", "object", "messages[4].content"),
    (fuzzbodies.EMBEDDINGS, "text-embedding-3-small", "input[0]", "deep_object", "input"),
    (fuzzbodies.EMBEDDINGS, "text-embedding-3-small", "input[0]", "object", "input[0]"),
]


@pytest.mark.parametrize(("endpoint", "model", "field", "kind", "param"), CRASHERS)
def test_shapes_that_crashed_the_filter_are_400_naming_the_field(
    gateway: Gateway, endpoint: str, model: str, field: str, kind: str, param: str
) -> None:
    mutation = _mutation(endpoint, model, field, kind)
    answer = call(gateway.origin, "POST", endpoint, mutation.body, bearer(DEMO_KEY))
    assert answer.status == 400, answer.body[:300]
    assert answer.error["param"] == param
    assert param.split("[")[0] in answer.error["message"]


def test_a_messages_request_with_a_bad_system_block_is_400_in_the_anthropic_shape(gateway: Gateway) -> None:
    mutation = _mutation(fuzzbodies.MESSAGES, "claude-haiku", "system[0].type", "empty_array")
    answer = call(gateway.origin, "POST", fuzzbodies.MESSAGES, mutation.body, {"x-api-key": DEMO_KEY})
    assert answer.status == 400, answer.body[:300]
    payload = answer.json()
    assert payload["type"] == "error" and "system[0]" in payload["error"]["message"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_json_numbers_are_refused_and_never_forwarded(gateway: Gateway, literal: bytes) -> None:
    gateway.clear_mock_requests()
    body = json.dumps({**GOOD, "temperature": "X"}).encode().replace(b'"X"', literal)
    answer = call(gateway.origin, "POST", CHAT, body, bearer(DEMO_KEY))
    assert answer.status == 400, answer.body
    assert answer.error["param"] == "temperature"
    assert literal.decode() in answer.error["message"]
    assert gateway.mock_requests() == []


@pytest.mark.parametrize("compressed", [False, True])
def test_a_content_encoded_body_is_415_and_never_forwarded(gateway: Gateway, compressed: bool) -> None:
    gateway.clear_mock_requests()
    plain = json.dumps(GOOD).encode()
    body = gzip.compress(plain) if compressed else plain  # labelled gzip either way
    answer = call(gateway.origin, "POST", CHAT, body, {**bearer(DEMO_KEY), "content-encoding": "gzip"})
    assert answer.status == 415, answer.body
    assert answer.error["code"] == "unsupported_content_encoding"
    assert gateway.mock_requests() == []


@pytest.mark.parametrize(
    ("path", "body", "provider_path"),
    [
        ("/v1/chat/completions/", GOOD, "/v1/chat/completions"),
        ("/v1/embeddings/", {"model": "text-embedding-3-small", "input": "hi"}, "/v1/embeddings"),
        (
            "/v1/messages/",
            {"model": "claude-haiku", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
            "/v1/messages",
        ),
    ],
)
def test_a_trailing_slash_is_served_as_the_path_without_it(
    gateway: Gateway, path: str, body: dict[str, object], provider_path: str
) -> None:
    gateway.clear_mock_requests()
    answer = call(gateway.origin, "POST", path, json.dumps(body).encode(), bearer(DEMO_KEY))
    assert answer.status == 200, answer.body
    assert [r["path"] for r in gateway.mock_requests()] == [provider_path]


def test_models_with_a_trailing_slash_and_unknown_paths(gateway: Gateway) -> None:
    assert call(gateway.origin, "GET", "/v1/models/", None, bearer(DEMO_KEY)).status == 200
    for path in ("/v1/chat/completions/extra", "/v1/completions", "/health"):
        answer = call(gateway.origin, "POST", path, json.dumps(GOOD).encode(), bearer(DEMO_KEY))
        assert answer.status == 404, (path, answer.body)
        assert answer.error["code"] == "unknown_url"
