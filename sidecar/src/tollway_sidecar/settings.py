"""Process settings for the sidecar, read from TOLLWAY_* environment variables at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class SidecarSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_", extra="ignore")

    config_file: Path = Path("/etc/tollway/config/config.json")
    """The compiled GatewayConfig (JSON). Reloaded when it changes; a bad one keeps the last good."""
    extproc_address: str = "unix:/var/run/tollway/extproc.sock"
    """Where the ext_proc gRPC server listens: `unix:/path` or `host:port`."""
    admin_host: str = "127.0.0.1"
    admin_port: int = 9090
    xds_dir: Path = Path("/var/run/tollway/xds")
    """Where the sidecar writes Envoy's cds.json and rds.json."""
    max_request_bytes: int = 10 * 1024 * 1024
    config_poll_seconds: float = 1.0
    log_level: str = "INFO"
