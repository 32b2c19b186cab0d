"""What FailOpen still enforces while the quota store cannot be reached.

For each checked counter, `BlindCounts` keeps the value the store last reported (a reservation's
reply: the value before the call plus what the call reserved) and what this process has admitted
since without the store (a call's reservation while it runs, then what it used), until the store
has applied the batch that carries it. A FailOpen call that those figures put over a limit is
refused as the store would refuse it, so an outage cannot let one process spend a budget without
end. What other gateways (or workers) admit blind is unknown here: while the store is away a limit
can be overspent by at most what the other processes admit. A counter this process never read (a
new window, or a process started during the outage) starts from zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from tollway_sidecar.quota.plan import Plan
from tollway_sidecar.quota.store import BatchLine

__all__ = ["BlindCounts"]

# Counters remembered; past it, expired ones go, then the least recently reported.
MAX_COUNTERS: Final = 100_000

Counter = tuple[str, str]  # (counter key, field)


class BlindCounts:
    def __init__(self, max_counters: int = MAX_COUNTERS) -> None:
        self.max_counters = max_counters
        self._seen: dict[Counter, tuple[int, int]] = {}  # -> (value, drop_at_ms; 0: never)
        self._blind: dict[Counter, int] = {}

    def saw(self, plan: Plan, used: Sequence[int]) -> None:
        """The store admitted `plan`; `used`: each line's value before it."""
        for line, before in zip(plan.lines, used, strict=True):
            if line.limit < 0:
                continue
            counter = (line.key, line.used_field)
            self._seen.pop(counter, None)  # re-inserted last: the most recently reported
            self._seen[counter] = (before + line.amount, plan.now_ms + line.ttl_ms if line.ttl_ms else 0)
        if len(self._seen) > self.max_counters:
            self._prune(plan.now_ms)

    def used(self, plan: Plan) -> list[int]:
        """Each line's value as far as this process knows: last reported plus admitted blind."""
        out = []
        for line in plan.lines:
            counter = (line.key, line.used_field)
            value, drop_at = self._seen.get(counter, (0, 0))
            if drop_at and drop_at <= plan.now_ms:
                value = 0
            out.append(value + self._blind.get(counter, 0))
        return out

    def reserve(self, plan: Plan) -> None:
        """A FailOpen admission: its lines count while the call runs."""
        for line in plan.lines:
            self._add((line.key, line.used_field), line.amount)

    def settled(self, plan: Plan, amounts: Mapping[Counter, int]) -> None:
        """A blind call's final `amounts` (what the journal will send) replace its reservation."""
        for counter, amount in amounts.items():
            self._add(counter, amount)
        for line in plan.lines:
            self._add((line.key, line.used_field), -line.amount)

    def applied(self, lines: Iterable[BatchLine]) -> None:
        """The store added `lines`: they now count in the store's value, not as blind."""
        for line in lines:
            counter = (line.key, line.field)
            self._add(counter, -line.amount)
            if counter in self._seen:
                value, drop_at = self._seen[counter]
                self._seen[counter] = (value + line.amount, drop_at)

    def dropped(self, key: str, field: str, amount: int) -> None:
        """Counts of a window that ended before the store answered: never sent, no longer enforced."""
        self._add((key, field), -amount)

    def _add(self, counter: Counter, amount: int) -> None:
        value = self._blind.get(counter, 0) + amount
        if value:
            self._blind[counter] = value
        else:
            self._blind.pop(counter, None)

    def _prune(self, now_ms: int) -> None:
        self._seen = {c: v for c, v in self._seen.items() if not v[1] or v[1] > now_ms}
        extra = len(self._seen) - self.max_counters // 2
        if extra > 0:  # still full of live counters: keep the most recently reported half
            for counter in list(self._seen)[:extra]:
                del self._seen[counter]

    def __len__(self) -> int:
        return len(self._seen)
