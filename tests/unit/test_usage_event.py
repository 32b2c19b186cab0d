"""The v1 usage event contract: JSON round trip, validation naming the field, UUIDv7, money."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tollway_sidecar.contract.money import format_usd, from_nano
from tollway_sidecar.contract.usage_event import (
    MAX_PROPERTIES,
    MAX_PROPERTY_NAME,
    MAX_PROPERTY_VALUE,
    Attempt,
    Tokens,
    UsageData,
    UsageEvent,
    UsageEventError,
    Uuid7Generator,
    nanos_to_usd,
    parse_usd,
    usd_to_nanos,
    uuid7,
    uuid7_time,
)


def event(**data: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "key_name": "alice",
        "route": "chat",
        "model": "gpt-4o-mini",
        "status": 200,
        "outcome": "ok",
        "cost": "0.000123456",
        "billable": True,
        "team": "research",
        "properties": {"feature": "summary"},
        "attempts": (Attempt("mock", "openai", "gpt-4o-mini", 200),),
        "tokens": Tokens(input=10, output=5, cached_read=2, cache_write=1, reasoning=3),
        "budgets": ("team-a/monthly",),
        "latency_ms": 120,
        "ttft_ms": 40,
    }
    fields.update(data)
    return UsageEvent(
        id=uuid7(),
        source="gateway-0",
        time=datetime(2026, 11, 5, 10, 30, 1, 250000, tzinfo=UTC),
        subject="team-a/alice",
        data=UsageData(**fields),
    )


def body(**changes: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(event().to_json())
    for path, value in changes.items():
        target = parsed
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return parsed


def test_round_trip_is_exact() -> None:
    original = event()
    again = UsageEvent.from_json(original.to_json())
    assert again == original
    assert again.data.cost_nanos == 123456
    assert again.data.backend == "mock"
    assert json.loads(original.to_json())["time"] == "2026-11-05T10:30:01.250000Z"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": "dev.tollway.usage.v9"}, "type"),
        ({"specversion": "0.3"}, "specversion"),
        ({"id": "not-a-uuid"}, "id"),
        ({"id": str(uuid.uuid4())}, "id"),
        ({"time": "2026-11-05T10:30:01"}, "time"),
        ({"time": "9999-12-31T23:00:00Z"}, "time"),
        ({"time": "1999-12-31T23:59:59Z"}, "time"),
        ({"subject": KeyError}, "subject"),
        ({"data__namespace": KeyError}, "data.namespace"),
        ({"data__cost": 0.1}, "data.cost"),
        ({"data__cost": "0.0000000001"}, "data.cost"),
        ({"data__cost": "-1"}, "data.cost"),
        ({"data__status": "200"}, "data.status"),
        ({"data__billable": 1}, "data.billable"),
        ({"data__tokens__input": True}, "data.tokens.input"),
        ({"data__tokens__output": -1}, "data.tokens.output"),
        ({"data__outcome": "maybe"}, "data.outcome"),
        (
            {"data__attempts": [{"backend": "b", "provider": "p", "status": 200}]},
            "data.attempts[0].upstream_model",
        ),
        ({"data__properties": {"Bad Name": "x"}}, "data.properties.Bad Name"),
        ({"data__properties": {"a": "x" * (MAX_PROPERTY_VALUE + 1)}}, "data.properties.a"),
        ({"data__properties": {f"p{i}": "x" for i in range(MAX_PROPERTIES + 1)}}, "data.properties"),
        (
            {"data__properties": {"a" * (MAX_PROPERTY_NAME + 1): "x"}},
            "data.properties." + "a" * MAX_PROPERTY_NAME,
        ),
        ({"data__outcome": "denied"}, "data.cost"),
        ({"data__cost": "1000000.000000001"}, "data.cost"),
        ({"data__tokens__reasoning": 10**12 + 1}, "data.tokens.reasoning"),
        ({"data__latency_ms": -5}, "data.latency_ms"),
        ({"data__team": "a\x00b"}, "data.team"),
        ({"data__properties": {"a": "x\x00"}}, "data.properties.a"),
        ({"data__properties": {"a": "x\ud800"}}, "data.properties.a"),
        ({"source": "gw\udfff"}, "source"),
        ({"data__properties": {"ab\n": "x"}}, "data.properties.ab\n"),
        (
            {
                "data__attempts": [
                    {"backend": "b" * 600, "provider": "p", "upstream_model": "m", "status": 200}
                ]
            },
            "data.attempts[0].backend",
        ),
    ],
)
def test_bad_events_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(UsageEventError) as caught:
        UsageEvent.from_dict(body(**changes))
    assert caught.value.field == field


def test_not_json_and_not_an_object() -> None:
    with pytest.raises(UsageEventError, match="not JSON"):
        UsageEvent.from_json(b"{nope")
    with pytest.raises(UsageEventError, match="JSON object"):
        UsageEvent.from_json("[1]")


def test_unknown_data_fields_are_ignored_within_v1() -> None:
    parsed = body(data__some_future_field="x")
    assert UsageEvent.from_dict(parsed).data.cost == "0.000123456"


def test_a_denied_call_is_free_and_not_billable() -> None:
    denied = event(outcome="denied", status=429, cost="0", billable=False)
    assert UsageEvent.from_json(denied.to_json()).data.cost_nanos == 0


def test_an_expired_reservation_is_an_outcome_of_v1_and_billable() -> None:
    expired = event(outcome="expired", status=504, attempts=())
    assert UsageEvent.from_json(expired.to_json()) == expired
    assert expired.data.billable and expired.data.cost_nanos == 123_456


def test_uuid7_bits_and_order() -> None:
    ids = [uuid7() for _ in range(20000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    # Sorting by the string form (what the database sees) gives the same order.
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)


def test_uuid7_carries_its_millisecond_and_never_goes_back() -> None:
    clock = [1_800_000_000_123]
    generate = Uuid7Generator(lambda: clock[0])
    at = generate()
    assert uuid7_time(at) == datetime.fromtimestamp(1_800_000_000.123, tz=UTC)
    clock[0] -= 5_000  # the clock stepped back
    later = generate()
    assert later > at
    assert uuid7_time(later) == uuid7_time(at)


def test_money_is_exact() -> None:
    assert usd_to_nanos(parse_usd("12.345678901")) == 12_345_678_901
    assert nanos_to_usd(1) == Decimal("0.000000001")
    assert str(nanos_to_usd(1_500_000_000)) == "1.500000000"
    with pytest.raises(UsageEventError):
        usd_to_nanos(Decimal("0.0000000005"))


@pytest.mark.parametrize("nanos", [0, 1, 135_000, 10**9, 123_456_789_012])
def test_the_settled_cost_string_parses_back_to_the_same_nanos(nanos: int) -> None:
    """The producer writes the settled nano-USD with the shared money contract; the meter reads it exactly."""
    assert usd_to_nanos(parse_usd(format_usd(from_nano(nanos)))) == nanos
