"""CostReports in a cluster: listed, their status written and their Secrets read with the meter's
ServiceAccount, through the console's API-server client (`KubeClient`, aiohttp: no Kubernetes
client library in the meter's image). The `kubernetesEvent` channel is an Event on the CostReport.

RBAC the meter needs (deploy/rbac/meter-reports.yaml): `list` costreports.tollway.dev and
budgets.tollway.dev, `patch` costreports/status, `create` events, and `get` secrets in the
namespaces that have CostReports.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollway_meter.console.access import KubeClient, ReviewFailed
from tollway_meter.costreport import API_VERSION, KIND, BadCostReport, CostReportResource, parse_manifest
from tollway_meter.delivery import DeliveryError, summary
from tollway_meter.report import CostReport

log = logging.getLogger("tollway.meter.reports")
GROUP_PATH = "/apis/tollway.dev/v1alpha1"


class ClusterCostReports:
    """Every CostReport in the given namespaces (none given: in all of them)."""

    def __init__(self, client: KubeClient, namespaces: Sequence[str] = ()) -> None:
        self.client = client
        self.namespaces = tuple(namespaces)

    async def list(self) -> list[CostReportResource]:
        paths = [f"{GROUP_PATH}/namespaces/{ns}/costreports" for ns in self.namespaces] or [
            f"{GROUP_PATH}/costreports"
        ]
        found: list[CostReportResource] = []
        for path in paths:
            listing = await self.client.call("GET", path)
            for item in listing.get("items") or []:
                item = {"apiVersion": API_VERSION, "kind": KIND, **item}
                try:
                    report = parse_manifest("the API server", item)
                except BadCostReport as exc:
                    # The API server validated it; a spec the scheduler still refuses is skipped, not fatal.
                    log.warning("%s", exc)
                    continue
                if report is not None:
                    found.append(report)
        return found

    async def write_status(self, resource: CostReportResource, status: dict[str, Any]) -> None:
        path = f"{GROUP_PATH}/namespaces/{resource.namespace}/costreports/{resource.name}/status"
        await self.client.call("PATCH", path, {"status": status}, content_type="application/merge-patch+json")


class ClusterSecrets:
    """A key of a Secret in the CostReport's namespace."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def read(self, namespace: str, name: str, key: str) -> str:
        try:
            secret = await self.client.call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ReviewFailed as exc:
            raise BadCostReport(f"Secret {namespace}/{name}: {exc}") from None
        value = (secret.get("data") or {}).get(key)
        if value is None:
            raise BadCostReport(f"Secret {namespace}/{name}: no key {key!r}")
        try:
            return base64.b64decode(value).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            raise BadCostReport(f"Secret {namespace}/{name}: key {key!r} is not UTF-8 text") from None


@dataclass(frozen=True)
class KubernetesEventChannel:
    """A Normal Event on the CostReport, named after the delivery id: a second send of the same
    delivery finds it already there (409) and counts as sent, so this channel is exactly once."""

    client: KubeClient
    namespace: str
    name: str
    uid: str
    kind: str = "kubernetesEvent"

    async def send(self, report: CostReport, delivery_id: str, title: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{self.name}.{delivery_id}", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
            },
            "reason": "CostReportSent",
            "message": summary(report, title)[:1024],
            "type": "Normal",
            "source": {"component": "tollway-meter"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.call("POST", f"/api/v1/namespaces/{self.namespace}/events", body)
        except ReviewFailed as exc:
            if "HTTP 409" in str(exc):  # this delivery's Event exists: an earlier attempt made it
                return
            raise DeliveryError(f"kubernetes event: {exc}") from None
