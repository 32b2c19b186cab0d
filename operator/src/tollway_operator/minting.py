"""Keys for VirtualKeys without `secretRef`: minted once into Secret `tollway-key-<name>`, never again.

The Secret is created, never updated: if one of that name exists (minted before a restart, or made
by hand), it is used as it is. It is owned by the VirtualKey, so Kubernetes' garbage collector
deletes it with the VirtualKey. The compiler reads the same Secret name and data key.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any, Final

from tollway_operator.cluster import Resource, minted_secret_name
from tollway_operator.compile import MINTED_SECRET_KEY
from tollway_operator.resources import API_VERSION

KEY_PREFIX: Final = "tw-"
KEY_BYTES: Final = 32  # of randomness, before URL-safe base64
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "tollway-operator"}


def new_key() -> str:
    """`tw-` and 32 random bytes, URL-safe base64 without padding (43 characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def minted_secret(virtualkey: Resource, key: str | None = None) -> dict[str, Any]:
    value = key if key is not None else new_key()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": minted_secret_name(virtualkey.name),
            "namespace": virtualkey.namespace,
            "labels": {**MANAGED_BY, "tollway.dev/virtualkey": virtualkey.name},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": virtualkey.kind,
                    "name": virtualkey.name,
                    "uid": virtualkey.uid,
                    "controller": True,
                }
            ],
        },
        "data": {MINTED_SECRET_KEY: base64.b64encode(value.encode()).decode()},
    }
