"""The usage event of a call whose reservation expires (extproc.expiry_record): what it says, and
that the request path's template writes exactly what the validated contract writes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from test_usage_record import ESTIMATE, admitted_state

from tollway_sidecar.config.models import VirtualKey
from tollway_sidecar.contract.usage_event import UsageEvent, UsageEventError, uuid7
from tollway_sidecar.extproc.expiry_record import EXPIRED_STATUS, expiry_event, expiry_event_json
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.quota.plan import Increment, Plan, to_nano


def reserving() -> tuple[RequestState, Plan]:
    """A call's state when the gate reserves it: nothing answered, not admitted yet."""
    state = admitted_state()
    assert state.quota is not None
    plan = state.quota.plan
    state.quota = None
    state.status, state.usage, state.attempt_log, state.backend = 0, None, [], None
    return state, plan


def test_an_expiry_event_is_the_call_charged_exactly_what_its_expiry_leaves_counted() -> None:
    state, plan = reserving()
    call_id = uuid7()
    event = UsageEvent.from_json(expiry_event_json(state, plan, call_id, source="gw-0"))
    data = event.data
    assert event.id == call_id and event.time == datetime(2026, 11, 5, 10, 30, 1, 250000, tzinfo=UTC)
    assert (data.outcome, data.status, data.billable) == ("expired", EXPIRED_STATUS, True)
    # The expiry keeps the reserved nano-USD in `used` on every usd line, and tallies the estimate.
    assert {line.amount for line in plan.lines if line.metric == "usd"} == {data.cost_nanos}
    assert data.cost_nanos == to_nano(ESTIMATE.cost_usd) == 1_000_000
    tallies = {item.field: item.amount for item in plan.on_expiry}
    assert (data.tokens.input, data.tokens.output) == (tallies["in"], tallies["out"]) == (10, 10)
    assert data.budgets == ("team/cap",) and data.attempts == () and data.price_source == "estimate"
    assert (data.latency_ms, data.ttft_ms, data.streamed) == (600_000, None, True)
    assert (data.session_id, data.request_id) == ("s-1", "envoy-1")
    assert data.properties == {"env": "prod", "app.tier": "gold"}


class Span:
    def __init__(self, trace: int) -> None:
        self.trace = trace

    def get_span_context(self) -> Span:
        return self

    @property
    def trace_id(self) -> int:
        return self.trace


def variants() -> list[RequestState]:
    """Client text with quotes, backslashes, non-ASCII, a NUL, too long, a stand-in's own text;
    no properties or session; sorted properties; no model, route, request id; a trace."""
    states = []
    for change in (
        {},
        {"properties": {}, "session": None, "session_path": None, "session_name": None, "end_user": None},
        {"end_user": 'u"\\ \u00e9\u4e2d\U0001f600 \x01session_id\x01\x00' + "y" * 600, "session": "\ud800s"},
        {"properties": {"z": "last", "a": '"q"', "m.n": "\u00fc"}, "stream": False},
        {"client_model": "", "route": None, "envoy_request_id": "", "span": Span(0xABC)},
    ):
        state, _ = reserving()
        for name, value in change.items():
            setattr(state, name, value)
        states.append(state)
    return states


@pytest.mark.parametrize("state", variants())
def test_the_template_writes_byte_for_byte_what_the_validated_contract_writes(state: RequestState) -> None:
    _, plan = reserving()
    call_id = uuid7()
    fast = expiry_event_json(state, plan, call_id, source="gw-0")
    assert fast == expiry_event(state, plan, call_id, source="gw-0").to_json()
    assert UsageEvent.from_json(fast).to_json() == fast


def test_another_key_and_replica_get_their_own_template() -> None:
    state, plan = reserving()
    first = UsageEvent.from_json(expiry_event_json(state, plan, uuid7(), source="gw-0"))
    assert state.key is not None
    state.key = VirtualKey(name="other", namespace="team", key_sha256="b" * 64, owner_team="ads")
    second = UsageEvent.from_json(expiry_event_json(state, plan, uuid7(), source="gw-1"))
    assert (first.subject, first.data.team, first.source) == ("team/app", "search", "gw-0")
    assert (second.subject, second.data.team, second.source) == ("team/other", "ads", "gw-1")


def test_an_estimate_outside_the_contract_is_refused_naming_the_field() -> None:
    state, plan = reserving()
    huge = dataclasses.replace(
        plan,
        on_expiry=tuple(
            Increment(i.key, i.field, 10**13 if i.field == "out" else i.amount) for i in plan.on_expiry
        ),
    )
    with pytest.raises(UsageEventError, match=r"^data\.tokens\.output:"):
        expiry_event_json(state, huge, uuid7(), source="gw-0")
