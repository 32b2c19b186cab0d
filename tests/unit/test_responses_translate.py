"""Responses API ⇄ chat completions: the request mapping, the refusals, whole answers and streams
(any chunking), each result validated by the openai SDK's own types."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tollway_sidecar.providers.responses import Untranslatable, from_chat, to_chat, unsupported
from tollway_sidecar.providers.responses_stream import ChatStreamToResponses
from tollway_sidecar.providers.usage import SseParser, TokenUsage, parse_json

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "responses"
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# --- to_chat ---------------------------------------------------------------------------------------


def test_to_chat_maps_every_field() -> None:
    body: dict[str, Any] = {
        "model": "route-model",
        "instructions": "Be brief.",
        "input": [
            {"role": "developer", "content": [{"type": "input_text", "text": "Use metric units."}]},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in "},
                    {"type": "input_text", "text": "this picture?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
                    {"type": "input_file", "file_id": "file-1", "filename": "a.pdf"},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "output_text", "text": "A bridge.", "annotations": []}],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_a", "name": "length", "arguments": '{"of":"bridge"}'},
            {"type": "function_call", "call_id": "call_b", "name": "height", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_a", "output": "1200 m"},
            {
                "type": "function_call_output",
                "call_id": "call_b",
                "output": [{"type": "input_text", "text": "80 m"}],
            },
            {"role": "user", "content": "Thanks"},
        ],
        "max_output_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "tools": [
            {
                "type": "function",
                "name": "length",
                "description": "Length of a thing",
                "parameters": {"type": "object", "properties": {"of": {"type": "string"}}},
                "strict": True,
            }
        ],
        "tool_choice": {"type": "function", "name": "length"},
        "parallel_tool_calls": False,
        "text": {
            "format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True},
            "verbosity": "low",
        },
        "reasoning": {"effort": "high", "summary": "auto"},
        "user": "u-1",
        "metadata": {"team": "search"},
        "store": False,
        "truncation": "disabled",
        "stream": True,
    }
    assert unsupported(body) is None
    assert to_chat(body) == {
        "model": "route-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use metric units."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in "},
                    {"type": "text", "text": "this picture?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                    {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
                ],
            },
            {
                "role": "assistant",
                "content": "A bridge.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "length", "arguments": '{"of":"bridge"}'},
                    },
                    {"id": "call_b", "type": "function", "function": {"name": "height", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "1200 m"},
            {"role": "tool", "tool_call_id": "call_b", "content": "80 m"},
            {"role": "user", "content": "Thanks"},
        ],
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "user": "u-1",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "length",
                    "description": "Length of a thing",
                    "parameters": {"type": "object", "properties": {"of": {"type": "string"}}},
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "length"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        "verbosity": "low",
        "reasoning_effort": "high",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_to_chat_simple_forms() -> None:
    assert to_chat({"model": "m", "input": "hi"}) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
    }
    chat = to_chat(
        {
            "model": "m",
            "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}],
            "tool_choice": "required",
            "text": {"format": {"type": "json_object"}},
        }
    )
    assert chat["messages"] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    ]
    assert chat["tool_choice"] == "required"
    assert chat["response_format"] == {"type": "json_object"}
    assert "response_format" not in to_chat(
        {"model": "m", "input": "x", "text": {"format": {"type": "text"}}}
    )
    assert "stream" not in to_chat({"model": "m", "input": "x", "stream": False})


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"role": "user", "content": [{"type": "input_video", "url": "x"}]}], "input[0].content[0].type"),
        (
            [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}],
            "input[0].content[0].image_url",
        ),
        (
            [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x/y.pdf"}]}],
            "input[0].content[0]",
        ),
        (
            [{"role": "system", "content": [{"type": "input_image", "image_url": "https://x"}]}],
            "input[0].content[0].type",
        ),
        ([{"role": "tool", "content": "x"}], "input[0].role"),
        ([{"role": "user", "content": 7}], "input[0].content"),
        ([{"type": "function_call", "name": "f"}], "input[0]"),
        ([{"type": "function_call_output", "call_id": "c", "output": {"x": 1}}], "input[0].output"),
        (["text"], "input[0]"),
    ],
)
def test_to_chat_names_what_it_cannot_translate(items: list[Any], param: str) -> None:
    with pytest.raises(Untranslatable) as refused:
        to_chat({"model": "m", "input": items})
    assert refused.value.param == param
    assert param.split(".")[-1].split("[")[0] in refused.value.message


def test_to_chat_refuses_a_bad_instructions_or_input() -> None:
    with pytest.raises(Untranslatable) as bad:
        to_chat({"model": "m", "input": "x", "instructions": ["a"]})
    assert bad.value.param == "instructions"
    with pytest.raises(Untranslatable) as missing:
        to_chat({"model": "m"})
    assert missing.value.param == "input"


# --- unsupported -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"max_tool_calls": 3}, "max_tool_calls"),
        ({"background": True}, "background"),
        ({"store": True}, "store"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}, "tools[1].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": "x"}, {"type": "web_search_call", "id": "ws"}]},
            "input[1].type",
        ),
    ],
)
def test_unsupported_names_the_field(extra: dict[str, Any], param: str) -> None:
    body = {"model": "m", "input": "hi", **extra}
    refused = unsupported(body)
    assert refused is not None
    message, named = refused
    assert named == param
    assert param.split("[")[0].split(".")[0] in message


def test_supported_requests_pass() -> None:
    for body in (
        {"model": "m", "input": "hi"},
        {
            "model": "m",
            "input": "hi",
            "store": False,
            "truncation": "disabled",
            "include": [],
            "background": False,
        },
        {
            "model": "m",
            "input": [{"type": "reasoning", "id": "rs", "summary": []}, {"role": "user", "content": "x"}],
        },
        {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": "auto"},
    ):
        assert unsupported(body) is None, body


# --- from_chat -------------------------------------------------------------------------------------


def translated(chat: dict[str, Any], request: dict[str, Any] | None = None) -> dict[str, Any]:
    response = from_chat(chat, request=request or {}, response_id="resp_abc", created_at=1_700_000_000)
    assert response is not None
    Response.model_validate(response)  # strictly the SDK's type
    return response


@pytest.mark.parametrize(
    "name",
    ["openai_chat_completion.json", "openai_reasoning_completion.json", "gemini_openai_completion.json"],
)
def test_from_chat_text_and_usage_as_the_gateway_reads_it(name: str) -> None:
    chat = json.loads(fixture(name))
    response = translated(chat)
    (message,) = response["output"]
    assert message["type"] == "message" and message["id"] == "msg_abc00"
    assert message["content"][0]["text"] == chat["choices"][0]["message"]["content"]
    charged = parse_json("openai", fixture(name)).usage
    assert charged is not None
    usage = response["usage"]
    assert usage["input_tokens"] == charged.input_tokens
    assert usage["output_tokens"] == charged.output_tokens
    assert usage["input_tokens_details"]["cached_tokens"] == charged.cache_read_tokens
    assert usage["output_tokens_details"]["reasoning_tokens"] == charged.reasoning_tokens
    assert usage["total_tokens"] == charged.total_tokens
    assert response["model"] == chat["model"]
    finish = chat["choices"][0]["finish_reason"]
    assert response["status"] == ("incomplete" if finish == "length" else "completed")


def test_from_chat_reasoning_example_numbers() -> None:
    usage = translated(json.loads(fixture("openai_reasoning_completion.json")))["usage"]
    assert usage == {
        "input_tokens": 1366,
        "input_tokens_details": {"cached_tokens": 1280, "cache_write_tokens": 0},
        "output_tokens": 2186,
        "output_tokens_details": {"reasoning_tokens": 1792},
        "total_tokens": 3552,
    }
    # Gemini's thoughts are only in total_tokens: counted as output and reasoning, as charged.
    gemini = translated(json.loads(fixture("gemini_openai_completion.json")))
    assert (
        gemini["usage"]["output_tokens"] == 100
        and gemini["usage"]["output_tokens_details"]["reasoning_tokens"] == 93
    )
    assert gemini["incomplete_details"] == {"reason": "max_output_tokens"}
    assert gemini["output"][0]["status"] == "incomplete" and gemini["completed_at"] is None


def test_from_chat_tool_calls_reasoning_and_refusal() -> None:
    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "deepseek-reasoner",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "reasoning_content": "The user wants the weather.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42},
    }
    request = {
        "model": "m",
        "input": "x",
        "instructions": "Be kind.",
        "tools": [{"type": "function", "name": "weather"}],
    }
    response = translated(chat, request)
    assert [item["type"] for item in response["output"]] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    reasoning, message, first, second = response["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "The user wants the weather."}]
    assert message["content"][0]["text"] == "Checking."
    assert (first["call_id"], first["name"], first["arguments"]) == ("call_1", "weather", '{"city":"Oslo"}')
    assert second["call_id"] == "call_2" and second["id"] == "fc_abc03"
    assert len({item["id"] for item in response["output"]}) == 4
    assert response["status"] == "completed"
    assert response["instructions"] == "Be kind." and response["tools"] == request["tools"]
    assert response["store"] is False

    refused = translated(
        {
            "model": "m",
            "choices": [
                {
                    "message": {"role": "assistant", "content": None, "refusal": "I can't."},
                    "finish_reason": "stop",
                }
            ],
        }
    )
    assert refused["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't."}]
    assert refused["usage"] is None


def test_from_chat_content_filter_and_not_a_completion() -> None:
    filtered = translated(
        {
            "model": "m",
            "choices": [{"message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"}],
        }
    )
    assert filtered["status"] == "incomplete" and filtered["incomplete_details"] == {
        "reason": "content_filter"
    }
    assert filtered["output"] == []
    for bad in ({"object": "list"}, {"choices": []}, {"choices": [{"message": "x"}]}):
        assert from_chat(bad, request={}, response_id="resp_x", created_at=0) is None


# --- streams ---------------------------------------------------------------------------------------


def chunk(
    delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "qwen3",
        "choices": choices,
        "usage": usage,
    }


def sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


TOOL_STREAM = sse(
    [
        chunk({"role": "assistant", "content": None}),
        chunk({"reasoning_content": "Two cities, "}),
        chunk({"reasoning_content": "two calls."}),
        chunk({"content": "Looking up."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city"'},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ':"Rome"}'}}]}),
        chunk({}, "tool_calls"),
        chunk(
            None,
            usage={
                "prompt_tokens": 50,
                "completion_tokens": 20,
                "total_tokens": 70,
                "completion_tokens_details": {"reasoning_tokens": 6},
            },
        ),
    ]
)


def split_randomly(raw: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 40))))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def translate(raw: bytes, pieces: list[bytes] | None = None) -> bytes:
    translator = ChatStreamToResponses(
        request={}, response_id="resp_s", created_at=1_700_000_000, model="route-model"
    )
    out = b"".join(translator.feed(piece) for piece in (pieces or [raw])) + translator.flush()
    assert translator.done
    return out


def events_of(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert name_line == "event: " + data["type"]
        out.append(data)
    return out


def replayed(events: list[dict[str, Any]]) -> Any:
    """Every event validated strictly, then accumulated by the SDK's own stream helper state."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    for data in events:
        for event in state.handle_event(EVENTS.validate_python(data)):
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert final is not None
    return final


@pytest.mark.parametrize(
    "name",
    [
        "openai_chat_stream.sse",
        "openai_reasoning_stream.sse",
        "gemini_openai_stream.sse",
        "openai_chat_stream_no_usage.sse",
    ],
)
def test_fixture_streams_translate_with_the_usage_the_gateway_reads(name: str) -> None:
    raw = fixture(name)
    events = events_of(translate(raw))
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    final = replayed(events)
    chat_text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in (json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: {"))
        if c["choices"]
    )
    assert final.output_text == chat_text
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == chat_text
    parser = SseParser("openai")
    parser.feed(raw)
    charged = parser.finish().usage
    if charged is None:
        assert final.usage is None
    else:
        assert final.usage.input_tokens == charged.input_tokens
        assert final.usage.output_tokens == charged.output_tokens
        assert final.usage.input_tokens_details.cached_tokens == charged.cache_read_tokens
        assert final.usage.output_tokens_details.reasoning_tokens == charged.reasoning_tokens
    assert final.status == ("incomplete" if name.startswith("gemini") else "completed")
    assert kinds[-1] == ("response.incomplete" if name.startswith("gemini") else "response.completed")


def test_tool_calls_and_reasoning_stream() -> None:
    events = events_of(translate(TOOL_STREAM))
    final = replayed(events)
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call", "function_call"]
    reasoning, message, first, second = final.output
    assert reasoning.content[0].text == "Two cities, two calls."
    assert message.content[0].text == "Looking up."
    assert (first.call_id, first.name, first.arguments) == ("call_a", "weather", '{"city":"Oslo"}')
    assert (second.call_id, second.arguments) == ("call_b", '{"city":"Rome"}')
    deltas: dict[str, str] = {}
    for e in events:
        if e["type"] == "response.function_call_arguments.delta":
            deltas[e["item_id"]] = deltas.get(e["item_id"], "") + e["delta"]
    assert deltas == {first.id: first.arguments, second.id: second.arguments}
    done = {
        e["item_id"]: e["arguments"] for e in events if e["type"] == "response.function_call_arguments.done"
    }
    assert done == deltas
    assert [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"] == [
        "Two cities, ",
        "two calls.",
    ]
    assert final.usage.model_dump() == {
        "input_tokens": 50,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "cache_write_tokens_details": None,
        },
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 6},
        "total_tokens": 70,
    }
    assert final.model == "qwen3"  # the chunks' model, not the one the stream was opened with
    # Items open in order and each closes before the response completes.
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    closed = [e["output_index"] for e in events if e["type"] == "response.output_item.done"]
    assert added == [0, 1, 2, 3] and sorted(closed) == [0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(25))
def test_any_chunking_gives_the_same_events(seed: int) -> None:
    for raw in (TOOL_STREAM, fixture("openai_reasoning_stream.sse"), fixture("gemini_openai_stream.sse")):
        assert translate(raw, split_randomly(raw, seed)) == translate(raw)
    crlf = TOOL_STREAM.replace(b"\n", b"\r\n")
    assert translate(crlf, split_randomly(crlf, seed)) == translate(TOOL_STREAM)


def test_an_error_event_and_a_stream_without_done() -> None:
    translator = ChatStreamToResponses(request={}, response_id="resp_e", created_at=1, model="m")
    raw = sse([chunk({"content": "Hi"})])[: -len(b"data: [DONE]\n\n")]
    raw += b'data: {"error":{"message":"overloaded","type":"server_error","code":"overloaded"}}\n\n'
    events = events_of(translator.feed(raw) + translator.flush())
    error = EVENTS.validate_python(events[-1])
    assert error.type == "error" and error.code == "overloaded" and error.message == "overloaded"
    assert not translator.done and translator.error == "provider error: overloaded"
    assert "response.completed" not in [e["type"] for e in events]


def test_an_empty_answer_still_completes() -> None:
    final = replayed(
        events_of(
            translate(
                sse([chunk({}, "stop"), chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 0})])
            )
        )
    )
    assert final.output == [] and final.status == "completed"
    assert final.usage is not None and final.usage.input_tokens == 3
    assert TokenUsage(3, 0).total_tokens == final.usage.total_tokens
