"""Google service-account credentials: the source of a Vertex backend's access tokens (`refresh`).

A Vertex backend's `credential` is the service account's JSON key, from its Secret. google-auth signs
a JWT assertion with the key and trades it at the key's `token_uri` (OAuth2 jwt-bearer grant) for an
access token with the `cloud-platform` scope. The exchange is blocking: `providers.refresh` runs it
in a worker thread, never on the event loop.
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Final

import urllib3
from google.auth.transport.urllib3 import Request
from google.oauth2 import service_account

from tollway_sidecar.config.models import Backend
from tollway_sidecar.providers.refresh import Fetch

__all__ = ["SCOPE", "NotAServiceAccountKey", "service_account_source"]

SCOPE: Final = "https://www.googleapis.com/auth/cloud-platform"
_TIMEOUT_S: Final = 30.0


class NotAServiceAccountKey(ValueError):
    """The backend's credential is not a service-account JSON key (the message never quotes it)."""


def service_account_source(backend: Backend) -> Fetch:
    """A blocking fetch of `(access token, expires at)` for the backend's service-account key."""
    try:
        info = json.loads(backend.credential or "")
        credentials = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, TypeError) as exc:
        # The key's own text stays out of the message: it is the secret.
        raise NotAServiceAccountKey(
            f"the credential is not a service-account JSON key ({type(exc).__name__})"
        ) from None
    request = Request(urllib3.PoolManager(timeout=_TIMEOUT_S))  # type: ignore[no-untyped-call]

    def fetch() -> tuple[str, float]:
        credentials.refresh(request)
        token, expiry = credentials.token, credentials.expiry
        if not token or expiry is None:
            raise RuntimeError("the token endpoint answered without an access token or expiry")
        # google-auth keeps `expiry` as a naive UTC datetime.
        return str(token), expiry.replace(tzinfo=UTC).timestamp()

    return fetch
