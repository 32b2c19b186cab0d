"""Backend orders per route (the clusters Envoy gets) and the per-call choice among them."""

from __future__ import annotations

import itertools
import json
import random
from decimal import Decimal
from fractions import Fraction

import pytest

from tollway_sidecar.config.models import Backend, Fallback, GatewayConfig, Pricing, Route
from tollway_sidecar.pricing import resolve_price
from tollway_sidecar.routing.plan import cost_orders, plan_route, plans_for
from tollway_sidecar.routing.select import (
    DEFAULT_OUTPUT_TOKENS,
    choose,
    cost_ranking,
    estimate_tokens,
    sticky_point,
)
from tollway_sidecar.xds import clusters, route_configuration


def backend(name: str, *, weight: int = 1, input_price: str = "1", output_price: str = "1") -> Backend:
    return Backend(
        name=name,
        provider="openai-compatible",
        model="m",
        base_url="http://127.0.0.1:9000/v1",
        weight=weight,
        pricing=Pricing(input_per_million=Decimal(input_price), output_per_million=Decimal(output_price)),
    )


def route(strategy: str, *backends: Backend, sticky: bool = False, attempts: int | None = None) -> Route:
    return Route(
        id="default-chat",
        name="chat",
        namespace="default",
        model="chat",
        strategy=strategy,  # type: ignore[arg-type]
        backends=backends,
        fallback=Fallback(max_attempts=attempts or len(backends)),
        sticky_user=sticky,
    )


def prices_of(r: Route):  # type: ignore[no-untyped-def]
    return lambda i: resolve_price(r.backends[i])


# --- plans ---------------------------------------------------------------------------------------------


def test_priority_has_one_order_and_one_cluster() -> None:
    plan = plan_route(route("Priority", backend("a"), backend("b"), backend("c")))
    assert plan.orders == ((0, 1, 2),)
    assert plan.clusters == ("tollway_route_default-chat",)


def test_weighted_has_one_order_per_backend_with_weight_others_in_written_order() -> None:
    plan = plan_route(
        route("Weighted", backend("a", weight=0), backend("b", weight=3), backend("c", weight=1))
    )
    # Order 0 (the compiled order) is kept; a weight-0 backend is never first except there.
    assert plan.orders == ((0, 1, 2), (1, 0, 2), (2, 0, 1))
    assert plan.clusters[1:] == ("tollway_route_default-chat_1", "tollway_route_default-chat_2")


def test_cost_orders_change_only_where_prices_cross() -> None:
    # a: cheap input, dear output; b: the reverse; c: in between on both.
    rates = [(Fraction(1), Fraction(10)), (Fraction(5), Fraction(2)), (Fraction(3), Fraction(4))]
    orders = cost_orders(rates)
    assert orders[0] == (0, 2, 1)  # input only: a < c < b
    assert orders[-1] == (1, 2, 0)  # output only: b < c < a
    assert len(orders) <= 3 * 2 // 2 + 1
    # Brute force over many mixes: every cheapest-first order is among them.
    for step in range(101):
        t = Fraction(step, 100)
        costs = [(1 - t) * i + t * o for i, o in rates]
        assert tuple(sorted(range(3), key=lambda k: (costs[k], k))) in orders


def test_cost_plan_lets_every_backend_be_first() -> None:
    # c is never cheapest at base prices, yet still gets a cluster of its own.
    r = route(
        "Cost",
        backend("a", input_price="1", output_price="1"),
        backend("b", input_price="2", output_price="2"),
        backend("c", input_price="3", output_price="3"),
    )
    firsts = {order[0] for order in plan_route(r).orders}
    assert firsts == {0, 1, 2}


def test_plans_are_cached_per_config_and_xds_uses_them() -> None:
    r = route("Weighted", backend("a", weight=80), backend("b", weight=20))
    config = GatewayConfig(routes=(r,)).with_checksum()
    assert plans_for(config) is plans_for(config)
    names = [c["name"] for c in clusters(config)]
    assert names == list(plans_for(config)["default-chat"].clusters)
    # The cluster of order 1 lists b at priority 0 and a at priority 1.
    second = clusters(config)[1]["load_assignment"]["endpoints"]
    assert [
        (e["priority"], e["lb_endpoints"][0]["metadata"]["filter_metadata"]["tollway"]["backend"])
        for e in second
    ] == [
        (0, "b"),
        (1, "a"),
    ]
    action = route_configuration(config)["virtual_hosts"][0]["routes"][0]["route"]
    assert action["cluster_header"] == "x-tollway-cluster"


def test_more_attempts_than_backends_wrap_around() -> None:
    config = GatewayConfig(
        routes=(route("Priority", backend("a"), backend("b"), attempts=4),)
    ).with_checksum()
    policy = route_configuration(config)["virtual_hosts"][0]["routes"][0]["route"]["retry_policy"]
    assert policy["num_retries"] == 3


# --- choosing ------------------------------------------------------------------------------------------


def test_weighted_draw_follows_the_weights() -> None:
    r = route("Weighted", backend("a", weight=80), backend("b", weight=20))
    plan = plan_route(r)
    rng = random.Random(7)
    firsts = [choose(r, plan, random=rng.random).order[0] for _ in range(10_000)]
    share = firsts.count(0) / len(firsts)
    assert abs(share - 0.8) < 4 * (0.8 * 0.2 / len(firsts)) ** 0.5


def test_weighted_never_starts_with_a_zero_weight_backend() -> None:
    r = route("Weighted", backend("a", weight=0), backend("b", weight=1))
    plan = plan_route(r)
    draws = [x / 10 for x in range(10)]
    next_draw = iter(draws).__next__
    assert {choose(r, plan, random=next_draw).order[0] for _ in draws} == {1}
    assert choose(r, plan, random=lambda: 0.99).order == (1, 0)


def test_sticky_user_always_gets_the_same_backend_and_users_still_split() -> None:
    r = route("Weighted", backend("a", weight=50), backend("b", weight=50), sticky=True)
    plan = plan_route(r)
    rng = random.Random(1)
    for user in ("ana", "bo", "chen"):
        firsts = {choose(r, plan, random=rng.random, user=user).order[0] for _ in range(50)}
        assert len(firsts) == 1
        assert choose(r, plan, random=rng.random, user=user).reason == "sticky"
    users = [f"user-{i}" for i in range(2000)]
    share = sum(choose(r, plan, random=rng.random, user=u).order[0] == 0 for u in users) / len(users)
    assert abs(share - 0.5) < 4 * (0.25 / len(users)) ** 0.5
    # Without a user, a sticky rule draws at random.
    assert choose(r, plan, random=lambda: 0.9).reason == "weighted"


def test_sticky_point_is_stable_and_route_specific() -> None:
    assert sticky_point("r1", "ana") == sticky_point("r1", "ana")
    assert sticky_point("r1", "ana") != sticky_point("r2", "ana")
    assert 0 <= sticky_point("r1", "ana") < 1


def test_cost_picks_the_cheapest_for_this_calls_token_mix() -> None:
    r = route(
        "Cost",
        backend("input-cheap", input_price="1", output_price="10"),
        backend("output-cheap", input_price="5", output_price="2"),
    )
    plan = plan_route(r)
    prompt_heavy = choose(r, plan, random=random.random, tokens=(10_000, 10), prices=prices_of(r))
    answer_heavy = choose(r, plan, random=random.random, tokens=(10, 10_000), prices=prices_of(r))
    assert (prompt_heavy.order, answer_heavy.order) == ((0, 1), (1, 0))
    assert plan.clusters[prompt_heavy.index] != plan.clusters[answer_heavy.index]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_cost_choice_is_the_exact_ranking_with_linear_prices(n: int) -> None:
    rng = random.Random(n)
    for _ in range(20):
        backends = [
            backend(f"b{i}", input_price=str(rng.randint(1, 9)), output_price=str(rng.randint(1, 9)))
            for i in range(n)
        ]
        r = route("Cost", *backends)
        plan = plan_route(r)
        for tokens in itertools.product([1, 100, 10_000], repeat=2):
            ranking = cost_ranking(n, tokens, prices_of(r))
            assert choose(r, plan, random=rng.random, tokens=tokens, prices=prices_of(r)).order == ranking


def test_estimate_reads_max_tokens_or_assumes_a_default() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
    raw = len(json.dumps(body))
    tokens_in, tokens_out = estimate_tokens(body, raw)
    assert 100 <= tokens_in <= 130 and tokens_out == DEFAULT_OUTPUT_TOKENS
    assert estimate_tokens({**body, "max_tokens": 7}, raw)[1] == 7
    assert estimate_tokens({**body, "max_completion_tokens": 9, "max_tokens": 7}, raw)[1] == 9
    assert estimate_tokens({"model": "e", "input": "hello world"}, 40) == (10, 0)
