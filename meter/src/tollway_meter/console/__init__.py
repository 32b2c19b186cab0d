"""The read-only web console over the ledger: overview, requests, sessions, users and properties."""

from tollway_meter.console.pages import console_app, mount

__all__ = ["console_app", "mount"]
