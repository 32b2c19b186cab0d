"""Process settings for the sidecar, read from TOLLWAY_* environment variables at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollway_sidecar.cache.memory import DEFAULT_MAX_BYTES as CACHE_MEMORY_MAX_BYTES
from tollway_sidecar.contract.usage_event import USAGE_STREAM_MAXLEN
from tollway_sidecar.limits import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES


class SidecarSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_", extra="ignore")

    config_file: Path = Path("/etc/tollway/config/config.json")
    """The compiled GatewayConfig (JSON). Reloaded when it changes; a bad one keeps the last good."""
    config_secret: str | None = None
    """`namespace/name` of the GatewayConfig Secret to watch through the Kubernetes API (seconds
    after a change); `config_file` is then the fallback while the API cannot be reached."""
    kubeconfig: Path | None = None
    """For `config_secret` outside a Pod (tests, local runs); in a Pod the service account is used."""
    extproc_address: str = "unix:/var/run/tollway/extproc.sock"
    """Where the ext_proc gRPC server listens: `unix:/path` or `host:port`."""
    admin_host: str = "127.0.0.1"
    admin_port: int = 9090
    xds_dir: Path = Path("/var/run/tollway/xds")
    """Where the sidecar writes Envoy's cds.json and rds.json."""
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, gt=0)
    """Largest request body served; above it, 413 `request_too_large`. Envoy's bootstrap
    (`tollway envoy-bootstrap --max-request-bytes`, the chart's `gateway.maxRequestBytes`) must say
    the same."""
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, gt=0)
    """Largest non-streamed answer passed to the client (it is buffered to be priced); above it,
    502 `response_too_large`. Streamed answers are not limited. Envoy's bootstrap
    (`--max-response-bytes`, the chart's `gateway.maxResponseBytes`) must say the same."""
    replica: str = ""
    """This replica's name, the usage events' `source` (the chart sets the Pod's name); empty: the
    host name."""
    workers: int = Field(default=1, ge=1, le=64)
    """Sidecar worker processes (one core each), serving Envoy's ext_proc streams together; more
    than one needs `redis_url` (quotas shared between them). Envoy's bootstrap
    (`tollway envoy-bootstrap --workers`, the chart's `gateway.sidecar.workers`) must say the same."""
    metrics_dir: Path | None = None
    """With several workers: the folder of their metrics files (prometheus_client's multiprocess
    mode), emptied at start; unset: a new temporary folder."""
    config_poll_seconds: float = 1.0
    log_level: str = "INFO"
    # Quotas
    redis_url: str | None = None
    """Redis for quotas and budgets, shared by every replica (`redis://[:password@]host:port/db`,
    `rediss://` for TLS, `unix:///path`; `redis+cluster://host:port[,host:port...]` for a Redis
    Cluster). Unset: an in-memory store (one process only)."""
    redis_password: SecretStr | None = None
    """The Redis password, when it is kept apart from the URL (the chart reads it from a Secret)."""
    redis_timeout_ms: int = Field(default=1000, gt=0, lt=2000)
    """Longest wait for one Redis operation (connect and pool wait included); must stay well under
    Envoy's ext_proc message timeout (2 s), so a slow Redis becomes the failure policy, never a hang.
    It covers the sidecar's own event-loop lag too: under a burst on a busy node, 200 ms was seen to
    pass with Redis healthy, which turned local saturation into 'quota store unreachable' answers. An
    unreachable Redis still fails at once (connection refused); only a hung one waits this long."""
    usage_stream_maxlen: int = Field(default=USAGE_STREAM_MAXLEN, gt=0)
    """About how many usage events the Redis stream keeps (`XADD MAXLEN ~`): the bound on Redis
    memory (~1 KB an event) while no meter reads it. A meter further behind than this loses the
    oldest unread events: size it to the lag you must survive (events per second times seconds)."""
    quota_default_max_tokens: int = Field(default=4096, gt=0)
    """Output tokens reserved for a chat call that sets neither max_tokens nor max_completion_tokens."""
    quota_reservation_ttl_seconds: float = Field(default=600, gt=0)
    """An unsettled reservation (the sidecar died mid-call) expires after this long, charged at its
    estimate. A call still running then is charged its estimate too."""
    quota_failure_policy: Literal["FailClosed", "FailOpen"] = "FailClosed"
    """When Redis is unreachable, for keys with limits but no Block budget (budgets carry their own)."""
    cache_memory_max_bytes: int = Field(default=CACHE_MEMORY_MAX_BYTES, gt=0)
    """Without Redis: the bound of the in-memory response cache (its stored entries' bytes; the
    least recently used go first). With Redis, Redis's `maxmemory` bounds it."""
    capture_content: bool = False
    """Record prompts and completions (redacted) on spans and in the usage events, for every route
    that does not set its own; off by default."""
    redact_patterns: list[str] = []
    """Extra regular expressions (a JSON list) whose matches are redacted from captured content."""

    @model_validator(mode="after")
    def _answer_limit_covers_requests(self) -> SidecarSettings:
        # Envoy buffers the request and the answer of a call under one limit (the larger one).
        if self.max_response_bytes < self.max_request_bytes:
            raise ValueError(
                f"TOLLWAY_MAX_RESPONSE_BYTES ({self.max_response_bytes}) must be at least "
                f"TOLLWAY_MAX_REQUEST_BYTES ({self.max_request_bytes})"
            )
        return self
