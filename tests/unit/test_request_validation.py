"""What the gateway refuses in a request body before it reads it, and the field each refusal names."""

from __future__ import annotations

import json

import pytest

from tollway_sidecar.extproc.validation import BadRequest, parse_body, validate
from tollway_sidecar.providers.anthropic import TranslationError, chat_to_messages
from tollway_sidecar.strictjson import MAX_DEPTH, BadJson, parse_strict

CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("tail", "param", "literal"),
    [
        (b', "temperature": NaN}', "temperature", "NaN"),
        (b', "top_p": Infinity}', "top_p", "Infinity"),
        (b', "temperature": -Infinity}', "temperature", "-Infinity"),
        (b', "temperature": 1e999}', "temperature", "1e999"),
        (
            b', "tools": [{"type": "function", "function": {"parameters": {"max": NaN}}}]}',
            "tools[0].function.parameters.max",
            "NaN",
        ),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(tail: bytes, param: str, literal: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_body(CHAT + tail)
    assert caught.value.param == param
    assert caught.value.code == "invalid_json"
    assert literal in caught.value.message and param in caught.value.message


def test_a_lone_surrogate_is_refused_and_a_pair_is_not() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}')
    assert caught.value.param == "messages[0].content"
    assert "surrogate" in caught.value.message
    body = parse_body(b'{"model": "m", "user": "\\ud83d\\ude00", "messages": []}')
    assert body["user"] == "\U0001f600"


def test_a_lone_surrogate_in_a_key_names_the_object_not_the_key() -> None:
    with pytest.raises(BadJson) as caught:
        parse_strict(b'{"metadata": {"\\udc00": 1}}')
    assert caught.value.param == "metadata"
    caught.value.message.encode("utf-8")  # the message itself is printable text


def test_a_body_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_body('{"model": "m"}'.encode("utf-16"))
    assert "UTF-8" in caught.value.message
    with pytest.raises(BadRequest):
        parse_body(b'{"model": "\xed\xa0\x80"}')  # a surrogate encoded as UTF-8 bytes


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000])
def test_nesting_past_the_limit_is_refused_naming_the_top_field(depth: int) -> None:
    raw = b'{"model": "m", "tools": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(BadRequest) as caught:
        parse_body(raw)
    assert caught.value.param is not None and caught.value.param.startswith("tools")
    assert f"deeper than {MAX_DEPTH}" in caught.value.message


def test_nesting_at_the_limit_is_accepted() -> None:
    depth = MAX_DEPTH - 1
    assert parse_strict(b"[" * depth + b"]" * depth) is not None


def test_integers_past_pythons_digit_limit_are_invalid_json() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_body(CHAT + b', "seed": ' + b"9" * 5000 + b"}")
    assert caught.value.code == "invalid_json"


def _chat(**fields: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": ["text"]}]}]},
            "messages[0].content[0]",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"type": {}}]}]},
            "messages[0].tool_calls[0].type",
        ),
        (
            {"model": "m", "messages": [{"role": "assistant", "tool_calls": {"id": "x"}}]},
            "messages[0].tool_calls",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "hi", "name": 3}]}, "messages[0].name"),
        (_chat(temperature=10**400), "temperature"),
        (_chat(top_p="high"), "top_p"),
        (_chat(seed=2**64), "seed"),
        (_chat(max_tokens=2**40), "max_tokens"),
        (_chat(n=1000), "n"),
        (_chat(stop=[1, 2]), "stop"),
        (_chat(tools={"type": "function"}), "tools"),
        (_chat(tools=["lookup"]), "tools"),
        (_chat(tool_choice=3), "tool_choice"),
        (_chat(response_format="json"), "response_format"),
    ],
)
def test_chat_fields_of_the_wrong_type_are_400_naming_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate("chat", body)
    assert caught.value.param == param
    assert param in caught.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": {"a": 1}}]},
            "messages[0].content",
        ),
        (
            {
                "model": "c",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "system": [{"type": []}],
            },
            "system[0]",
        ),
        (
            {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "system": 7},
            "system",
        ),
        ({"model": "c", "max_tokens": 5, "messages": ["x"]}, "messages[0]"),
        (
            {
                "model": "c",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "temperature": 10**400,
            },
            "temperature",
        ),
    ],
)
def test_messages_fields_of_the_wrong_type_are_400_naming_the_field(
    body: dict[str, object], param: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        validate("messages", body)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("value", "param"),
    [([{"text": "a"}], "input[0]"), (["a", None], "input[1]"), ([[1, "2"]], "input[0]"), (True, "input")],
)
def test_embedding_inputs_of_the_wrong_shape_are_400(value: object, param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate("embeddings", {"model": "e", "input": value})
    assert caught.value.param == param


def test_valid_requests_still_pass() -> None:
    assert validate("chat", _chat(temperature=0.2, seed=-5, stop="x", n=2, tool_choice="auto")) == "m"
    assert validate("embeddings", {"model": "e", "input": [[1, 2], [3]]}) == "e"
    assert validate("embeddings", {"model": "e", "input": [1, 2, 3]}) == "e"
    messages = {
        "model": "c",
        "max_tokens": 5,
        "system": "be brief",
        "messages": [{"role": "user", "content": "x"}],
    }
    assert validate("messages", messages) == "c"


@pytest.mark.parametrize("arguments", ['{"q": NaN}', "[" * 5000 + "]" * 5000])
def test_tool_arguments_that_are_not_strict_json_are_not_translated(arguments: str) -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": arguments}}],
            },
        ],
    }
    with pytest.raises(TranslationError) as caught:
        chat_to_messages(body, "claude")
    assert caught.value.param == "messages[1]"
    assert "arguments" in caught.value.message
    json.dumps(body)  # the body itself was left as it was
