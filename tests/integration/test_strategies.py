"""Routing strategies through the real Envoy: Weighted splits (random and sticky) and Cost order."""

from __future__ import annotations

import http.client
import json
from collections import Counter
from urllib.parse import urlsplit

from gateway_env import DEMO_KEY, Gateway

CALLS = 2000


def backends_of(
    gateway: Gateway, bodies: list[dict[str, object]], headers: list[dict[str, str]]
) -> Counter[str]:
    """x-tollway-backend of each call, over one keep-alive connection."""
    parts = urlsplit(gateway.origin)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    seen: Counter[str] = Counter()
    try:
        for body, extra in zip(bodies, headers, strict=True):
            connection.request(
                "POST",
                "/v1/chat/completions",
                json.dumps(body).encode(),
                {"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json", **extra},
            )
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            seen[response.getheader("x-tollway-backend") or ""] += 1
    finally:
        connection.close()
    return seen


def test_weighted_80_20_split_over_2000_calls(gateway: Gateway) -> None:
    body = {"model": "ab-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    seen = backends_of(gateway, [body] * CALLS, [{}] * CALLS)
    assert set(seen) == {"variant-a", "variant-b"}
    # Binomial(n=2000, p=0.8): mean 1600, sigma = sqrt(2000 * 0.8 * 0.2) ≈ 17.9. Within 4 sigma
    # (±71.6) a correct split fails about once in 16,000 runs; a 75/25 or 85/15 split never passes.
    sigma = (CALLS * 0.8 * 0.2) ** 0.5
    assert abs(seen["variant-a"] - 0.8 * CALLS) <= 4 * sigma, seen


def test_sticky_split_keeps_each_user_on_one_variant(gateway: Gateway) -> None:
    body = {"model": "ab-sticky", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for user in ("ana", "bo", "chen", "dee"):
        seen = backends_of(gateway, [body] * 20, [{"x-tollway-user": user}] * 20)
        assert len(seen) == 1, (user, seen)
    users = [{"x-tollway-user": f"user-{i}"} for i in range(400)]
    seen = backends_of(gateway, [body] * len(users), users)
    sigma = (len(users) * 0.25) ** 0.5
    assert abs(seen["variant-a"] - len(users) / 2) <= 4 * sigma, seen


def test_cost_tries_the_cheapest_backend_for_this_calls_token_mix(gateway: Gateway) -> None:
    # input-cheap: $1 in / $10 out per million; output-cheap: $5 in / $2 out.
    long_prompt = {
        "model": "by-cost",
        "messages": [{"role": "user", "content": "word " * 2000}],
        "max_tokens": 5,
    }
    long_answer = {"model": "by-cost", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000}
    assert backends_of(gateway, [long_prompt] * 3, [{}] * 3) == {"input-cheap": 3}
    assert backends_of(gateway, [long_answer] * 3, [{}] * 3) == {"output-cheap": 3}


def test_cost_falls_back_to_the_next_cheapest(gateway: Gateway) -> None:
    gateway.clear_mock_requests()
    body = json.dumps({"model": "by-cost-fallback", "messages": [{"role": "user", "content": "hi"}]}).encode()
    parts = urlsplit(gateway.origin)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            body,
            {"authorization": f"Bearer {DEMO_KEY}", "content-type": "application/json"},
        )
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    # cheapest ($1, answers 429) → middle ($2) serves; dear ($3, written first) is never tried.
    assert response.status == 200
    assert response.getheader("x-tollway-backend") == "middle"
    assert response.getheader("x-tollway-attempts") == "2"
    assert gateway.requests_at("MOCK") == []
