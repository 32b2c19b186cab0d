"""The usage event's optional cache fields: the outcome and a hit's saving, left out when empty."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tollway_sidecar.contract.usage_event import UsageData, UsageEvent, UsageEventError, uuid7


def event(**data: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "namespace": "team-a",
        "key_name": "alice",
        "route": "chat",
        "model": "gpt-4o-mini",
        "status": 200,
        "outcome": "ok",
        "cost": "0",
        "billable": True,
        **data,
    }
    return UsageEvent(
        id=uuid7(),
        source="gateway-0",
        time=datetime(2026, 11, 5, 10, 30, tzinfo=UTC),
        subject="team-a/alice",
        data=UsageData(**fields),
    )


def test_a_hit_round_trips_its_outcome_and_saving() -> None:
    hit = event(cache="HIT", saved="0.000013275")
    parsed = UsageEvent.from_json(hit.to_json())
    assert (parsed.data.cache, parsed.data.saved) == ("HIT", "0.000013275")
    assert json.loads(hit.to_json())["data"]["saved"] == "0.000013275"


def test_the_fields_are_left_out_when_the_route_has_no_cache() -> None:
    data = json.loads(event().to_json())["data"]
    assert "cache" not in data and "saved" not in data
    assert "saved" not in json.loads(event(cache="MISS").to_json())["data"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cache": "hit"}, "data.cache"),
        ({"cache": "MISS", "saved": "0.1"}, "data.saved"),  # only a hit saves
        ({"cache": "HIT", "saved": "1e-3"}, "data.saved"),  # a plain decimal string, as cost
        ({"cache": "HIT", "saved": "2000000"}, "data.saved"),
    ],
)
def test_bad_cache_fields_are_refused_naming_the_field(fields: dict[str, str], field: str) -> None:
    with pytest.raises(UsageEventError) as caught:
        event(**fields)
    assert caught.value.field == field
