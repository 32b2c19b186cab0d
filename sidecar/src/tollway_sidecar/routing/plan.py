"""The backend orders Envoy knows for each route: one cluster per order.

Envoy's fallback runs on fixed priorities: a cluster lists the route's backends at priority 0, 1, 2…
and every retry moves to the next priority. A per-call order is therefore a choice among clusters
prepared in advance, one per order this route may need:

- `Priority`: one order, the compiled one (by `priority`, ties in the order written).
- `Weighted`: one order per backend with a weight above 0, that backend first and the others after
  it in the order written.
- `Cost`: every order that is cheapest-first for some mix of input and output tokens. With linear
  prices, a backend's cost for a call with a fraction `t` of output tokens is
  `(1 - t) * input_price + t * output_price`, a line in `t`; two lines cross at most once, so the
  orders over `t` in [0, 1] change only at the pairwise crossings: at most n(n-1)/2 + 1 orders for
  n backends. Each backend also gets an order that starts with it (a tiered catalogue price can make
  a backend cheapest where its base prices say otherwise), so a call can always start where its own
  exact price says it should.

Pure and deterministic: the sidecar computes the plans once per config version, for the xDS files
and for the request path alike (`plans_for` caches by config checksum), so both agree.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from tollway_sidecar.config.models import GatewayConfig, Route
from tollway_sidecar.pricing import resolve_price
from tollway_sidecar.providers.usage import TokenUsage

__all__ = [
    "RoutePlan",
    "cluster_name",
    "cost_orders",
    "pinned_cluster",
    "plan_route",
    "plans_for",
    "rewritten_by_router",
]

Order = tuple[int, ...]  # indices into Route.backends, first tried first

# Token counts at which a backend's base input and output prices are read (small enough to stay in
# the first tier of a tiered catalogue price).
_RATE_PROBE_TOKENS = 1000


def rewritten_by_router(route: Route) -> bool:
    """A route with one backend: every attempt goes to the same backend, with the same rewrite.

    The router filter then rewrites the call itself (path, credentials, body) in its request-body
    reply, and the route's cluster runs no upstream filter: two ext_proc messages and one gRPC
    stream fewer per call. Envoy retries such a route on its own, honouring `retry-after`.
    """
    return len(route.backends) == 1


def cluster_name(route: Route, index: int = 0) -> str:
    """The Envoy cluster of a route's `index`-th order; order 0 is the route's compiled order."""
    base = f"tollway_route_{route.id}"
    return base if index == 0 else f"{base}_{index}"


def pinned_cluster(route: Route, index: int) -> str:
    """The cluster that reaches only the route's `index`-th backend, for a call that no other
    backend can answer (one naming a response that backend stored). A one-backend route's own
    cluster is one already; on a longer route the cluster has no upstream filter (the router
    filter rewrites the call, as for a one-backend route)."""
    return cluster_name(route) if rewritten_by_router(route) else f"tollway_route_{route.id}_pin_{index}"


@dataclass(frozen=True, slots=True)
class RoutePlan:
    route_id: str
    orders: tuple[Order, ...]  # orders[0] is the compiled order
    clusters: tuple[str, ...]  # the Envoy cluster of each order
    # Cost only: (input, output) USD per token of each backend at its base prices; None if unpriced.
    rates: tuple[tuple[Decimal, Decimal] | None, ...] = ()

    def index_of(self, order: Order) -> int | None:
        try:
            return self.orders.index(order)
        except ValueError:
            return None

    def closest(self, wanted: Order) -> int:
        """The index of the prepared order that agrees longest with `wanted` from its start."""
        best, best_length = 0, -1
        for index, order in enumerate(self.orders):
            length = 0
            for got, want in zip(order, wanted, strict=False):
                if got != want:
                    break
                length += 1
            if length > best_length:
                best, best_length = index, length
        return best


def base_rates(route: Route) -> tuple[tuple[Decimal, Decimal] | None, ...]:
    """USD per input token and per output token of each backend, from its declared or catalogue price."""
    rates: list[tuple[Decimal, Decimal] | None] = []
    for backend in route.backends:
        price = resolve_price(backend)
        if price is None:
            rates.append(None)
            continue
        probe = Decimal(_RATE_PROBE_TOKENS)
        rates.append(
            (
                price.cost(TokenUsage(_RATE_PROBE_TOKENS, 0)) / probe,
                price.cost(TokenUsage(0, _RATE_PROBE_TOKENS)) / probe,
            )
        )
    return tuple(rates)


def _rank(rates: list[tuple[Fraction, Fraction]], t: Fraction) -> Order:
    costs = [(1 - t) * i + t * o for i, o in rates]
    return tuple(sorted(range(len(rates)), key=lambda k: (costs[k], k)))


def cost_orders(rates: list[tuple[Fraction, Fraction]]) -> list[Order]:
    """Every cheapest-first order over output fractions t in [0, 1], cheapest-at-t=0 first.

    Ties keep the order written. Exact (Fractions): no two nearly equal prices are confused.
    """
    points = {Fraction(0), Fraction(1)}
    for a in range(len(rates)):
        for b in range(a + 1, len(rates)):
            (ia, oa), (ib, ob) = rates[a], rates[b]
            slope = (oa - ia) - (ob - ib)
            if slope != 0:
                t = (ib - ia) / slope
                if 0 < t < 1:
                    points.add(t)
    ordered = sorted(points)
    samples = list(ordered)
    samples += [(x + y) / 2 for x, y in itertools.pairwise(ordered)]
    orders: list[Order] = []
    for t in sorted(samples):
        order = _rank(rates, t)
        if order not in orders:
            orders.append(order)
    return orders


def _with_every_first(orders: list[Order], n: int, rest_of: dict[int, Order]) -> list[Order]:
    firsts = {order[0] for order in orders}
    for k in range(n):
        if k not in firsts:
            orders.append((k, *rest_of[k]))
    return orders


def plan_route(route: Route) -> RoutePlan:
    n = len(route.backends)
    compiled: Order = tuple(range(n))
    orders: list[Order] = [compiled]
    rates: tuple[tuple[Decimal, Decimal] | None, ...] = ()
    if route.strategy == "Weighted":
        for k, backend in enumerate(route.backends):
            if backend.weight > 0:
                order = (k, *(j for j in range(n) if j != k))
                if order not in orders:
                    orders.append(order)
    elif route.strategy == "Cost" and n > 1:
        rates = base_rates(route)
        if all(rate is not None for rate in rates):
            exact = [(Fraction(r[0]), Fraction(r[1])) for r in rates if r is not None]
            by_cost = cost_orders(exact)
            # The compiled order comes first only as cluster 0's name holder; the cheapest-first
            # orders follow, then an order for every backend that is never cheapest at base prices.
            mid = _rank(exact, Fraction(1, 2))
            rest_of = {k: tuple(j for j in mid if j != k) for k in range(n)}
            for order in _with_every_first(by_cost, n, rest_of):
                if order not in orders:
                    orders.append(order)
    return RoutePlan(
        route_id=route.id,
        orders=tuple(orders),
        clusters=tuple(cluster_name(route, i) for i in range(len(orders))),
        rates=rates,
    )


_cache_lock = threading.Lock()
_cache: dict[str, dict[str, RoutePlan]] = {}


def plans_for(config: GatewayConfig) -> dict[str, RoutePlan]:
    """The plan of every route (by route id), computed once per config checksum."""
    key = config.checksum or config.compute_checksum()
    with _cache_lock:
        plans = _cache.get(key)
        if plans is None:
            plans = {route.id: plan_route(route) for route in config.routes}
            if len(_cache) >= 4:
                _cache.pop(next(iter(_cache)))
            _cache[key] = plans
        return plans
