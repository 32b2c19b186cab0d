"""Publish the compiled GatewayConfig as one Secret, and only when its checksum changes.

The Secret's `config.json` is what the gateway's sidecar parses (`tollway_sidecar.config.loader`);
the checksum also sits in an annotation, so deciding whether to write needs no decoding. Updates
carry the resourceVersion read, so a concurrent writer turns into a retry, never a lost update.
"""

from __future__ import annotations

import base64
import logging
from typing import Any, Final

import kopf

from tollway_operator.kube import Kube
from tollway_operator.minting import MANAGED_BY
from tollway_sidecar.config.models import GatewayConfig

log = logging.getLogger("tollway.operator.publish")

CONFIG_KEY: Final = "config.json"
CHECKSUM_ANNOTATION: Final = "tollway.dev/config-checksum"


def config_secret(config: GatewayConfig, namespace: str, name: str) -> dict[str, Any]:
    payload = config.model_dump_json().encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, "app.kubernetes.io/component": "gateway-config"},
            "annotations": {CHECKSUM_ANNOTATION: config.checksum},
        },
        "data": {CONFIG_KEY: base64.b64encode(payload).decode()},
    }


def published_checksum(secret: dict[str, Any] | None) -> str | None:
    if secret is None:
        return None
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(CHECKSUM_ANNOTATION)
    return value if isinstance(value, str) else None


class Publisher:
    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.published: str | None = None  # the checksum known to be in the Secret
        self.writes = 0

    def forget(self) -> None:
        """The Secret changed behind our back (edited, deleted): look again at the next publish."""
        self.published = None

    async def publish(self, config: GatewayConfig) -> bool:
        """Make the Secret hold `config`; True when it was written. Raises Kopf errors."""
        if self.published == config.checksum:
            return False
        current = await self.kube.get_secret(self.namespace, self.name)
        if published_checksum(current) == config.checksum and _payload_of(current) is not None:
            self.published = config.checksum
            return False
        body = config_secret(config, self.namespace, self.name)
        if current is None:
            created = await self.kube.create_secret(self.namespace, body)
            if created is None:  # someone created it in between: read it again next time
                raise kopf.TemporaryError(f"Secret {self.namespace}/{self.name} appeared meanwhile", delay=0)
        else:
            body["metadata"]["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
            await self.kube.replace_secret(self.namespace, body)
        self.published = config.checksum
        self.writes += 1
        log.info(
            "published GatewayConfig %s to Secret %s/%s: %d keys, %d budgets, %d routes",
            config.version,
            self.namespace,
            self.name,
            len(config.keys),
            len(config.budgets),
            len(config.routes),
        )
        return True


def _payload_of(secret: dict[str, Any] | None) -> str | None:
    data = (secret or {}).get("data") or {}
    value = data.get(CONFIG_KEY)
    return value if isinstance(value, str) else None
