"""The GatewayConfig contract: what the operator (or `tollway compile`) hands the sidecar.

No Kubernetes types live here. The operator imports these models to build a config; the sidecar loads
one from a file or a Secret. Every model is frozen: a config is a value, replaced whole on reload.
Money is `Decimal` (serialised as a string), never a float.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION: Final = "tollway.dev/gatewayconfig/v1alpha1"

Provider = Literal["openai", "openai-compatible", "azure-openai", "anthropic", "gemini", "bedrock"]
# Where a backend's short-lived credential comes from (`providers.refresh`); None: `credential` as is.
CredentialSource = Literal["google-service-account", "aws-web-identity"]
Strategy = Literal["Cost", "Weighted", "Priority"]
Period = Literal["Daily", "Weekly", "Monthly", "Total"]
BudgetAction = Literal["Block", "Alert"]
FailurePolicy = Literal["FailClosed", "FailOpen"]
CacheMode = Literal["Off", "Exact", "Semantic"]
CachePartition = Literal["Key", "Team", "Namespace"]

DEFAULT_RETRY_STATUS: tuple[int, ...] = (429, 500, 502, 503, 504)
ANY_NAMESPACE: Final = "*"  # in Route.allowed_namespaces: keys of every namespace may use the route


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Value):
    """Rate limits; `None` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None

    @property
    def empty(self) -> bool:
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and (self.tokens_per_day is None)
        )


class SemanticCache(_Value):
    """Semantic matching: the last user message is embedded through `embedding_route` (a Route id)."""

    embedding_route: str
    # Cosine similarity at or above which a stored entry is a hit: above 0, at most 1.
    threshold: Decimal = Field(default=Decimal("0.95"), gt=0, le=1)


# Narrowest first: a Key partition shares entries only within one key, Team within its owner team,
# Namespace within the namespace. A key may move its partition toward Key, never away from it.
PARTITION_ORDER: Final[tuple[CachePartition, ...]] = ("Key", "Team", "Namespace")
DEFAULT_CACHE_TTL_S: Final = 300
DEFAULT_CACHE_MAX_TTL_S: Final = 86_400
DEFAULT_CACHE_MAX_ENTRY_BYTES: Final = 1_048_576


class CacheSettings(_Value):
    """A route's response cache, after the key's narrowing (what the data plane applies to a call).

    Off unless configured. `ttl_s` is the default entry lifetime, `max_ttl_s` the most a request's
    `Cache-Control: max-age` may ask for; answers over `max_entry_bytes` are never stored. A route
    whose mode is Off still carries the settings a key that opts in gets (`cache_for`).
    """

    mode: CacheMode = "Off"
    ttl_s: int = Field(default=DEFAULT_CACHE_TTL_S, ge=1)
    max_ttl_s: int = Field(default=DEFAULT_CACHE_MAX_TTL_S, ge=1)
    max_entry_bytes: int = Field(default=DEFAULT_CACHE_MAX_ENTRY_BYTES, ge=1)
    partition: CachePartition = "Key"
    semantic: SemanticCache | None = None  # set exactly when mode is Semantic

    @model_validator(mode="after")
    def _consistent(self) -> CacheSettings:
        if self.ttl_s > self.max_ttl_s:
            raise ValueError(f"ttl_s ({self.ttl_s}) must not exceed max_ttl_s ({self.max_ttl_s})")
        if (self.mode == "Semantic") != (self.semantic is not None):
            raise ValueError("semantic is set exactly when mode is Semantic")
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "Off"


class KeyCache(_Value):
    """A VirtualKey's say over the response cache: opt in or out, and narrow its route's settings.

    `None` fields follow the route. How the two combine is `cache_for(route, key)` (the one place).
    """

    mode: CacheMode | None = None
    ttl_s: int | None = Field(default=None, ge=1)
    max_entry_bytes: int | None = Field(default=None, ge=1)
    partition: CachePartition | None = None


class VirtualKey(_Value):
    """A client credential. Only the SHA-256 of the key is stored, as lowercase hex."""

    name: str
    namespace: str
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    owner_team: str | None = None
    owner_user: str | None = None
    models: tuple[str, ...] = ()  # client model names, fnmatch globs; empty = all
    # The models of the routes this key may use: its namespace's and those whose `allowed_namespaces`
    # name it. Derived when a config loads (`runtime.CompiledConfig`), never published: one list per
    # key would grow the config by keys x routes. None (a key built by hand) = every route.
    reachable_models: tuple[str, ...] | None = Field(default=None, exclude=True)
    limits: Limits = Limits()
    per_user_limits: Limits = Limits()
    budgets: tuple[str, ...] = ()  # Budget ids ("namespace/name")
    disabled: bool = False
    expires_at: datetime | None = None
    cache: KeyCache | None = None

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


class Budget(_Value):
    name: str
    namespace: str
    limit_usd: Decimal
    period: Period = "Monthly"
    per_user: bool = False
    thresholds: tuple[int, ...] = (50, 80, 95)
    action: BudgetAction = "Block"
    failure_policy: FailurePolicy = "FailClosed"
    alert_webhook_url: str | None = None

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"


class Pricing(_Value):
    """Prices in USD per million tokens, declared on a backend to override `genai-prices`."""

    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None = None


class Backend(_Value):
    name: str
    provider: Provider
    model: str  # the provider's model name, sent upstream
    base_url: str  # scheme://host[:port][/path prefix], no trailing slash
    credential: str | None = None  # the provider API key, resolved from its Secret
    weight: int = 1
    priority: int = 0
    pricing: Pricing | None = None
    api_version: str | None = None  # azure-openai: the `api-version` query parameter
    # bedrock: the AWS region requests are signed for (SigV4); `credential` is then the JSON the
    # `providers.bedrock` module documents (access key id, secret access key, optional session token).
    region: str | None = None
    # Set: `credential` is what the source turns into short-lived credentials, refreshed in the
    # background (`providers.refresh`); the adapter then receives those, never the Secret's value.
    credential_source: CredentialSource | None = None

    @property
    def scheme(self) -> str:
        return self.base_url.split("://", 1)[0]

    @property
    def authority(self) -> str:
        return self.base_url.split("://", 1)[1].split("/", 1)[0]

    @property
    def host(self) -> str:
        authority = self.authority
        if authority.startswith("["):
            return authority[1 : authority.index("]")]
        return authority.rsplit(":", 1)[0] if ":" in authority else authority

    @property
    def port(self) -> int:
        authority = self.authority
        tail = authority.rsplit("]", 1)[-1]
        if ":" in tail:
            return int(tail.rsplit(":", 1)[1])
        return 443 if self.scheme == "https" else 80

    @property
    def path_prefix(self) -> str:
        rest = self.base_url.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1].rstrip("/") if "/" in rest else ""


class Fallback(_Value):
    on_status: tuple[int, ...] = DEFAULT_RETRY_STATUS
    on_timeout: bool = True
    max_attempts: int = 2  # may exceed the backends: the order then starts again from the first


class Route(_Value):
    """A RouteRule, compiled. `id` is a DNS-safe slug used for Envoy cluster and route names."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str
    namespace: str
    model: str  # the model name clients send
    strategy: Strategy = "Priority"
    backends: tuple[Backend, ...]  # in fallback order (priority, then declaration)
    fallback: Fallback = Fallback()
    timeout_ms: int = 60_000  # per attempt
    capture_content: bool | None = None  # prompts/completions on spans; None: the sidecar's setting
    sticky_user: bool = False  # Weighted: one end user always gets the same first backend
    # Namespaces besides its own whose keys may call this route; ANY_NAMESPACE: every namespace.
    allowed_namespaces: tuple[str, ...] = ()
    cache: CacheSettings = CacheSettings()

    def allows(self, namespace: str) -> bool:
        return (
            namespace == self.namespace
            or namespace in self.allowed_namespaces
            or (ANY_NAMESPACE in self.allowed_namespaces)
        )


class GatewayConfig(_Value):
    schema_version: Literal["tollway.dev/gatewayconfig/v1alpha1"] = SCHEMA_VERSION
    keys: tuple[VirtualKey, ...] = ()
    budgets: tuple[Budget, ...] = ()
    routes: tuple[Route, ...] = ()
    checksum: str = ""  # sha256 over everything above; set by `with_checksum()`

    def with_checksum(self) -> GatewayConfig:
        return self.model_copy(update={"checksum": self.compute_checksum()})

    def compute_checksum(self) -> str:
        body = self.model_dump(mode="json", exclude={"checksum"})
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def version(self) -> str:
        """A short version string for logs, metrics and headers."""
        return self.checksum[:12]


def narrower_partition(a: CachePartition, b: CachePartition) -> CachePartition:
    """The narrower of two partitions (`PARTITION_ORDER`): the one that shares entries with fewer callers."""
    return a if PARTITION_ORDER.index(a) <= PARTITION_ORDER.index(b) else b


def cache_for(route: Route, key: VirtualKey) -> CacheSettings:
    """The response cache a call by `key` on `route` gets: the route's default, as the key narrows it.

    - A key without `cache`, or with every field unset, gets the route's settings.
    - `mode: Off` on the key turns the cache off for it, whatever the route says.
    - `mode: Exact` on the key caches even on a route whose mode is Off (with the route's ttl,
      maxTtl, maxEntryBytes and partition, or their defaults), and narrows a Semantic route to Exact.
    - `mode: Semantic` on the key is Semantic only on a route with semantic config; elsewhere Exact.
    - `ttl` is the smaller of the two and also caps maxTtl (a request's max-age cannot take the key's
      entries past the key's ttl); `maxEntryBytes` is the smaller; `partition` is the narrower
      (Key ⊂ Team ⊂ Namespace): a key asking for a wider one keeps the route's. Team partitions
      by the key's `owner_team` within its namespace; a key without a team is partitioned as Key.
    """
    base = route.cache
    if key.cache is None and not (base.partition == "Team" and key.owner_team is None):
        return base  # nothing narrows the route's settings: the common case, on every call's path
    wish = key.cache or KeyCache()
    mode: CacheMode = base.mode
    if wish.mode in ("Off", "Exact"):
        mode = wish.mode
    elif wish.mode == "Semantic":
        mode = "Semantic" if base.semantic is not None else "Exact"
    ttl_s, max_ttl_s = base.ttl_s, base.max_ttl_s
    if wish.ttl_s is not None:
        ttl_s, max_ttl_s = min(ttl_s, wish.ttl_s), min(max_ttl_s, wish.ttl_s)
    max_entry_bytes = base.max_entry_bytes
    if wish.max_entry_bytes is not None:
        max_entry_bytes = min(max_entry_bytes, wish.max_entry_bytes)
    partition = base.partition
    if wish.partition is not None:
        partition = narrower_partition(base.partition, wish.partition)
    if partition == "Team" and key.owner_team is None:
        # Keys without a team would all share one "no team" partition: each gets its own instead.
        partition = "Key"
    return CacheSettings(
        mode=mode,
        ttl_s=ttl_s,
        max_ttl_s=max_ttl_s,
        max_entry_bytes=max_entry_bytes,
        partition=partition,
        semantic=base.semantic if mode == "Semantic" else None,
    )
