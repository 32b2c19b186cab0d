"""Choosing one call's backend order among the orders its route's plan prepared. Pure.

- `Priority`: always the compiled order.
- `Weighted`: the first backend is drawn with probability weight / total weight; the others follow
  in the order written. With `stickyUser`, the draw is a hash of (route, end user) instead of a
  random number, so one user always lands on the same backend while the weights stay as they are.
- `Cost`: every backend's price for this call's estimated tokens at its base per-token input and
  output prices (declared, or the catalogue's first tier), cheapest first, ties in the order
  written; the plan holds a cluster for every such order. (`cost_ranking` prices through the
  catalogue exactly, tiers included, for plans without base rates.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from tollway_sidecar.config.models import Route
from tollway_sidecar.pricing import BackendPrice
from tollway_sidecar.providers.usage import TokenUsage
from tollway_sidecar.routing.plan import Order, RoutePlan

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "Choice",
    "choose",
    "cost_ranking",
    "estimate_tokens",
    "rate_ranking",
    "sticky_point",
]

# Output tokens assumed for ranking by cost when the call sets no max_tokens.
DEFAULT_OUTPUT_TOKENS: Final = 512
_BYTES_PER_TOKEN: Final = 4


@dataclass(frozen=True, slots=True)
class Choice:
    index: int  # into plan.orders / plan.clusters
    order: Order
    reason: str  # "priority", "weighted", "sticky", "cost"


def estimate_tokens(body: dict[str, Any], raw_length: int) -> tuple[int, int]:
    """A cheap estimate of a call's (input, output) tokens, for ranking backends by price.

    Input: the request's text at about four bytes per token (the JSON around it counts too; the
    same over-estimate applies to every backend, so the ranking is what matters). Output: the call's
    `max_completion_tokens` / `max_tokens` (the Responses API's `max_output_tokens`), else
    `DEFAULT_OUTPUT_TOKENS`; none for embeddings.
    """
    responses = "max_output_tokens" in body or "instructions" in body
    if "input" in body and "messages" not in body and not responses:
        return max(1, raw_length // _BYTES_PER_TOKEN), 0
    messages = body.get("messages")
    text_length = len(json.dumps(messages, ensure_ascii=False)) if messages is not None else raw_length
    system = body.get("system")
    if system is not None:
        text_length += len(json.dumps(system, ensure_ascii=False))
    output = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    if not isinstance(output, int) or isinstance(output, bool) or output <= 0:
        output = DEFAULT_OUTPUT_TOKENS
    return max(1, text_length // _BYTES_PER_TOKEN), output


def sticky_point(route_id: str, user: str) -> float:
    """A stable number in [0, 1) for (route, user)."""
    digest = hashlib.sha256(f"{route_id}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _weighted_first(route: Route, point: float) -> int:
    total = sum(backend.weight for backend in route.backends)
    target = point * total
    running = 0
    last = 0
    for index, backend in enumerate(route.backends):
        if backend.weight <= 0:
            continue
        running += backend.weight
        last = index
        if target < running:
            return index
    return last


def choose(
    route: Route,
    plan: RoutePlan,
    *,
    random: Callable[[], float],
    user: str | None = None,
    tokens: tuple[int, int] = (0, 0),
    prices: Callable[[int], BackendPrice | None] | None = None,
) -> Choice:
    """This call's order. `prices(i)` gives backend i's price (Cost); `random()` is in [0, 1)."""
    if route.strategy == "Weighted" and len(plan.orders) > 1:
        sticky = route.sticky_user and user is not None
        first = _weighted_first(route, sticky_point(route.id, user) if sticky and user else random())
        for index, order in enumerate(plan.orders):
            if order[0] == first:
                return Choice(index, order, "sticky" if sticky else "weighted")
        return Choice(0, plan.orders[0], "weighted")
    if route.strategy == "Cost" and len(plan.orders) > 1:
        rates = [rate for rate in plan.rates if rate is not None]
        if len(rates) == len(route.backends):
            # Base per-token prices, resolved once per config: microseconds, where pricing each
            # backend through the catalogue costs ~0.2 ms apiece.
            ranking = rate_ranking(rates, tokens)
        elif prices is not None:
            ranking = cost_ranking(len(route.backends), tokens, prices)
        else:
            return Choice(0, plan.orders[0], "cost")
        index = plan.closest(ranking)
        return Choice(index, plan.orders[index], "cost")
    return Choice(0, plan.orders[0], "priority" if route.strategy == "Priority" else route.strategy.lower())


def cost_ranking(n: int, tokens: tuple[int, int], prices: Callable[[int], BackendPrice | None]) -> Order:
    """Backend indices by this call's exact price, cheapest first; unpriced last; ties as written."""
    usage = TokenUsage(input_tokens=max(0, tokens[0]), output_tokens=max(0, tokens[1]))
    costs: list[tuple[int, Decimal, int]] = []
    for index in range(n):
        price = prices(index)
        if price is None:
            costs.append((1, Decimal(0), index))
        else:
            costs.append((0, price.cost(usage), index))
    return tuple(index for _unpriced, _cost, index in sorted(costs))


def rate_ranking(rates: list[tuple[Decimal, Decimal]], tokens: tuple[int, int]) -> Order:
    """Backend indices by input_tokens * input_rate + output_tokens * output_rate; ties as written."""
    tokens_in, tokens_out = max(0, tokens[0]), max(0, tokens[1])
    costs = [tokens_in * rate_in + tokens_out * rate_out for rate_in, rate_out in rates]
    return tuple(sorted(range(len(rates)), key=lambda k: (costs[k], k)))
