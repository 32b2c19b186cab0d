"""Budget threshold alerts: a Warning Event on the Budget and a JSON POST to its alertWebhook.

Each threshold alerts once per period. What was sent is kept in the Budget's `status.alerts`
(`{period, thresholds}`), written right after delivery, so a restarted operator does not repeat it;
a new period starts with none sent. The webhook body is Slack-compatible (`text`) with the details
beside it; failed attempts (connection errors, timeouts, 429, 5xx) are retried with a doubling delay.
Deliveries run as their own tasks, one per Budget at a time, so a slow receiver holds up nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import aiohttp
import kopf

from tollway_operator.cluster import BUDGET, Resource
from tollway_operator.kube import Kube
from tollway_operator.resources import API_VERSION
from tollway_sidecar.config.models import Budget
from tollway_sidecar.contract.money import format_usd

log = logging.getLogger("tollway.operator.alerts")

EVENT_REASON: Final = "BudgetThreshold"
COMPONENT: Final = "tollway-operator"


def due_thresholds(budget: Budget, spent: Decimal, sent: Mapping[str, Any] | None, period: str) -> list[int]:
    """Thresholds crossed by `spent` and not yet alerted in `period` (`sent` is `status.alerts`)."""
    already: set[int] = set()
    if isinstance(sent, Mapping) and sent.get("period") == period:
        already = {t for t in sent.get("thresholds") or () if isinstance(t, int)}
    crossed = {t for t in budget.thresholds if spent * 100 >= budget.limit_usd * t}
    return sorted(crossed - already)


def alert_text(budget: Budget, threshold: int, spent: Decimal, period: str) -> str:
    return (
        f"Budget {budget.id} crossed {threshold}% of its limit: spent {format_usd(spent)} of "
        f"{format_usd(budget.limit_usd)} USD ({budget.period} period {period})"
    )


def webhook_body(budget: Budget, threshold: int, spent: Decimal, period: str) -> dict[str, Any]:
    return {
        "text": alert_text(budget, threshold, spent, period),
        "budget": budget.id,
        "threshold": threshold,
        "spent": format_usd(spent),
        "limit": format_usd(budget.limit_usd),
        "period": period,
    }


def event_body(resource: Resource, message: str, now: datetime, reason: str = EVENT_REASON) -> dict[str, Any]:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{resource.name}.", "namespace": resource.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": resource.kind,
            "name": resource.name,
            "namespace": resource.namespace,
            "uid": resource.uid,
        },
        "type": "Warning",
        "reason": reason,
        "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


@dataclass(frozen=True)
class WebhookPolicy:
    attempts: int = 4
    backoff: float = 1.0
    timeout: float = 5.0


async def post_webhook(session: aiohttp.ClientSession, url: str, body: Any, policy: WebhookPolicy) -> bool:
    """POST `body` as JSON; True on a 2xx. Not retried: other 4xx (the receiver refuses it)."""
    delay = policy.backoff
    for attempt in range(1, policy.attempts + 1):
        problem = ""
        try:
            timeout = aiohttp.ClientTimeout(total=policy.timeout)
            async with session.post(url, json=body, timeout=timeout) as response:
                if 200 <= response.status < 300:
                    return True
                problem = f"HTTP {response.status}"
                if response.status < 500 and response.status not in (408, 429):
                    log.warning("alert webhook %s refused the alert: %s", url, problem)
                    return False
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if attempt < policy.attempts:
            log.info("alert webhook %s failed (%s), attempt %d of %d", url, problem, attempt, policy.attempts)
            await asyncio.sleep(delay)  # in the delivery task, never in a handler
            delay *= 2
        else:
            log.warning("alert webhook %s failed after %d attempts: %s", url, attempt, problem)
    return False


class Alerter:
    def __init__(
        self, kube: Kube, policy: WebhookPolicy, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.kube = kube
        self.policy = policy
        self.clock = clock or (lambda: datetime.now(UTC))
        self._session: aiohttp.ClientSession | None = None
        self._deliveries: dict[str, asyncio.Task[None]] = {}  # by Budget uid
        self._sent: dict[str, dict[str, Any]] = {}  # by Budget uid: the `alerts` status last written
        self.delivered = 0

    def check(self, resource: Resource, budget: Budget, spent: Decimal, period: str) -> None:
        """Start a delivery for the thresholds now due (none while one runs for this Budget)."""
        if resource.uid in self._deliveries:
            return
        remembered = self._sent.get(resource.uid)
        sent = remembered or resource.status.get("alerts")
        due = due_thresholds(budget, spent, sent, period)
        if due:
            self._start(resource, self._deliver(resource, budget, due, spent, period, sent))
        elif remembered is not None and resource.status.get("alerts") != remembered:
            self._start(resource, self._record(resource, remembered))  # an earlier write failed

    def _start(self, resource: Resource, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._deliveries[resource.uid] = task
        task.add_done_callback(lambda _t: self._deliveries.pop(resource.uid, None))

    async def _deliver(
        self,
        resource: Resource,
        budget: Budget,
        due: list[int],
        spent: Decimal,
        period: str,
        sent: Mapping[str, Any] | None,
    ) -> None:
        for threshold in due:
            text = alert_text(budget, threshold, spent, period)
            log.warning("%s", text)
            try:
                await self.kube.create_event(resource.namespace, event_body(resource, text, self.clock()))
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                log.warning("no Event for the alert on Budget %s: %s", budget.id, exc)
            if budget.alert_webhook_url:
                await post_webhook(
                    self.session(),
                    budget.alert_webhook_url,
                    webhook_body(budget, threshold, spent, period),
                    self.policy,
                )
            self.delivered += 1
        before = []
        if isinstance(sent, Mapping) and sent.get("period") == period:
            before = [t for t in sent.get("thresholds") or () if isinstance(t, int)]
        alerts = {"period": period, "thresholds": sorted({*before, *due})}
        self._sent[resource.uid] = alerts  # this process never repeats them, even if the write fails
        await self._record(resource, alerts)

    async def _record(self, resource: Resource, alerts: dict[str, Any]) -> None:
        try:
            await self.kube.patch_status(BUDGET, resource.namespace, resource.name, {"alerts": alerts})
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            log.warning(
                "could not record the alerts sent for Budget %s/%s: %s",
                resource.namespace,
                resource.name,
                exc,
            )

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self, grace: float = 10.0) -> None:
        """Let running deliveries finish (and be recorded) for up to `grace` seconds, then cancel."""
        tasks = list(self._deliveries.values())
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
