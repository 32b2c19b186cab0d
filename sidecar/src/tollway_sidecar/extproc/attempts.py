"""The call's attempts: every try in order, the backend that answered, and the failure to show instead.

One `CallAttempts` per call (`RequestState.attempts`), handed from the router filter to the upstream
filter and back; only its methods change it:

- `begin`: an attempt goes out (the upstream filter, once per try; the router filter's `direct`
  rewrite on a one-backend route);
- `give_up`: the upstream filter ended the call rather than wait past its deadline;
- `final`: Envoy's response attributes name the backend and attempt count that answered (a
  connection that failed fast never reached the upstream filter, so only Envoy knows for sure);
- `choose_replacement`: the failed attempt the client is answered with instead
  (`providers.attempts.most_useful`), if any.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.attempts import Attempt, error_rank, most_useful

__all__ = ["CallAttempts"]


@dataclass
class CallAttempts:
    log: list[Attempt] = field(default_factory=list)  # every attempt, in order
    backend: Backend | None = None  # the latest attempt's backend; the final one's once known
    count: int = 0  # Envoy's attempt count
    gave_up: bool = False  # the upstream filter ended the call rather than wait past the deadline
    replacement: Attempt | None = None  # the failed attempt answered in place of the final one

    @property
    def latest(self) -> Attempt | None:
        return self.log[-1] if self.log else None

    @property
    def reported(self) -> int:
        """The attempts the client is told about (`x-tollway-attempts`, metrics): at least one."""
        return max(self.count, 1)

    def begin(self, backend: Backend, number: int, started: float) -> Attempt:
        attempt = Attempt(
            number=number,
            backend=backend.name,
            provider=backend.provider,
            started=started,
            model=backend.model,
        )
        self.count, self.backend = number, backend
        self.log.append(attempt)
        return attempt

    def renumber_latest(self) -> int:
        """Give the latest attempt Envoy's count (Envoy retried on its own, unseen); how many were."""
        latest = self.latest
        if latest is None or self.count <= latest.number:
            return 0
        unseen, latest.number = self.count - latest.number, self.count
        return unseen

    def wait_until(self, backend: str) -> float:
        """Until when (monotonic) `backend` asked to be left alone; 0 when it did not."""
        return max(
            (a.retry_at for a in self.log if a.backend == backend and a.retry_at is not None), default=0.0
        )

    def give_up(self) -> None:
        self.gave_up = True

    def final(self, backend: Backend | None, count: int | None) -> None:
        """What Envoy says answered: its backend (None: not known) and attempt count."""
        if backend is not None:
            self.backend = backend
        if count is not None:
            # An attempt the upstream filter ended (rather than wait past the deadline) never went out.
            self.count = count - 1 if self.gave_up else count

    def choose_replacement(self, status: int) -> Attempt | None:
        """The failed attempt to answer with instead of the final answer (`status`), if any."""
        if status < 400 and not self.gave_up:
            return None
        best = most_useful(self.log)
        if best is None:
            return None
        final = self.latest
        if not self.gave_up:
            if final is not None and final.status == status:
                if best is final:
                    return None
                final_key = (error_rank(final.status), final.number)
            else:  # Envoy's own answer (refused, reset, timed out): a server-side failure, last
                final_key = (error_rank(500), 1 << 30)
            if (error_rank(best.status), best.number) >= final_key:
                return None
        self.replacement = best
        return best

    # A state rebuilt outside a call (the expiry record's, a test's) says outright what is known.

    def restore_log(self, log: Iterable[Attempt]) -> None:
        self.log = list(log)

    def restore_backend(self, backend: Backend | None) -> None:
        self.backend = backend
