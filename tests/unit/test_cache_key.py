"""The cache key: one entry for the same question in one partition, another for anything that differs."""

from __future__ import annotations

from typing import Any

import pytest

from tollway_sidecar.cache import cache_key
from tollway_sidecar.cache.key import canonical_body
from tollway_sidecar.config.models import CachePartition, VirtualKey

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Grüße, what is 2+2?"}],
    "temperature": 0.2,
}


def vkey(name: str = "app", namespace: str = "team-a", team: str | None = "ml") -> VirtualKey:
    return VirtualKey(name=name, namespace=namespace, key_sha256="0" * 64, owner_team=team)


def key_of(**changes: Any) -> str:
    args: dict[str, Any] = {
        "partition": "Key",
        "key": vkey(),
        "route_id": "team-a/chat",
        "client_model": "gpt-4o-mini",
        "path": "/v1/chat/completions",
        "body": BODY,
        "extra_parts": (),
    } | changes
    return cache_key(**args)


def test_a_streamed_and_a_non_streamed_call_share_a_key() -> None:
    streamed = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    assert key_of(body=streamed) == key_of()


def test_the_end_user_field_does_not_split_the_key() -> None:
    assert key_of(body={**BODY, "user": "alice"}) == key_of(body={**BODY, "user": "bob"}) == key_of()


def test_field_order_and_whitespace_do_not_split_the_key() -> None:
    reordered = {"temperature": 0.2, "messages": BODY["messages"], "model": "gpt-4o-mini"}
    assert key_of(body=reordered) == key_of()
    assert canonical_body(BODY) == (
        '{"messages":[{"content":"Grüße, what is 2+2?","role":"user"}],'
        '"model":"gpt-4o-mini","temperature":0.2}'
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"route_id": "team-a/other"},
        {"client_model": "gpt-4o"},
        {"path": "/v1/messages"},
        {"body": {**BODY, "temperature": 0.3}},
        {"body": {**BODY, "max_tokens": 10}},
        {"body": {**BODY, "messages": [{"role": "user", "content": "Grüße, what is 2+3?"}]}},
        {"body": {**BODY, "tools": []}},
        {"body": {**BODY, "n": 2}},
        {"extra_parts": (("seed", "1"),)},
        {"extra_parts": (("namespace", "x"),)},
        {"extra_parts": (("helicone-seed", "1"),)},
        {"key": vkey(name="other")},
        {"key": vkey(namespace="team-b")},
    ],
)
def test_anything_else_that_differs_gives_another_key(changes: dict[str, Any]) -> None:
    assert key_of(**changes) != key_of()


def test_seeds_with_different_values_or_labels_give_different_keys() -> None:
    assert key_of(extra_parts=(("seed", "1"),)) != key_of(extra_parts=(("seed", "2"),))
    assert key_of(extra_parts=(("seed", "1"),)) != key_of(extra_parts=(("helicone-seed", "1"),))


@pytest.mark.parametrize(
    ("partition", "same", "different"),
    [
        ("Key", [], [vkey(name="other"), vkey(namespace="team-b")]),
        (
            "Team",
            [vkey(name="other")],
            [vkey(team="infra"), vkey(namespace="team-b"), vkey(name="x", team=None)],
        ),
        ("Namespace", [vkey(name="other"), vkey(team="infra")], [vkey(namespace="team-b")]),
    ],
)
def test_partitions(partition: CachePartition, same: list[VirtualKey], different: list[VirtualKey]) -> None:
    base = key_of(partition=partition)
    assert [key_of(partition=partition, key=k) for k in same] == [base] * len(same)
    assert all(key_of(partition=partition, key=k) != base for k in different)


def test_a_key_without_a_team_is_its_own_partition_under_team() -> None:
    lone_a, lone_b = vkey(name="a", team=None), vkey(name="b", team=None)
    assert key_of(partition="Team", key=lone_a) != key_of(partition="Team", key=lone_b)
    assert key_of(partition="Team", key=lone_a) == key_of(partition="Key", key=lone_a)


def test_the_partition_mode_is_part_of_the_key() -> None:
    # A key that owns no team: the Team and Key partitions are both just that key (above). With a team,
    # each mode names a different audience, so the same call under two modes never shares an entry.
    assert len({key_of(partition=p) for p in ("Key", "Team", "Namespace")}) == 3


def test_the_key_is_a_sha256_hex_digest() -> None:
    value = key_of()
    assert len(value) == 64 and int(value, 16) >= 0
