"""Usage parsing: whole JSON bodies and SSE streams (incremental, any chunking), usage-chunk stripping."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from tollway_sidecar.providers.usage import (
    ParsedStream,
    SseParser,
    TokenUsage,
    parse_json,
    usage_from_anthropic,
    usage_from_openai,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "responses"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def run(
    provider: str, chunks: list[bytes], *, strip: bool = False
) -> tuple[ParsedStream, bytes, list[bytes | None]]:
    """Feed `chunks`; return the result, the bytes a client would receive, and each feed's answer."""
    parser = SseParser(provider, strip_usage_chunk=strip)
    answers = [parser.feed(chunk) for chunk in chunks]
    forwarded = b"".join(
        chunk if answer is None else answer for chunk, answer in zip(chunks, answers, strict=True)
    )
    forwarded += parser.flush()
    return parser.finish(), forwarded, answers


def stripped_by_hand(stream: bytes) -> bytes:
    """What OpenAI sends without `include_usage`: no usage-only event, no `"usage":null` member."""
    newline = b"\r\n" if b"\r\n" in stream else b"\n"
    separator = newline * 2
    pieces = stream.split(separator)
    events = [piece + separator for piece in pieces[:-1]] + [pieces[-1]]
    kept = [event for event in events if b'"choices":[]' not in event]
    return b"".join(kept).replace(b',"usage":null', b"")


# --------------------------------------------------------------------------------------------------
# Whole JSON bodies

JSON_CASES = [
    (
        "openai_chat_completion.json",
        "openai",
        TokenUsage(input_tokens=1117, output_tokens=46),
        "gpt-4o-2024-08-06",
        ("stop",),
    ),
    (
        "openai_cached_completion.json",
        "openai",
        TokenUsage(input_tokens=2006, output_tokens=300, cache_read_tokens=1920),
        "gpt-4o-mini-2024-07-18",
        ("stop",),
    ),
    (
        "openai_reasoning_completion.json",
        "openai",
        TokenUsage(input_tokens=1366, output_tokens=2186, cache_read_tokens=1280, reasoning_tokens=1792),
        "o4-mini-2025-04-16",
        ("stop",),
    ),
    (
        "openai_embeddings.json",
        "openai",
        TokenUsage(input_tokens=8, output_tokens=0),
        "text-embedding-ada-002",
        (),
    ),
    (
        "anthropic_message.json",
        "anthropic",
        TokenUsage(input_tokens=2095, output_tokens=503),
        "claude-3-7-sonnet-20250219",
        ("end_turn",),
    ),
    (
        "anthropic_message_cached.json",
        "anthropic",
        # input_tokens counts the uncached 21 plus the 188086 written to the cache.
        TokenUsage(input_tokens=21 + 188086, output_tokens=393, cache_write_tokens=188086),
        "claude-sonnet-4-20250514",
        ("end_turn",),
    ),
    (
        "gemini_openai_completion.json",
        "gemini",
        # 7 completion tokens + the 93 thought tokens only total_tokens (109) reports.
        TokenUsage(input_tokens=9, output_tokens=100, reasoning_tokens=93),
        "gemini-3-flash-preview",
        ("length",),
    ),
]


@pytest.mark.parametrize(("name", "provider", "usage", "model", "finish"), JSON_CASES)
def test_json_fixtures(
    name: str, provider: str, usage: TokenUsage, model: str, finish: tuple[str, ...]
) -> None:
    parsed = parse_json(provider, fixture(name))
    assert parsed.usage == usage
    assert parsed.model == model
    assert parsed.finish_reasons == finish
    assert parsed.error is None


@pytest.mark.parametrize("provider", ["openai", "openai-compatible", "azure-openai", "gemini"])
def test_openai_shape_providers_share_the_parser(provider: str) -> None:
    parsed = parse_json(provider, fixture("openai_reasoning_completion.json"))
    assert parsed.usage == TokenUsage(1366, 2186, cache_read_tokens=1280, reasoning_tokens=1792)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "empty body"),
        (b"  \r\n", "empty body"),
        (b"<html>502 Bad Gateway</html>", "body is not JSON"),
        (b'{"id": "chatcmpl-1", "usage": {"prompt_tokens": 3', "body is not JSON"),
        (b"\xff\xfe\x00garbage", "body is not JSON"),
        (b"[1, 2, 3]", "body is not a JSON object"),
        (b'"usage"', "body is not a JSON object"),
        (b"[" * 100_000, "body is not JSON"),
        (b'{"id": "chatcmpl-1", "model": "gpt-4o"}', "no usage field"),
        (b'{"id": "chatcmpl-1", "usage": null}', "no usage field"),
        (b'{"usage": [1, 2]}', "usage is not an object"),
        (b'{"usage": {"completion_tokens": 3}}', "usage has no prompt_tokens"),
        (b'{"usage": {"prompt_tokens": -1, "completion_tokens": 3}}', "invalid usage: not a token count: -1"),
        (
            b'{"usage": {"prompt_tokens": "7", "completion_tokens": 3}}',
            "invalid usage: not a token count: '7'",
        ),
        (
            b'{"usage": {"prompt_tokens": true, "completion_tokens": 3}}',
            "invalid usage: not a token count: True",
        ),
        (
            b'{"usage": {"prompt_tokens": 1.5, "completion_tokens": 3}}',
            "invalid usage: not a token count: 1.5",
        ),
        (
            b'{"error": {"message": "Rate limit reached", "type": "requests",'
            b' "code": "rate_limit_exceeded"}}',
            "provider error: requests: Rate limit reached",
        ),
    ],
)
def test_json_without_usage_says_why(body: bytes, error: str) -> None:
    parsed = parse_json("openai", body)
    assert parsed.usage is None
    assert parsed.error == error


def test_anthropic_error_body() -> None:
    body = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    parsed = parse_json("anthropic", body)
    assert parsed.usage is None
    assert parsed.error == "provider error: overloaded_error: Overloaded"


def test_anthropic_usage_needs_both_counts() -> None:
    assert parse_json("anthropic", b'{"usage": {"output_tokens": 3}}').error == "usage has no input_tokens"
    assert parse_json("anthropic", b'{"usage": {"input_tokens": 3}}').error == "usage has no output_tokens"


def test_parse_json_never_raises_on_random_bytes() -> None:
    rng = random.Random(1234)
    samples = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(300)]
    samples += [fixture(name)[:cut] for name, *_ in JSON_CASES for cut in range(0, 400, 7)]
    for provider in ("openai", "anthropic", "gemini"):
        for body in samples:
            parsed = parse_json(provider, body)
            assert parsed.usage is not None or parsed.error


def test_anthropic_one_hour_cache_writes_and_thinking() -> None:
    usage = usage_from_anthropic(
        {
            "input_tokens": 50,
            "cache_creation_input_tokens": 3000,
            "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
            "cache_read_input_tokens": 4000,
            "output_tokens": 700,
            "output_tokens_details": {"thinking_tokens": 600},
        }
    )
    assert usage == TokenUsage(
        input_tokens=7050,
        output_tokens=700,
        cache_read_tokens=4000,
        cache_write_tokens=3000,
        reasoning_tokens=600,
        cache_write_1h_tokens=2000,
    )
    # The TTL breakdown alone is enough.
    only_breakdown = usage_from_anthropic(
        {
            "input_tokens": 5,
            "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
            "output_tokens": 1,
        }
    )
    assert only_breakdown == TokenUsage(35, 1, cache_write_tokens=30, cache_write_1h_tokens=20)


def test_openai_usage_details() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 40,
            "total_tokens": 140,
            "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
            "completion_tokens_details": {"reasoning_tokens": 25},
        }
    )
    assert usage == TokenUsage(100, 40, cache_read_tokens=60, cache_write_tokens=30, reasoning_tokens=25)
    # Responses API spelling.
    responses = usage_from_openai(
        {
            "input_tokens": 12033,
            "input_tokens_details": {"cached_tokens": 11904},
            "output_tokens": 44,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 12077,
        }
    )
    assert responses == TokenUsage(12033, 44, cache_read_tokens=11904)
    # Inconsistent parts are bounded by their wholes, never negative remainders.
    odd = usage_from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 50},
            "completion_tokens_details": {"reasoning_tokens": 9},
        }
    )
    assert odd == TokenUsage(10, 5, cache_read_tokens=10, reasoning_tokens=5)


def test_gemini_hidden_thought_tokens_in_total() -> None:
    # completion_tokens without thoughts, total with them (what Gemini's endpoint sends).
    assert usage_from_openai({"prompt_tokens": 21, "completion_tokens": 0, "total_tokens": 81}) == TokenUsage(
        21, 60, reasoning_tokens=60
    )
    # Thoughts reported as reasoning but left out of completion_tokens: the total still tells.
    assert usage_from_openai(
        {
            "prompt_tokens": 20,
            "completion_tokens": 151,
            "total_tokens": 553,
            "completion_tokens_details": {"reasoning_tokens": 382},
        }
    ) == TokenUsage(20, 533, reasoning_tokens=382)
    # Thoughts already folded into completion_tokens (OpenAI's convention): nothing is added.
    assert usage_from_openai(
        {
            "prompt_tokens": 20,
            "completion_tokens": 533,
            "total_tokens": 553,
            "completion_tokens_details": {"reasoning_tokens": 382},
        }
    ) == TokenUsage(20, 533, reasoning_tokens=382)


def test_token_usage_invariants() -> None:
    usage = TokenUsage(10, 5, cache_read_tokens=4, cache_write_tokens=3)
    assert usage.total_tokens == 15
    assert usage.uncached_input_tokens == 3
    with pytest.raises(ValueError, match="non-negative"):
        TokenUsage(-1, 0)
    with pytest.raises(ValueError, match="non-negative"):
        TokenUsage(True, 0)


# --------------------------------------------------------------------------------------------------
# Streams

STREAM_CASES = [
    (
        "openai_chat_stream.sse",
        "openai",
        TokenUsage(input_tokens=1117, output_tokens=46),
        "gpt-4o-2024-08-06",
        ("stop",),
        6,
    ),
    (
        "openai_reasoning_stream.sse",
        "openai",
        TokenUsage(input_tokens=1366, output_tokens=2186, cache_read_tokens=1280, reasoning_tokens=1792),
        "o4-mini-2025-04-16",
        ("stop",),
        2,
    ),
    ("openai_chat_stream_no_usage.sse", "openai", None, "gpt-4o-mini", ("stop",), 1),
    (
        "anthropic_stream.sse",
        "anthropic",
        TokenUsage(input_tokens=25, output_tokens=15),
        "claude-sonnet-4-5-20250929",
        ("end_turn",),
        2,
    ),
    (
        "anthropic_stream_cached.sse",
        "anthropic",
        TokenUsage(input_tokens=188107, output_tokens=393, cache_write_tokens=188086),
        "claude-sonnet-4-20250514",
        ("end_turn",),
        2,
    ),
    (
        "gemini_openai_stream.sse",
        "gemini",
        TokenUsage(input_tokens=9, output_tokens=100, reasoning_tokens=93),
        "gemini-3-flash-preview",
        ("length",),
        3,
    ),
]
STREAM_NAMES = [case[0] for case in STREAM_CASES]


def check_stream(result: ParsedStream, case: tuple[object, ...]) -> None:
    _name, _provider, usage, model, finish, chunks = case
    assert result.usage == usage
    assert result.model == model
    assert result.finish_reasons == finish
    assert result.complete
    assert result.output_chunks == chunks
    assert result.error == (None if usage is not None else "no usage in stream")


@pytest.mark.parametrize("case", STREAM_CASES, ids=STREAM_NAMES)
@pytest.mark.parametrize("line_ending", ["lf", "crlf"])
@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
def test_stream_fixtures_whole_and_byte_by_byte(
    case: tuple[object, ...], line_ending: str, strip: bool
) -> None:
    name, provider = str(case[0]), str(case[1])
    data = fixture(name) if line_ending == "lf" else crlf(fixture(name))
    whole, forwarded_whole, _ = run(provider, [data], strip=strip)
    check_stream(whole, case)
    bytewise, forwarded_bytewise, answers = run(
        provider, [data[i : i + 1] for i in range(len(data))], strip=strip
    )
    assert bytewise == whole
    assert forwarded_bytewise == forwarded_whole
    if not strip:
        assert forwarded_whole == data
        assert all(answer is None for answer in answers)


@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
@pytest.mark.parametrize("line_ending", ["lf", "crlf"])
@pytest.mark.parametrize(
    "name", ["openai_chat_stream.sse", "anthropic_stream.sse", "gemini_openai_stream.sse", "utf8"]
)
def test_stream_split_at_every_offset(name: str, line_ending: str, strip: bool) -> None:
    provider = "anthropic" if name.startswith("anthropic") else "openai"
    data = UTF8_STREAM if name == "utf8" else fixture(name)
    if line_ending == "crlf":
        data = crlf(data)
    expected, expected_forwarded, _ = run(provider, [data], strip=strip)
    assert expected.usage is not None
    for cut in range(len(data) + 1):
        result, forwarded, _ = run(provider, [data[:cut], data[cut:]], strip=strip)
        assert result == expected, cut
        assert forwarded == expected_forwarded, cut
        forwarded.decode("utf-8")  # never split inside a character in what is forwarded


# A stream whose content is multi-byte UTF-8, so that splits land inside characters.
UTF8_STREAM = (
    'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    '"choices":[{"index":0,"delta":{"role":"assistant","content":"Grüße 👋🏽"},"finish_reason":null}],'
    '"usage":null}\n\n'
    'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    '"choices":[{"index":0,"delta":{"content":" und 日本語"},"finish_reason":"stop"}],"usage":null}\n\n'
    'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
    '"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}\n\n'
    "data: [DONE]\n\n"
).encode()


@pytest.mark.parametrize("line_ending", ["lf", "crlf"])
@pytest.mark.parametrize("name", ["openai_chat_stream.sse", "openai_reasoning_stream.sse"])
def test_stripping_removes_exactly_the_usage_chunk_and_usage_null(name: str, line_ending: str) -> None:
    data = fixture(name) if line_ending == "lf" else crlf(fixture(name))
    expected = stripped_by_hand(data)
    assert b'"usage"' not in expected
    assert len(expected) < len(data)
    result, forwarded, _ = run("openai", [data], strip=True)
    assert forwarded == expected
    # The parser still read the usage it removed.
    assert result.usage is not None
    assert result.complete
    # And chunk by chunk, in chunks of several sizes.
    for size in (1, 2, 3, 7, 64, 333):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert run("openai", chunks, strip=True)[1] == expected


def test_stripped_stream_is_what_openai_sends_without_usage() -> None:
    result, forwarded, _ = run("openai", [UTF8_STREAM], strip=True)
    assert b'"usage"' not in forwarded
    assert forwarded.count(b"\n\n") == 3  # two content chunks and [DONE]
    for event in forwarded.split(b"\n\n")[:2]:
        json.loads(event.removeprefix(b"data: "))
    assert result.usage == TokenUsage(12, 9)


def test_whole_events_that_need_no_change_are_forwarded_unchanged() -> None:
    data = fixture("openai_chat_stream.sse")
    events = [event + b"\n\n" for event in data.split(b"\n\n") if event]
    plain = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    parser = SseParser("openai", strip_usage_chunk=True)
    assert parser.feed(plain) is None
    assert parser.feed(b": keep-alive\n\n") is None
    assert parser.feed(events[0]) == events[0].replace(b',"usage":null', b"")
    assert parser.feed(events[-2]) == b""  # the usage-only chunk
    assert parser.feed(events[-1]) is None  # [DONE]
    assert parser.feed(b"") is None
    # Anthropic streams are never rewritten.
    anthropic = SseParser("anthropic", strip_usage_chunk=True)
    assert anthropic.feed(fixture("anthropic_stream.sse")) is None


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            b'data: {"id":"a","choices":[{"index":0}],"usage":null}\n\n',
            b'data: {"id":"a","choices":[{"index":0}]}\n\n',
        ),
        (b'data: {"usage":null,"id":"a"}\n\n', b'data: {"id":"a"}\n\n'),
        (b'data: {"usage": null, "id": "a"}\n\n', b'data: {"id": "a"}\n\n'),
        (b'data: {"id": "a", "usage": null}\n\n', b'data: {"id": "a"}\n\n'),
        (b'data: {"id":"a", "usage" : null ,"x":1}\n\n', b'data: {"id":"a" ,"x":1}\n\n'),
        (b'data: {"usage":null}\n\n', b"data: {}\n\n"),
        # Text that merely mentions usage (escaped inside a JSON string) is left alone.
        (
            b'data: {"choices":[{"delta":{"content":"{\\"usage\\":null}, \\"usage\\": null"}}]}\n\n',
            None,
        ),
        # A usage-only chunk whose choices are null or missing (some OpenAI-compatible servers).
        (b'data: {"id":"a","choices":null,"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n', b""),
        (b'data: {"id":"a","usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n', b""),
        # Azure's content-filter chunk has empty choices but no usage: kept.
        (b'data: {"choices":[],"id":"","model":"","prompt_filter_results":[]}\n\n', None),
        # Usage on a chunk that also has content (Gemini): kept whole.
        (
            b'data: {"choices":[{"delta":{"content":"1"},"index":0}],'
            b'"usage":{"completion_tokens":1,"prompt_tokens":9,"total_tokens":103}}\n\n',
            None,
        ),
    ],
)
def test_strip_rewrites(event: bytes, expected: bytes | None) -> None:
    parser = SseParser("openai", strip_usage_chunk=True)
    assert parser.feed(event) == expected


def test_gemini_stream_is_left_as_it_came_when_stripping() -> None:
    data = fixture("gemini_openai_stream.sse")
    result, forwarded, answers = run("gemini", [data], strip=True)
    assert forwarded == data
    assert answers == [None]
    assert result.usage == TokenUsage(9, 100, reasoning_tokens=93)


@pytest.mark.parametrize(
    ("json_name", "stream_name", "provider"),
    [
        ("openai_chat_completion.json", "openai_chat_stream.sse", "openai"),
        ("openai_reasoning_completion.json", "openai_reasoning_stream.sse", "openai"),
        ("anthropic_message_cached.json", "anthropic_stream_cached.sse", "anthropic"),
        ("gemini_openai_completion.json", "gemini_openai_stream.sse", "gemini"),
    ],
)
def test_streamed_and_whole_usage_agree(json_name: str, stream_name: str, provider: str) -> None:
    whole = parse_json(provider, fixture(json_name))
    for strip in (False, True):
        streamed, _, _ = run(provider, [fixture(stream_name)], strip=strip)
        assert streamed.usage == whole.usage
        assert streamed.model == whole.model
        assert streamed.finish_reasons == whole.finish_reasons


def test_sse_syntax_multiline_data_comments_and_fields() -> None:
    data = (
        b": this is a comment\n"
        b"retry: 3000\n"
        b"id: 7\n"
        b"event: message_start\n"
        b'data: {"type": "message_start", "message": {"model": "claude-opus-4-1",\n'
        b'data:  "usage": {"input_tokens": 10,\n'
        b'data: "cache_read_input_tokens": 90, "output_tokens": 1}}}\n'
        b"\n"
        b": ping\n\n"
        b"event: content_block_delta\n"
        b'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}\n\n'
        b"event: message_delta\r\n"
        b'data:{"type": "message_delta", "delta": {"stop_reason": "max_tokens"},'
        b' "usage": {"output_tokens": 4}}\r\n'
        b"\r\n"
        b"event: message_stop\n"
        b'data: {"type": "message_stop"}\n\n'
    )
    result, forwarded, _ = run("anthropic", [data])
    assert forwarded == data
    assert result == ParsedStream(
        usage=TokenUsage(100, 4, cache_read_tokens=90),
        model="claude-opus-4-1",
        finish_reasons=("max_tokens",),
        complete=True,
        error=None,
        output_chunks=1,
    )


def test_anthropic_events_without_event_lines_and_cumulative_delta_usage() -> None:
    # No `event:` lines (a proxy may drop them): the data's type is used. message_delta's counts are
    # cumulative and override message_start's (server tools can grow the input).
    data = (
        b'data: {"type":"message_start","message":{"model":"claude-sonnet-4-5","usage":'
        b'{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":0,"output_tokens":1}}}\n\n'
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}\n\n'
        b'data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":'
        b'{"input_tokens":30,"cache_creation_input_tokens":null,"output_tokens":12,'
        b'"output_tokens_details":{"thinking_tokens":8}}}\n\n'
        b'data: {"type":"message_stop"}\n\n'
    )
    result, _, _ = run("anthropic", [data])
    assert result.usage == TokenUsage(35, 12, cache_write_tokens=5, reasoning_tokens=8)
    assert result.finish_reasons == ("tool_use",)
    assert result.complete
    assert result.error is None


def test_provider_error_events() -> None:
    anthropic = (
        fixture("anthropic_stream.sse").split(b"event: content_block_stop")[0]
        + b"event: error\n"
        + b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    )
    result, _, _ = run("anthropic", [anthropic])
    assert result.error == "provider error: overloaded_error: Overloaded"
    assert not result.complete
    assert result.usage == TokenUsage(25, 1)  # what message_start said; output_chunks tells the rest
    assert result.output_chunks == 2

    openai = (
        b'data: {"id":"a","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
    )
    result, _, _ = run("openai", [openai])
    assert result.error == "provider error: server_error: The server had an error"
    assert result.usage is None
    assert not result.complete
    assert result.output_chunks == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
def test_garbage_never_raises(provider: str, strip: bool) -> None:
    rng = random.Random(99)
    garbage = [
        b"\x00\xff\xfe\r\n\n\r\r\n",
        b"data: not json\n\n",
        b'data: {"usage": {"prompt_tokens": \n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":"lots"}}\n\n',
        b'data: {"finish_reason": "stop", "x": [}\n\n',
        b"event: message_start\ndata: {]\n\n",
        b"event: message_delta\ndata: []\n\n",
        b"<html><body>502 Bad Gateway</body></html>",
        b"data: " + b"[" * 50_000 + b"\n\n",
        b'event: message_start\ndata: {"type": "message_start", "message": "nope"}\n\n',
    ]
    garbage += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(50)]
    for blob in garbage:
        for chunks in ([blob], [blob[i : i + 3] for i in range(0, len(blob), 3)]):
            parser = SseParser(provider, strip_usage_chunk=strip)
            for chunk in chunks:
                answer = parser.feed(chunk)
                assert answer is None or isinstance(answer, bytes)
            parser.flush()
            result = parser.finish()
            assert not result.complete
            assert result.error


def test_garbage_between_good_events_is_recorded_but_usage_still_read() -> None:
    for garbage in (
        b"data: not json",
        b'data: {"id":"a","choices":[{"ind',
        b'data: {"finish_reason":"stop",]}',
    ):
        data = fixture("openai_chat_stream.sse").replace(b"data: [DONE]", garbage + b"\n\ndata: [DONE]")
        result, _, _ = run("openai", [data])
        assert result.usage == TokenUsage(1117, 46)
        assert result.complete
        assert result.error == "event data is not JSON"


@pytest.mark.parametrize("name", ["openai_chat_stream.sse", "anthropic_stream.sse"])
def test_truncated_streams(name: str) -> None:
    provider = "anthropic" if name.startswith("anthropic") else "openai"
    data = fixture(name)
    end_marker = b"data: [DONE]\n" if provider == "openai" else b'data: {"type": "message_stop"}\n'
    for cut in range(len(data)):
        prefix = data[:cut]
        for strip in (False, True):
            result, forwarded, _ = run(provider, [prefix], strip=strip)
            assert result.complete == (end_marker in prefix), cut
            if not result.complete:
                assert result.error, cut
            if strip:
                # Nothing is lost: held-back bytes come out of flush().
                assert stripped_by_hand(forwarded) == stripped_by_hand(prefix), cut


def test_truncated_before_usage() -> None:
    data = fixture("openai_chat_stream.sse")
    cut = data.index(b"data: {", data.index(b'"finish_reason":"stop"'))
    result, _, _ = run("openai", [data[:cut]])
    assert result.usage is None
    assert result.error == "stream ended before usage"
    assert result.output_chunks == 6
    mid_event, _, _ = run("openai", [data[: cut + 40]])
    assert mid_event.error == "stream ended mid-event"


def test_last_event_without_blank_line_is_read_and_flushed() -> None:
    data = fixture("openai_chat_stream.sse").removesuffix(b"\n")  # ends "data: [DONE]\n"
    result, forwarded, _ = run("openai", [data], strip=True)
    assert result.complete
    assert result.error is None
    assert forwarded == stripped_by_hand(fixture("openai_chat_stream.sse")).removesuffix(b"\n")


def test_observing_is_a_pure_fast_path() -> None:
    parser = SseParser("openai")
    for chunk in (fixture("openai_chat_stream.sse"), b"\x00garbage", b"data: {}\n\n"):
        assert parser.feed(chunk) is None
    assert parser.flush() == b""


def test_long_events_in_small_chunks_take_linear_time() -> None:
    # One 4 MiB event in 256-byte chunks: rescanning the buffer on every chunk would be quadratic.
    content = "x" * (4 * 1024 * 1024)
    event = (
        'data: {"id":"a","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"'
        + content
        + '"}}],"usage":null}\n\n'
    ).encode()
    tail = (
        b'data: {"id":"a","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\ndata: [DONE]\n\n'
    )
    data = event + tail
    chunks = [data[i : i + 256] for i in range(0, len(data), 256)]
    for strip in (False, True):
        started = time.perf_counter()
        result, forwarded, _ = run("openai", chunks, strip=strip)
        elapsed = time.perf_counter() - started
        assert result.usage == TokenUsage(1, 2)
        assert result.output_chunks == 1
        stripped_length = len(event) - len(b',"usage":null') + len(b"data: [DONE]\n\n")
        assert len(forwarded) == (stripped_length if strip else len(data))
        assert elapsed < 5, elapsed


def test_many_small_events_decode_only_what_matters(monkeypatch: pytest.MonkeyPatch) -> None:
    import tollway_sidecar.providers.usage as usage_module

    calls = 0
    real_loads = json.loads

    def counting_loads(data: bytes) -> object:
        nonlocal calls
        calls += 1
        return real_loads(data)

    monkeypatch.setattr(usage_module.json, "loads", counting_loads)
    content = (
        b'data: {"id":"a","model":"gpt-4o",'
        b'"choices":[{"index":0,"delta":{"content":"tok"}}],"usage":null}\n\n'
    )
    data = content * 1000 + fixture("openai_chat_stream.sse")
    for strip in (False, True):
        calls = 0
        result, _, _ = run("openai", [data[i : i + 100] for i in range(0, len(data), 100)], strip=strip)
        assert result.usage == TokenUsage(1117, 46)
        assert calls <= 3  # the finish_reason chunk, the usage chunk (and nothing per content chunk)


@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
def test_finish_as_soon_as_complete_then_pass_through(strip: bool) -> None:
    # The gateway settles at the end marker, before the transport's end of stream.
    data = fixture("openai_chat_stream.sse")
    parser = SseParser("openai", strip_usage_chunk=strip)
    before_done = data.index(b"data: [DONE]")
    parser.feed(data[:before_done])
    assert not parser.complete
    answer = parser.feed(data[before_done:] + b": trailing")
    assert parser.complete
    result = parser.finish()
    assert result.usage == TokenUsage(1117, 46)
    assert result.complete
    assert result.error is None
    # Later bytes pass through unread; bytes held back before finish() are not lost.
    if strip:
        assert answer == b"data: [DONE]\n\n"
        assert parser.feed(b" comment\n\n") == b": trailing comment\n\n"
    else:
        assert answer is None
        assert parser.feed(b" comment\n\n") is None
    assert parser.feed(b"data: {}\n\n") is None
    assert parser.flush() == b""
    assert parser.finish() == result


def test_flush_after_finish_returns_held_bytes_once() -> None:
    parser = SseParser("openai", strip_usage_chunk=True)
    assert parser.feed(b'data: {"id":"a","choices":[{"index":0}],"usage":null}\n\ndata: {"id":') == (
        b'data: {"id":"a","choices":[{"index":0}]}\n\n'
    )
    result = parser.finish()
    assert result.error == "stream ended mid-event"
    assert parser.flush() == b'data: {"id":'
    assert parser.flush() == b""


@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
def test_an_event_too_large_to_buffer_is_passed_through(strip: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import tollway_sidecar.providers.usage as usage_module

    monkeypatch.setattr(usage_module, "MAX_EVENT_BYTES", 1000)
    first = (
        b'data: {"id":"a","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
    )
    huge = b"data: " + b"x" * 2000
    chunks = [first + huge[:600], huge[600:], b"\n\n", fixture("openai_chat_stream.sse")]
    result, forwarded, _ = run("openai", chunks, strip=strip)
    expected_first = first.replace(b',"usage":null', b"") if strip else first
    assert forwarded == expected_first + huge + b"\n\n" + fixture("openai_chat_stream.sse")
    assert result.error == "event too large"
    assert result.usage is None
    assert result.output_chunks == 1
