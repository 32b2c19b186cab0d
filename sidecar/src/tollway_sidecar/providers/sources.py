"""The credential sources this sidecar can refresh (`providers.refresh`), by `Backend.credential_source`."""

from __future__ import annotations

from tollway_sidecar.providers import aws_web_identity
from tollway_sidecar.providers.google_auth import service_account_source
from tollway_sidecar.providers.refresh import SourceFactory

__all__ = ["credential_sources"]


def credential_sources() -> dict[str, SourceFactory]:
    """Each source kind's factory: it turns a backend into a blocking `fetch` of its credential."""
    return {
        "google-service-account": service_account_source,
        aws_web_identity.SOURCE: aws_web_identity.fetch_for,
    }
