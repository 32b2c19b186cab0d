"""The usage event of one call, built from its state and its charge (extproc.usage_record)."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tollway_sidecar.config.models import Backend, Budget, Route, VirtualKey
from tollway_sidecar.contract.usage_event import MAX_PROPERTIES, UsageEvent, uuid7
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.extproc.usage_record import (
    CLIENT_CLOSED,
    bounded_properties,
    event_json,
    facts_of,
    replica_name,
    usage_event,
)
from tollway_sidecar.providers.attempts import Attempt
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.quota.estimate import Estimate
from tollway_sidecar.quota.gate import Admission
from tollway_sidecar.quota.plan import Charge, build_plan, from_nano

FLAKY = Backend(name="flaky", provider="openai", model="gpt-4o", base_url="http://127.0.0.1:9/v1")
SPARE = Backend(name="spare", provider="anthropic", model="claude-x", base_url="http://127.0.0.1:9/v1")
ROUTE = Route(id="team-chat", name="chat", namespace="team", model="chat", backends=(FLAKY, SPARE))
KEY = VirtualKey(
    name="app",
    namespace="team",
    key_sha256="a" * 64,
    owner_team="search",
    owner_user="ana",
    budgets=("team/cap",),
)
BUDGET = Budget(name="cap", namespace="team", limit_usd=Decimal("10"))
ESTIMATE = Estimate(prompt_tokens=10, output_tokens=10, cost_usd=Decimal("0.001"))
NOW = datetime(2026, 11, 5, 10, 30, 1, 250000, tzinfo=UTC)


def admitted_state() -> RequestState:
    state = RequestState(request_id="rid-1", started=100.0, envoy_request_id="envoy-1")
    state.key = KEY
    state.route = ROUTE
    state.client_model = "chat"
    state.stream = True
    state.end_user = "u-42"
    state.session = "s-1"
    state.session_path = "/plan/step"
    state.session_name = "planner"
    state.properties = {"env": "prod", "app.tier": "gold"}
    state.status = 200
    state.first_chunk_at = 100.25
    state.backend = SPARE
    state.attempt_log = [
        Attempt(1, "flaky", "openai", 100.0, status=503),
        Attempt(2, "spare", "anthropic", 100.1, status=200),
    ]
    state.usage = TokenUsage(120, 30, cache_read_tokens=100, cache_write_tokens=7, reasoning_tokens=5)
    plan = build_plan(
        key=KEY,
        budgets={"team/cap": BUDGET},
        user="u-42",
        estimate=ESTIMATE,
        rid="rid-1",
        now_ms=int(NOW.timestamp() * 1000),
        reservation_ttl_ms=600_000,
        default_failure_policy="FailClosed",
    )
    state.quota = Admission(plan, ESTIMATE, {})
    return state


def test_an_admitted_call_becomes_one_event_with_its_exact_charge() -> None:
    facts = facts_of(admitted_state(), price=None, now=NOW, monotonic=101.5, source="gw-0")
    event = UsageEvent.from_json(event_json(facts, Charge(120, 30, 1_234_567_891)))
    data = event.data
    assert event.id.version == 7
    assert event.subject == "team/app" and event.time == NOW and event.source
    assert (data.namespace, data.key_name, data.team, data.user) == ("team", "app", "search", "ana")
    assert (data.end_user, data.session_id, data.session_path, data.session_name) == (
        "u-42",
        "s-1",
        "/plan/step",
        "planner",
    )
    assert data.properties == {"env": "prod", "app.tier": "gold"}
    assert (data.route, data.model, data.status, data.outcome) == ("team-chat", "chat", 200, "ok")
    assert [(a.backend, a.provider, a.upstream_model, a.status) for a in data.attempts] == [
        ("flaky", "openai", "gpt-4o", 503),
        ("spare", "anthropic", "claude-x", 200),
    ]
    assert (data.tokens.input, data.tokens.output, data.tokens.cached_read) == (120, 30, 100)
    assert (data.tokens.cache_write, data.tokens.reasoning) == (7, 5)
    # The cost is the settle's nano-USD, to the nano-dollar.
    assert data.cost == "1.234567891" and data.cost_nanos == 1_234_567_891 and data.billable
    assert Decimal(data.cost) == from_nano(1_234_567_891)
    assert data.budgets == ("team/cap",)
    assert (data.latency_ms, data.ttft_ms, data.streamed) == (1500, 250, True)
    assert data.request_id == "envoy-1"
    assert '"key_sha256"' not in event_json(facts, Charge(1, 1, 1)) and "a" * 64 not in event.to_json()


def test_the_event_time_is_the_admission_so_a_call_past_midnight_stays_in_its_counters_month() -> None:
    state = admitted_state()
    admitted = datetime(2026, 11, 30, 23, 59, 59, 900000, tzinfo=UTC)
    assert state.quota is not None
    state.quota = Admission(
        replace(state.quota.plan, now_ms=int(admitted.timestamp()) * 1000 + 900), ESTIMATE, {}
    )
    ended = datetime(2026, 12, 1, 0, 0, 2, tzinfo=UTC)
    event = usage_event(facts_of(state, price=None, now=ended, monotonic=102.0, source="gw"), Charge(1, 1, 1))
    assert event.time == admitted  # the budget counter the call was charged to is November's


def test_the_event_id_is_made_once_per_call_and_never_the_providers() -> None:
    state = admitted_state()
    state.response_model = "chatcmpl-provider-id"
    facts = facts_of(state, price=None, now=NOW, monotonic=101.0, source="gw-0")
    first = usage_event(facts, Charge(1, 1, 1))
    again = usage_event(facts, Charge(1, 1, 1))
    assert first.id == again.id  # a retried settle carries the same id: the ledger dedupes it
    assert facts_of(state, price=None, now=NOW, monotonic=101.0, source="gw-0").id != first.id


def test_a_refused_call_costs_nothing_and_is_not_billable() -> None:
    state = admitted_state()
    state.quota = None
    state.status = 429
    state.usage = None
    facts = facts_of(state, price=None, now=NOW, monotonic=100.01, source="gw-0", denied=True)
    data = UsageEvent.from_json(event_json(facts, None)).data
    assert (data.outcome, data.status, data.cost, data.billable) == ("denied", 429, "0", False)
    assert data.budgets == () and data.tokens.input == 0


def test_a_client_gone_before_any_answer_is_cancelled_with_499() -> None:
    state = admitted_state()
    state.status = 0
    data = usage_event(
        facts_of(state, price=None, now=NOW, monotonic=101.0, source="gw-0"), Charge(10, 0, 5)
    ).data
    assert (data.status, data.outcome, data.cost) == (CLIENT_CLOSED, "cancelled", "0.000000005")


def test_an_error_answer_is_an_error_event() -> None:
    state = admitted_state()
    state.status = 502
    data = usage_event(
        facts_of(state, price=None, now=NOW, monotonic=101.0, source="gw-0"), Charge(0, 0, 0)
    ).data
    assert (data.status, data.outcome, data.cost) == (502, "error", "0")


def test_one_backend_rewritten_by_the_router_is_the_only_attempt() -> None:
    state = admitted_state()
    state.attempt_log = []
    data = usage_event(
        facts_of(state, price=None, now=NOW, monotonic=101.0, source="gw-0"), Charge(1, 1, 1)
    ).data
    assert [(a.backend, a.upstream_model, a.status) for a in data.attempts] == [("spare", "claude-x", 200)]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ({"Bad Name": "x", "ok": "1"}, {"ok": "1"}),
        ({"-lead": "x"}, {}),
        ({"n" * 65: "x"}, {}),
        ({"v": "x" * 300}, {"v": "x" * 256}),
        ({f"p{i}": "x" for i in range(20)}, {f"p{i}": "x" for i in range(MAX_PROPERTIES)}),
    ],
)
def test_properties_are_bounded_by_the_contract(given: dict[str, str], kept: dict[str, str]) -> None:
    assert bounded_properties(given) == kept


def test_client_text_outside_the_contract_is_clipped_not_lost() -> None:
    state = admitted_state()
    state.end_user = "u\x00" + "x" * 600
    state.session = "\ud800s"
    data = usage_event(
        facts_of(state, price=None, now=NOW, monotonic=101.0, source="gw-0"), Charge(1, 1, 1)
    ).data
    assert data.end_user == "u" + "x" * 511
    assert "\x00" not in data.end_user and data.session_id == "?s"


def test_the_source_is_the_configured_replica_else_the_host_name() -> None:
    facts = facts_of(admitted_state(), price=None, now=NOW, monotonic=101.0, source="tw-gateway-7d9f")
    assert usage_event(facts, Charge(1, 1, 1)).source == "tw-gateway-7d9f"
    assert replica_name("tw-gateway-7d9f") == "tw-gateway-7d9f"
    assert replica_name("") == socket.gethostname()


def test_the_settle_event_carries_the_id_its_admission_made_for_the_expiry_event() -> None:
    state = admitted_state()
    assert state.quota is not None
    state.quota.event_id = uuid7()
    facts = facts_of(state, price=None, now=NOW, monotonic=101.0, source="gw-0")
    assert usage_event(facts, Charge(1, 1, 1)).id == state.quota.event_id  # one call, one id
