"""Two gateways (each its own Envoy and sidecar) on one Redis, racing for a budget worth exactly N
calls: exactly N are admitted, the spend never passes the limit, and the cost headers add up to it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal

import pytest
from reliability_env import (
    RESERVED,
    Client,
    QuotaGateway,
    RedisServer,
    Reply,
    budget_yaml,
    chat_body,
    config_folder,
    get_json,
    key_value,
    key_yaml,
    provider_key,
    record,
    routes_yaml,
    start_gateway,
)

from tollway.dev import free_port

N = 40
CALLS = 3 * N
# The mock reports the gateway's own prompt estimate (9 tokens), so each call costs exactly what it
# reserves: the budget then admits N calls whatever their order, and no more.
EXACT = {"x-mock-prompt-tokens": "9"}
RESOURCES = budget_yaml("pair-budget", N * RESERVED, "period: Total") + key_yaml(
    "pair", "budgetRefs: [pair-budget]"
)


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[tuple[QuotaGateway, QuotaGateway]]:
    base = tmp_path_factory.mktemp("two-gateways")
    mock_port = free_port()
    folder = config_folder(base, mock_port, routes_yaml(mock_port, provider_key()) + RESOURCES)
    first = start_gateway(base / "a", folder, redis_server.url, mock_port=mock_port)
    try:
        second = start_gateway(base / "b", folder, redis_server.url, mock_port=mock_port, mock_provider=False)
        try:
            yield first, second
        finally:
            second.dev.stop()
    finally:
        first.dev.stop()


@pytest.mark.timeout(60)
async def test_two_gateways_on_one_redis_admit_exactly_n_calls_of_a_budget(
    pair: tuple[QuotaGateway, QuotaGateway],
) -> None:
    headers = {"authorization": f"Bearer {key_value('pair')}", "content-type": "application/json", **EXACT}
    async with Client(pair[0].origin, limit=12) as one, Client(pair[1].origin, limit=12) as two:
        clients = [one, two]
        replies: list[Reply] = await asyncio.gather(
            *(clients[i % 2].send("POST", "/v1/chat/completions", chat_body(), headers) for i in range(CALLS))
        )
    admitted = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status == 429]
    codes = Counter(f"{r.status} {(r.error_object() or {}).get('code', '')}".strip() for r in replies)
    spend = await asyncio.to_thread(get_json, f"{pair[0].admin_url}/spend")
    other = await asyncio.to_thread(get_json, f"{pair[1].admin_url}/spend")
    budget = spend["budgets"]["default/pair-budget"]
    headers_sum = sum((r.cost or Decimal(0) for r in admitted), Decimal(0))
    record(
        "two gateways",
        calls=CALLS,
        budget_for_calls=N,
        by_status=dict(sorted(codes.items())),
        admitted_via_first=sum(1 for i, r in enumerate(replies) if r.status == 200 and i % 2 == 0),
        admitted_via_second=sum(1 for i, r in enumerate(replies) if r.status == 200 and i % 2 == 1),
        limit_usd=budget["limit_usd"],
        spent_usd=budget["spent_usd"],
        sum_of_cost_headers_usd=str(headers_sum),
    )
    assert len(admitted) == N, codes
    assert len(refused) == CALLS - N and all(
        (r.error_object() or {}).get("code") == "budget_exceeded" for r in refused
    ), codes
    assert all(r.cost == RESERVED for r in admitted), {r.cost for r in admitted}
    assert Decimal(budget["spent_usd"]) <= Decimal(budget["limit_usd"])
    assert headers_sum == Decimal(budget["spent_usd"]) == N * RESERVED
    assert budget["reserved_usd"] == "0"
    assert other["budgets"]["default/pair-budget"] == budget, "both replicas report the same spend"
