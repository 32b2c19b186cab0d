"""The semantic partition: every part of a call but the last user message's text names it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tollway_sidecar.cache.key import cache_key
from tollway_sidecar.cache.semantic_key import SemanticQuery, semantic_query, split_last_user
from tollway_sidecar.config.models import CachePartition, VirtualKey

KEY = VirtualKey(name="app", namespace="team-a", key_sha256="0" * 64, owner_team="ml")
OTHER_KEY = VirtualKey(name="app2", namespace="team-a", key_sha256="1" * 64, owner_team="ml")

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "temperature": 0,
    "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    "messages": [
        {"role": "system", "content": "You answer geography questions."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! Ask away."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
}


def query(
    body: dict[str, Any] = BODY,
    *,
    key: VirtualKey = KEY,
    partition: CachePartition = "Key",
    route_id: str = "chat",
    model: str = "gpt-4o-mini",
    path: str = "/v1/chat/completions",
    parts: tuple[tuple[str, str], ...] = (),
) -> SemanticQuery:
    found = semantic_query(
        api="chat",
        partition=partition,
        key=key,
        route_id=route_id,
        client_model=model,
        path=path,
        body=body,
        extra_parts=parts,
    )
    assert found is not None
    return found


def changed(edit: Any) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    edit(body)
    return body


def test_only_the_last_user_text_may_differ() -> None:
    paraphrase = changed(lambda b: b["messages"][-1].update(content="Which city is France's capital?"))
    assert query(paraphrase).partition == query().partition
    assert query(paraphrase).text == "Which city is France's capital?"
    assert query().text == "What is the capital of France?"
    # Text parts count as text: the same turn as a list of parts is still compared by its text.
    parts = changed(
        lambda b: b["messages"][-1].update(content=[{"type": "text", "text": "Capital of France"}])
    )
    assert query(parts).text == "Capital of France"


@pytest.mark.parametrize(
    "edit",
    [
        lambda b: b["messages"][0].update(content="You answer history questions."),  # system prompt
        lambda b: b["messages"][1].update(content="Hello"),  # an earlier user turn
        lambda b: b["messages"][2].update(content="Hi! Ask away."),  # an earlier assistant turn
        lambda b: b.update(temperature=1),  # a parameter
        lambda b: b["tools"][0]["function"].update(name="search"),  # the tools
        lambda b: b["messages"].insert(1, {"role": "user", "content": "extra"}),  # one more turn
        lambda b: b["messages"][-1].update(name="alice"),  # the last turn's other fields
    ],
    ids=["system", "earlier-user", "earlier-assistant", "parameter", "tools", "turns", "turn-field"],
)
def test_every_other_part_of_the_body_names_another_partition(edit: Any) -> None:
    assert query(changed(edit)).partition != query().partition


def test_who_may_read_is_part_of_the_partition() -> None:
    base = query().partition
    assert query(key=OTHER_KEY).partition != base  # partition Key: per key
    assert query(key=OTHER_KEY, partition="Team").partition == query(partition="Team").partition
    assert query(partition="Team").partition != base
    assert query(parts=(("seed", "1"),)).partition != base  # seed and namespace headers
    assert query(route_id="other").partition != base
    assert query(model="gpt-4o").partition != base
    assert query(path="/v1/messages").partition != base


def test_a_partition_is_never_an_exact_key() -> None:
    exact = cache_key(
        partition="Key",
        key=KEY,
        route_id="chat",
        client_model="gpt-4o-mini",
        path="/v1/chat/completions",
        body=BODY,
    )
    assert query().partition != exact


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "prefill"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}],
            }
        ],
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}],
            }
        ],
        [{"role": "tool", "tool_call_id": "t", "content": "42"}],
        [{"role": "user", "content": "   "}],
        [],
    ],
    ids=["assistant-last", "image", "mixed", "cache-control", "tool-last", "blank", "none"],
)
def test_a_call_without_a_last_user_text_is_matched_exactly_only(messages: list[Any]) -> None:
    assert split_last_user("chat", {"model": "m", "messages": messages}) is None


def test_anthropic_messages_text_blocks() -> None:
    body = {
        "model": "claude",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}],
    }
    split = split_last_user("messages", body)
    assert split is not None and split[1] == "Capital of France?"
    assert body["messages"][0]["content"][0]["text"] == "Capital of France?"  # the client's body is untouched
