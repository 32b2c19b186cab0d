"""Responses API cache entries: which calls may be cached, filled from a JSON answer or a stream,
stored, rendered back as the same JSON and as an event stream the openai SDK's own types accept."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from cache_samples import (
    ARGUMENTS,
    REFUSAL,
    SUMMARY,
    TEXT,
    chat_stream,
    chunked,
    responses_json,
    responses_stream,
)
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from tollway_sidecar.cache import (
    CacheEntry,
    StreamFill,
    Unstorable,
    decode_entry,
    entry_from_json,
    responses_uncacheable,
)
from tollway_sidecar.cache.responses import ResponsesAnswer
from tollway_sidecar.providers.responses_stream import ChatStreamToResponses
from tollway_sidecar.providers.usage import SseParser, TokenUsage, parse_json

BIG = 1 << 20
USAGE = TokenUsage(120, 80, cache_read_tokens=64, reasoning_tokens=30)
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def from_json(body: dict[str, Any], **kw: Any) -> CacheEntry:
    args: dict[str, Any] = {"cost_nano": 1234, "created_ms": 1_000, "max_entry_bytes": BIG} | kw
    return entry_from_json("responses", args.pop("status", 200), json.dumps(body).encode(), **args)


def from_stream(data: bytes, *, size: int = 13, **kw: Any) -> CacheEntry:
    fill = StreamFill("responses", max_entry_bytes=kw.pop("max_entry_bytes", BIG))
    for piece in chunked(data, size):
        fill.feed(piece)
    return fill.finish(**({"status": 200, "cost_nano": 1234, "created_ms": 1_000} | kw))


def events_of(sse: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in sse.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


# --- which calls ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},  # store absent: the provider stores the response by default
        {"store": True},
        {"store": None},
        {"store": False, "background": True},
        {"store": False, "previous_response_id": "resp_1"},
    ],
)
def test_a_call_the_provider_keeps_state_for_is_not_cacheable(body: dict[str, Any]) -> None:
    assert responses_uncacheable({"model": "m", "input": "hi", **body}) is not None


def test_a_call_that_asks_not_to_be_stored_is_cacheable() -> None:
    assert responses_uncacheable({"model": "m", "input": "hi", "store": False}) is None
    assert responses_uncacheable({"model": "m", "input": "hi", "store": False, "background": False}) is None


# --- filling and rendering --------------------------------------------------------------------------


def test_json_rendered_from_the_entry_is_the_answer_received() -> None:
    body = responses_json()
    entry = from_json(body, usage=USAGE)
    assert json.loads(entry.to_json()) == body
    assert isinstance(entry.answer, ResponsesAnswer) and entry.api == "responses"
    assert parse_json("openai", entry.to_json()).usage == USAGE


@pytest.mark.parametrize("size", [1, 7, 100_000])
def test_a_stream_fills_the_entry_the_json_answer_fills(size: int) -> None:
    by_stream = from_stream(responses_stream(), size=size)
    assert by_stream.answer == from_json(responses_json()).answer
    assert by_stream.usage == USAGE  # read from response.completed
    assert json.loads(by_stream.to_json()) == responses_json()


def test_the_replayed_stream_is_typed_events_the_sdk_accepts_in_order() -> None:
    replay = from_json(responses_json()).to_sse(include_usage=False)
    events = events_of(replay)
    parsed = [EVENTS.validate_python(data) for _, data in events]  # raises on a malformed event
    assert [name for name, _ in events] == [event.type for event in parsed]
    assert [event.sequence_number for event in parsed] == list(range(len(parsed)))
    kinds = [event.type for event in parsed]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert parsed[0].response.output == [] and parsed[0].response.status == "in_progress"
    deltas = [event.delta for event in parsed if event.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == TEXT  # in pieces, not one aggregated chunk
    summary = [event.delta for event in parsed if event.type == "response.reasoning_summary_text.delta"]
    assert "".join(summary) == SUMMARY
    refusal = [event.delta for event in parsed if event.type == "response.refusal.delta"]
    assert "".join(refusal) == REFUSAL
    arguments = [
        event.delta
        for event in parsed
        if event.type == "response.function_call_arguments.delta" and event.output_index == 2
    ]
    assert "".join(arguments) == ARGUMENTS
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 4
    assert events[-1][1]["response"] == responses_json()


@pytest.mark.parametrize("size", [3, 100_000])
def test_the_replayed_stream_fills_the_same_entry_again(size: int) -> None:
    entry = from_json(responses_json())
    replay = entry.to_sse(include_usage=True)
    assert from_stream(replay, size=size).answer == entry.answer
    parser = SseParser("openai", responses=True)
    for piece in chunked(replay, size):
        parser.feed(piece)
    parsed = parser.finish()
    assert (parsed.complete, parsed.error, parsed.usage) == (True, None, USAGE)


def test_a_translated_stream_from_a_chat_backend_is_stored_as_the_client_saw_it() -> None:
    seen: list[dict[str, Any]] = []
    translator = ChatStreamToResponses(
        request={"model": "gpt-4o-mini", "store": False},
        response_id="resp_tr1",
        created_at=1,
        model="gpt-4o-mini",
        on_event=lambda _name, data: seen.append(json.loads(data)),
    )
    client_bytes = translator.feed(chat_stream()) + translator.flush()
    entry = from_stream(client_bytes)
    assert seen[-1]["type"] == "response.completed"
    assert json.loads(entry.to_json()) == seen[-1]["response"]


def test_the_stored_form_decodes_to_the_same_entry() -> None:
    for entry in (from_json(responses_json()), from_stream(responses_stream())):
        assert decode_entry(entry.encoded) == entry


def test_an_answer_without_usage_is_rendered_with_the_usage_the_gateway_read() -> None:
    body = {**responses_json(), "usage": None}
    with pytest.raises(Unstorable, match="no usage"):
        from_json(body)
    entry = from_json(body, usage=USAGE)
    assert parse_json("openai", entry.to_json()).usage == USAGE
    assert events_of(entry.to_sse(include_usage=False))[-1][1]["response"]["usage"]["total_tokens"] == 200


# --- what is not stored -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["incomplete", "failed", "in_progress", "cancelled"])
def test_a_response_that_did_not_complete_is_not_stored(status: str) -> None:
    with pytest.raises(Unstorable, match="status"):
        from_json(responses_json(status=status))


@pytest.mark.parametrize("end", ["response.incomplete", "response.failed"])
def test_a_stream_that_did_not_complete_is_not_stored(end: str) -> None:
    with pytest.raises(Unstorable):
        from_stream(responses_stream(end=end))


def test_a_cut_stream_or_one_that_reports_an_error_is_not_stored() -> None:
    with pytest.raises(Unstorable):
        from_stream(responses_stream(cut=True))
    error = (
        b'event: error\ndata: {"type":"error","sequence_number":99,"code":"server_error","message":"x"}\n\n'
    )
    with pytest.raises(Unstorable):
        from_stream(responses_stream(cut=True) + error)


def test_a_response_the_provider_stored_is_not_stored() -> None:
    with pytest.raises(Unstorable, match="stored"):
        from_json({**responses_json(), "store": True})


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["output"].append({"id": "ws_1", "type": "web_search_call", "status": "completed"}),
        lambda r: r["output"][1]["content"][0]["annotations"].append({"type": "url_citation", "url": "u"}),
        lambda r: r["output"][1]["content"][0]["logprobs"].append({"token": "a", "logprob": -0.1}),
        lambda r: r["output"][1]["content"].append({"type": "output_audio", "data": "AAA"}),
    ],
)
def test_content_the_replayed_stream_cannot_spell_out_is_not_stored(change: Any) -> None:
    body = copy.deepcopy(responses_json())
    change(body)
    with pytest.raises(Unstorable):
        from_json(body)


def test_an_answer_over_max_entry_bytes_is_not_stored() -> None:
    size = len(from_json(responses_json()).encoded)
    assert from_json(responses_json(), max_entry_bytes=size).encoded
    with pytest.raises(Unstorable, match="max_entry_bytes"):
        from_json(responses_json(), max_entry_bytes=size - 1)
    with pytest.raises(Unstorable, match="max_entry_bytes"):
        from_stream(responses_stream(), max_entry_bytes=size - 1)


# --- the openai SDK reading a replay ----------------------------------------------------------------


@pytest.fixture
def client_for() -> Iterator[Any]:
    opened: list[openai.OpenAI] = []

    def make(entry: CacheEntry) -> openai.OpenAI:
        def handle(request: httpx2.Request) -> httpx2.Response:
            if json.loads(request.content).get("stream"):
                sse = entry.to_sse(include_usage=False)
                return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=sse)
            return httpx2.Response(200, headers={"content-type": "application/json"}, content=entry.to_json())

        client = openai.OpenAI(
            api_key="tw-test",
            base_url="http://gateway.test/v1",
            max_retries=0,
            http_client=httpx2.Client(transport=httpx2.MockTransport(handle)),
        )
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()


@pytest.mark.parametrize("how", ["json", "stream"])
def test_the_sdk_reads_an_entry_alike_as_json_and_through_its_stream_helper(
    how: str, client_for: Any
) -> None:
    entry = from_json(responses_json()) if how == "json" else from_stream(responses_stream())
    client = client_for(entry)
    created = client.responses.create(model="gpt-5-mini", input="Weather in Paris?", store=False)
    with client.responses.stream(model="gpt-5-mini", input="Weather in Paris?", store=False) as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == TEXT == created.output_text == final.output_text
    # The stream helper's response is a ParsedResponse: the same fields, plus what it parsed.
    parsed_only = {"parsed", "parsed_arguments"}

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k not in parsed_only}
        return [plain(v) for v in value] if isinstance(value, list) else value

    assert plain(final.model_dump()) == created.model_dump()
    calls = [
        (item.call_id, item.name, item.arguments) for item in final.output if item.type == "function_call"
    ]
    assert calls == [("call_abc", "get_weather", ARGUMENTS), ("call_def", "get_time", "{}")]
    assert final.usage is not None and final.usage.total_tokens == 200
    assert final.usage.input_tokens_details.cached_tokens == 64
    assert final.usage.output_tokens_details.reasoning_tokens == 30
    raw = list(client.responses.create(model="gpt-5-mini", input="Weather?", store=False, stream=True))
    assert raw[-1].type == "response.completed" and raw[-1].response.output_text == TEXT
