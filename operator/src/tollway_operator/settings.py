"""Operator settings, read from TOLLWAY_OPERATOR_* environment variables once, at start-up."""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tollway_operator.resources import parse_duration_ms


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_OPERATOR_", extra="ignore", populate_by_name=True)

    config_secret: str = "tollway-system/tollway-gateway-config"
    """`namespace/name` of the Secret the compiled GatewayConfig is published to (key `config.json`);
    the gateway's sidecars watch it."""
    namespaces: Annotated[list[str], NoDecode] = []
    """Namespaces to serve, comma-separated; empty means every namespace (cluster-wide)."""
    spend_interval: float = 15.0
    """Seconds (or a duration such as "15s") between reads of spend from Redis into status."""
    resync_seconds: float = Field(default=300.0, gt=0)
    """A full compile-and-publish pass at least this often, even when nothing changed."""
    retry_seconds: float = Field(default=2.0, gt=0)
    """First delay before a failed pass is retried (doubling up to 60 s); any change retries at once."""
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TOLLWAY_OPERATOR_REDIS_URL", "TOLLWAY_REDIS_URL")
    )
    """The quota store the gateway writes (also read from TOLLWAY_REDIS_URL, the sidecar's name).
    Without it, status shows no spend and no budget alert fires."""
    redis_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TOLLWAY_OPERATOR_REDIS_PASSWORD", "TOLLWAY_REDIS_PASSWORD"),
    )
    """The Redis password when it is kept apart from the URL (the chart reads it from a Secret)."""
    redis_timeout_seconds: float = Field(default=2.0, gt=0)
    mint_keys: bool = True
    """Mint a key into Secret `tollway-key-<name>` for each VirtualKey without `secretRef`."""
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_attempts: int = Field(default=4, ge=1)
    webhook_backoff_seconds: float = Field(default=1.0, ge=0)
    """Delay before the second webhook attempt; it doubles for each further attempt."""
    metrics_port: int | None = 8082
    """Prometheus metrics on http://0.0.0.0:<port>/metrics; unset (empty) to serve none."""
    health_port: int | None = 8081
    """Kopf's liveness probe on http://0.0.0.0:<port>/healthz; unset (empty) to serve none."""
    log_level: str = "INFO"

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("config_secret")
    @classmethod
    def _namespace_and_name(cls, value: str) -> str:
        namespace, _, name = value.partition("/")
        if not namespace or not name or "/" in name:
            raise ValueError(f"expected namespace/name, got {value!r}")
        return value

    @field_validator("spend_interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() and not value.strip().replace(".", "", 1).isdigit():
            return parse_duration_ms(value) / 1000
        return value

    @field_validator("spend_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("metrics_port", "health_port", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # An empty variable turns that server off, as documented, rather than failing to parse.
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def config_secret_id(self) -> tuple[str, str]:
        namespace, _, name = self.config_secret.partition("/")
        return namespace, name

    @property
    def config_secret_namespace(self) -> str:
        return self.config_secret_id[0]

    @property
    def config_secret_name(self) -> str:
        return self.config_secret_id[1]
