"""Cache entries: filled from a JSON answer or a finished stream, stored, decoded, rendered both ways."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cache_samples import (
    ARGUMENTS,
    REASONING,
    SIGNATURE,
    TEXT,
    chat_json,
    chat_stream,
    chunked,
    messages_json,
    messages_stream,
)

from tollway_sidecar.cache import (
    CacheEntry,
    CorruptEntry,
    StreamFill,
    Unstorable,
    decode_entry,
    entry_from_json,
)
from tollway_sidecar.cache.chat import ChatAnswer
from tollway_sidecar.cache.entry import Api
from tollway_sidecar.cache.messages import MessagesAnswer, TextBlock, ThinkingBlock, ToolUseBlock
from tollway_sidecar.providers.usage import SseParser, TokenUsage, parse_json

BIG = 1 << 20
CHAT_USAGE = TokenUsage(120, 80, cache_read_tokens=64, reasoning_tokens=30)
MESSAGES_USAGE = TokenUsage(170, 80, cache_read_tokens=100, cache_write_tokens=20)


def from_json(api: Api, body: dict[str, Any], **kw: Any) -> CacheEntry:
    args: dict[str, Any] = {"cost_nano": 1234, "created_ms": 1_000, "max_entry_bytes": BIG} | kw
    return entry_from_json(api, args.pop("status", 200), json.dumps(body).encode(), **args)


def from_stream(
    api: Api, data: bytes, *, size: int = 13, max_entry_bytes: int = BIG, **kw: Any
) -> CacheEntry:
    fill = StreamFill(api, max_entry_bytes=max_entry_bytes)
    for piece in chunked(data, size):
        fill.feed(piece)
    args: dict[str, Any] = {"status": 200, "cost_nano": 1234, "created_ms": 1_000} | kw
    return fill.finish(**args)


def test_a_chat_answer_filled_from_json_and_from_its_stream_is_one_entry() -> None:
    by_json = from_json("chat", chat_json())
    by_stream = from_stream("chat", chat_stream())
    assert by_stream.answer == by_json.answer
    assert by_stream.usage == by_json.usage == CHAT_USAGE
    assert isinstance(by_json.answer, ChatAnswer)
    choice = by_json.answer.choices[0]
    assert (choice.content, choice.reasoning, choice.finish_reason) == (TEXT, REASONING, "tool_calls")
    assert [(c.id, c.name, c.arguments) for c in choice.tool_calls] == [
        ("call_abc", "get_weather", ARGUMENTS),
        ("call_def", "get_time", "{}"),
    ]


def test_a_messages_answer_filled_from_json_and_from_its_stream_is_one_entry() -> None:
    by_json = from_json("messages", messages_json())
    by_stream = from_stream("messages", messages_stream(), size=7)
    assert by_stream.answer == by_json.answer
    assert by_stream.usage == by_json.usage == MESSAGES_USAGE
    assert isinstance(by_json.answer, MessagesAnswer)
    thinking, _, text, tool = by_json.answer.content
    assert thinking == ThinkingBlock(REASONING, SIGNATURE)
    assert text == TextBlock(TEXT)
    assert isinstance(tool, ToolUseBlock) and json.loads(tool.input_json) == json.loads(ARGUMENTS)


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_rendered_json_reads_back_as_the_same_answer_and_usage(api: Api) -> None:
    entry = from_json(api, chat_json() if api == "chat" else messages_json())
    again = from_json(api, json.loads(entry.to_json()))
    assert again.answer == entry.answer
    provider = "openai" if api == "chat" else "anthropic"
    assert parse_json(provider, entry.to_json()).usage == entry.usage


@pytest.mark.parametrize("api", ["chat", "messages"])
@pytest.mark.parametrize("size", [1, 5, 64, 100_000])
def test_rendered_sse_reads_back_as_the_same_answer_whatever_the_chunking(api: Api, size: int) -> None:
    entry = from_json(api, chat_json() if api == "chat" else messages_json())
    replay = entry.to_sse(include_usage=True)
    assert from_stream(api, replay, size=size).answer == entry.answer
    parser = SseParser("openai" if api == "chat" else "anthropic")
    for piece in chunked(replay, size):
        parser.feed(piece)
    parsed = parser.finish()
    assert (parsed.complete, parsed.error, parsed.usage) == (True, None, entry.usage)


def test_a_replayed_stream_comes_in_pieces_not_one_aggregated_chunk() -> None:
    replay = from_json("chat", chat_json()).to_sse(include_usage=False)
    contents = [
        choice["delta"]["content"]
        for line in replay.split(b"\n\n")
        if line.startswith(b"data: {")
        for choice in json.loads(line[6:])["choices"]
        if choice["delta"].get("content")
    ]
    assert len(contents) > 3 and "".join(contents) == TEXT


def test_the_usage_chunk_is_replayed_only_when_the_client_asked_for_it() -> None:
    entry = from_json("chat", chat_json())
    events = [
        json.loads(e[6:]) for e in entry.to_sse(include_usage=True).split(b"\n\n") if e.startswith(b"data: {")
    ]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["prompt_tokens"] == 120
    assert all(event["usage"] is None for event in events[:-1])  # as OpenAI sends them
    without = entry.to_sse(include_usage=False)
    assert b'"usage"' not in without and without.endswith(b"data: [DONE]\n\n")


def test_a_stream_whose_usage_chunk_was_stripped_is_stored_with_the_usage_the_gateway_read() -> None:
    stream = chat_stream(usage=False)
    with pytest.raises(Unstorable, match="no usage"):
        from_stream("chat", stream)
    assert from_stream("chat", stream, usage=CHAT_USAGE).usage == CHAT_USAGE


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_the_stored_form_decodes_to_the_same_entry(api: Api) -> None:
    entry = from_json(api, chat_json() if api == "chat" else messages_json())
    assert decode_entry(entry.encoded) == entry
    assert entry.cost_nano == 1234 and entry.created_ms == 1_000


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b'{"v":99}', b'{"v":1,"api":"chat","answer":{}}', b"\xff\xfe", b'{"v":1}'],
)
def test_corrupt_stored_bytes_are_a_corrupt_entry(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(data)


@pytest.mark.parametrize("finish", ["length", "content_filter", None])
def test_a_chat_answer_that_did_not_finish_normally_is_not_stored(finish: str | None) -> None:
    with pytest.raises(Unstorable, match="finish_reason"):
        from_json("chat", chat_json(finish=finish))  # type: ignore[arg-type]
    if finish is not None:
        with pytest.raises(Unstorable, match="finish_reason"):
            from_stream("chat", chat_stream(finish=finish))


@pytest.mark.parametrize("stop", ["max_tokens", "pause_turn", "refusal"])
def test_a_message_that_did_not_finish_normally_is_not_stored(stop: str) -> None:
    with pytest.raises(Unstorable, match="stop_reason"):
        from_json("messages", messages_json(stop=stop))
    with pytest.raises(Unstorable, match="stop_reason"):
        from_stream("messages", messages_stream(stop=stop))


@pytest.mark.parametrize("api", ["chat", "messages"])
def test_a_cut_stream_is_never_stored(api: Api) -> None:
    data = chat_stream(cut=True) if api == "chat" else messages_stream(cut=True)
    with pytest.raises(Unstorable):
        from_stream(api, data, usage=CHAT_USAGE)


def test_a_stream_that_reports_an_error_is_never_stored() -> None:
    data = chat_stream().replace(b"data: [DONE]", b'data: {"error":{"message":"overloaded"}}\n\ndata: [DONE]')
    with pytest.raises(Unstorable, match="error"):
        from_stream("chat", data)


@pytest.mark.parametrize("status", [400, 429, 500, 201])
def test_only_a_200_answer_is_stored(status: int) -> None:
    with pytest.raises(Unstorable, match="status"):
        from_json("chat", chat_json(), status=status)
    with pytest.raises(Unstorable, match="status"):
        from_stream("chat", chat_stream(), status=status)


def test_an_answer_over_max_entry_bytes_is_not_stored_and_one_at_the_bound_is() -> None:
    size = len(from_json("chat", chat_json()).encoded)
    assert from_json("chat", chat_json(), max_entry_bytes=size).encoded
    with pytest.raises(Unstorable, match="max_entry_bytes"):
        from_json("chat", chat_json(), max_entry_bytes=size - 1)
    with pytest.raises(Unstorable, match="max_entry_bytes"):
        from_stream("chat", chat_stream(), max_entry_bytes=size - 1)
    with pytest.raises(Unstorable, match="max_entry_bytes"):
        from_stream("chat", chat_stream(), max_entry_bytes=100)  # refused while streaming


@pytest.mark.parametrize(
    "extra",
    [
        {"audio": {"id": "audio_1", "data": "UklGR"}},
        {"annotations": [{"type": "url_citation", "url_citation": {"url": "https://example.com"}}]},
        {"function_call": {"name": "f", "arguments": "{}"}},
    ],
)
def test_a_chat_answer_with_content_the_cache_cannot_replay_is_not_stored(extra: dict[str, Any]) -> None:
    with pytest.raises(Unstorable, match="not replayed"):
        from_json("chat", chat_json(extra_message=extra))


def test_log_probabilities_are_not_stored() -> None:
    body = chat_json()
    body["choices"][0]["logprobs"] = {"content": [{"token": "Hi", "logprob": -0.1}]}
    with pytest.raises(Unstorable, match="log probabilities"):
        from_json("chat", body)


def test_a_message_with_server_tool_blocks_or_citations_is_not_stored() -> None:
    body = messages_json()
    body["content"].append({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}})
    with pytest.raises(Unstorable, match="not replayed"):
        from_json("messages", body)
    body = messages_json()
    body["content"][2]["citations"] = [{"type": "char_location", "cited_text": "x"}]
    with pytest.raises(Unstorable, match="citations"):
        from_json("messages", body)
    stream = messages_stream().replace(b'"type": "text_delta"', b'"type": "citations_delta"')
    with pytest.raises(Unstorable, match="citations_delta"):
        from_stream("messages", stream)


def test_the_reasoning_spelling_of_the_provider_is_kept() -> None:
    body = chat_json()
    body["choices"][0]["message"]["reasoning"] = body["choices"][0]["message"].pop("reasoning_content")
    entry = from_json("chat", body)
    assert json.loads(entry.to_json())["choices"][0]["message"]["reasoning"] == REASONING
    assert b'"reasoning":' in entry.to_sse(include_usage=False)
    assert b"reasoning_content" not in entry.to_sse(include_usage=False)


def test_an_empty_and_a_null_content_survive_both_renderings() -> None:
    body = chat_json()
    body["choices"][0]["message"]["content"] = None
    entry = from_json("chat", body)
    assert from_stream("chat", entry.to_sse(include_usage=False), usage=entry.usage).answer == entry.answer
    body["choices"][0]["message"]["content"] = ""
    entry = from_json("chat", body)
    assert from_stream("chat", entry.to_sse(include_usage=False), usage=entry.usage).answer == entry.answer


def test_usage_with_one_hour_cache_writes_and_thinking_tokens_renders_back_exactly() -> None:
    usage = TokenUsage(
        300, 90, cache_read_tokens=100, cache_write_tokens=50, reasoning_tokens=40, cache_write_1h_tokens=30
    )
    entry = from_json("messages", messages_json(), usage=usage)
    assert parse_json("anthropic", entry.to_json()).usage == usage
    chat = from_json(
        "chat", chat_json(), usage=TokenUsage(300, 90, cache_read_tokens=100, reasoning_tokens=40)
    )
    assert parse_json("openai", chat.to_json()).usage == chat.usage


def test_an_answer_with_an_unencodable_lone_surrogate_is_not_stored() -> None:
    body = json.dumps(chat_json()).replace("un instant", "un \\ud800 instant").encode()
    with pytest.raises(Unstorable, match="UTF-8"):
        entry_from_json("chat", 200, body, cost_nano=1, created_ms=0, max_entry_bytes=BIG)
