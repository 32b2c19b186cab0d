"""`data.content` of the usage event: present only on a capturing route, redacted like the spans
before it is put in the event, each text bounded with a visible marker; older events still parse."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tollway_sidecar.config.models import Backend, Route, VirtualKey
from tollway_sidecar.contract.usage_event import MAX_CONTENT_TEXT, TRUNCATED, UsageEvent, UsageEventError
from tollway_sidecar.extproc.captured import pending, prompt_messages
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.extproc.usage_record import event_json, facts_of
from tollway_sidecar.quota.plan import Charge
from tollway_sidecar.tracing import Redactor, Tracing

BACKEND = Backend(name="b", provider="openai", model="gpt-4o", base_url="http://127.0.0.1:9/v1")
KEY = VirtualKey(name="app", namespace="team", key_sha256="a" * 64)
NOW = datetime(2026, 11, 5, 10, 0, tzinfo=UTC)
SECRET = Redactor.from_strings([r"sk-[a-z0-9]+"])


def call(capture: bool | None, prompt: str = "hi", completion: str = "hello", days: int = 7) -> RequestState:
    state = RequestState(request_id="r", started=1.0)
    state.key = KEY
    state.route = Route(
        id="team-chat",
        name="chat",
        namespace="team",
        model="chat",
        backends=(BACKEND,),
        capture_content=capture,
        content_retention_days=days,
    )
    state.operation = "chat"
    state.client_model = "chat"
    state.status = 200
    state.body = {
        "model": "chat",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}],
    }
    state.completion = completion
    return state


def event_of(state: RequestState, tracing: Tracing) -> dict[str, object]:
    facts = facts_of(state, price=None, now=NOW, monotonic=2.0, source="gw")
    text = event_json(facts, Charge(1, 1, 10), pending(tracing, state))
    UsageEvent.from_json(text)  # the contract accepts what the producer wrote
    return json.loads(text)["data"]  # type: ignore[no-any-return]


def test_a_capturing_route_puts_the_redacted_prompt_and_completion_in_the_event() -> None:
    tracing = Tracing(None, capture_content=False, redact=SECRET)
    state = call(
        True, prompt="mail ana@example.com my key sk-abc123", completion="card 4111 1111 1111 1111", days=30
    )
    content = event_of(state, tracing)["content"]
    assert content == {
        "prompt": "system: be brief\n\nuser: mail [REDACTED:email] my key [REDACTED]",
        "completion": "card [REDACTED:card]",
        "retention_days": 30,
    }


@pytest.mark.parametrize(("route", "gateway"), [(False, True), (None, False)])
def test_no_content_when_the_route_does_not_capture(route: bool | None, gateway: bool) -> None:
    data = event_of(call(route), Tracing(None, capture_content=gateway))
    assert "content" not in data


def test_the_gateways_setting_captures_for_a_route_that_leaves_it() -> None:
    data = event_of(call(None), Tracing(None, capture_content=True))
    assert data["content"] == {
        "prompt": "system: be brief\n\nuser: hi",
        "completion": "hello",
        "retention_days": 7,
    }


def test_long_texts_are_cut_with_a_marker_after_redaction() -> None:
    # An address straddling the bound: redacted first, so no half of it survives the cut.
    prompt = "x" * (MAX_CONTENT_TEXT - 30) + " bob@example.com " + "y" * 100
    content = event_of(call(True, prompt=prompt, completion="z" * 50_000), Tracing(None))["content"]
    assert isinstance(content, dict)
    for text in (content["prompt"], content["completion"]):
        assert len(text) == MAX_CONTENT_TEXT
        assert text.endswith(TRUNCATED)
    assert "bob@" not in content["prompt"] and "example.com" not in content["prompt"]
    assert content["completion"] == "z" * (MAX_CONTENT_TEXT - len(TRUNCATED)) + TRUNCATED


def test_a_huge_prompt_is_read_only_as_far_as_the_bound_needs() -> None:
    content = event_of(call(True, prompt="w " * 2_000_000), Tracing(None))["content"]
    assert isinstance(content, dict)
    assert len(content["prompt"]) == MAX_CONTENT_TEXT and content["prompt"].endswith(TRUNCATED)
    assert content["prompt"].startswith("system: be brief\n\nuser: w w ")


def test_text_a_database_cannot_store_is_cleaned_not_refused() -> None:
    content = event_of(call(True, prompt="a\x00b\ud800c"), Tracing(None))["content"]
    assert isinstance(content, dict)
    assert content["prompt"] == "system: be brief\n\nuser: ab?c"


def test_prompts_of_each_api_are_read_like_the_spans_read_them() -> None:
    assert prompt_messages("responses", {"instructions": "sys", "input": "q"}) == (
        ("system", "sys"),
        ("user", "q"),
    )
    assert prompt_messages(
        "messages",
        {"system": "sys", "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]},
    ) == (
        ("system", "sys"),
        ("user", '[{"type":"text","text":"q"}]'),
    )
    assert prompt_messages("embeddings", {"input": ["a", "b"]}) == (("input", '["a","b"]'),)


def _event_with(content: object) -> str:
    state = call(None)
    facts = facts_of(state, price=None, now=NOW, monotonic=2.0, source="gw")
    body = json.loads(event_json(facts, Charge(1, 1, 10)))
    if content is not None:
        body["data"]["content"] = content
    return json.dumps(body)


def test_an_event_without_content_still_parses() -> None:
    assert UsageEvent.from_json(_event_with(None)).data.content is None


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"prompt": "p", "completion": "c", "retention_days": 0}, "data.content.retention_days"),
        ({"prompt": "p", "completion": "c", "retention_days": 366}, "data.content.retention_days"),
        (
            {"prompt": "p" * (MAX_CONTENT_TEXT + 1), "completion": "c", "retention_days": 7},
            "data.content.prompt",
        ),
        ({"prompt": "p", "completion": "c\x00", "retention_days": 7}, "data.content.completion"),
        ({"prompt": "p", "retention_days": 7}, "data.content.completion"),
        ("text", "data.content"),
    ],
)
def test_bad_content_is_refused_naming_the_field(content: object, field: str) -> None:
    with pytest.raises(UsageEventError) as caught:
        UsageEvent.from_json(_event_with(content))
    assert caught.value.field == field


def test_the_json_without_content_leaves_only_the_content_out() -> None:
    state = call(True)
    facts = facts_of(state, price=None, now=NOW, monotonic=2.0, source="gw")
    event = UsageEvent.from_json(event_json(facts, Charge(1, 1, 10), pending(Tracing(None), state)))
    assert event.data.content is not None
    bare = json.loads(event.to_json(content=False))
    full = json.loads(event.to_json())
    del full["data"]["content"]
    assert bare == full
    assert UsageEvent.from_json(event.to_json(content=False)) == replace(
        event, data=replace(event.data, content=None)
    )
