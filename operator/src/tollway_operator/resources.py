"""The v1alpha1 custom resource specs, as users write them (camelCase), validated field by field.

Each model checks what it can see on its own: types, ranges, formats, and the rules that tie one field
of a spec to another (`problems()`). Rules that need other resources (Secrets, Budgets, uniqueness
across rules, the price catalogue) live in `tollway_operator.compile`.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from tollway_sidecar.config.models import (
    ANY_NAMESPACE,
    DEFAULT_CONTENT_RETENTION_DAYS,
    DEFAULT_RETRY_STATUS,
    BudgetAction,
    CacheMode,
    CachePartition,
    FailurePolicy,
    Period,
    Provider,
    Strategy,
)

API_VERSION = "tollway.dev/v1alpha1"

# Where a backend goes when its RouteRule gives no baseURL. The other providers must say.
DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
}
# Providers that cannot be called without a credential.
CREDENTIAL_REQUIRED: frozenset[str] = frozenset(
    {"openai", "azure-openai", "anthropic", "gemini", "bedrock", "vertex"}
)
# bedrock: the Secret named by credentialsSecretRef holds the access key id under `key` and these two
# beside it (the session token optional, for temporary credentials).
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
# vertex: what a service-account JSON key needs for the sidecar to sign its token requests.
SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")
# The `api-version` an azure-openai backend sends when its RouteRule does not say (the GA version
# of the data-plane inference API).
DEFAULT_AZURE_API_VERSION = "2024-10-21"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-[0-9]+$")  # AWS: us-east-1
_GCP_REGION = re.compile(r"^(?:[a-z]+-[a-z]+[0-9]+|global)$")  # Google Cloud: us-central1, global
_ANY_REGION = re.compile(f"^(?:{_REGION.pattern[1:-1]}|{_GCP_REGION.pattern[1:-1]})$")
_GCP_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$")
_API_VERSION = re.compile(r"^(?:[0-9]{4}-[0-9]{2}-[0-9]{2}(?:-preview)?|preview|latest)$")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_MS_PER_UNIT = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}
_DURATION_HINT = 'expected a duration such as "30s", "1500ms" or "2m"'
# Cache lifetimes are whole seconds: whole numbers of s, m or h (the CRD's pattern is the same).
_SECONDS = re.compile(r"^(?:\d+(?:s|m|h))+$")
_SECONDS_PART = re.compile(r"(\d+)(s|m|h)")
_S_PER_UNIT = {"s": 1, "m": 60, "h": 3600}
MAX_CACHE_TTL_S = 8760 * 3600  # a year
MAX_CACHE_ENTRY_BYTES = 33_554_432  # the gateway's default limit on a non-streamed answer


# --- scalar parsers (raise ValueError with a message a user can act on) -------------------------------


def _decimal(value: object) -> Decimal:
    """A decimal from a string (or a YAML int/float, read through `str()`, never float maths)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f'expected a decimal number as a string, such as "10.00", got {value!r}')
    text = str(value).strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f'expected a decimal number such as "10.00", got {text!r}') from None
    if not number.is_finite():
        raise ValueError(f"expected a finite decimal number, got {text!r}")
    return number


def _positive_decimal(value: object) -> Decimal:
    number = _decimal(value)
    if number <= 0:
        raise ValueError(f"must be greater than 0, got {str(value)!r}")
    return number


def _non_negative_decimal(value: object) -> Decimal:
    number = _decimal(value)
    if number < 0:
        raise ValueError(f"must be 0 or more, got {str(value)!r}")
    return number if number != 0 else abs(number)  # no "-0"


def _http_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an http or https URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an absolute http:// or https:// URL, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"the port in {value!r} is not a number between 0 and 65535") from None
    return value


def base_url(value: object) -> str:
    """An upstream base URL: absolute http(s), no query, fragment or credentials; no trailing slash."""
    url = _http_url(value)
    parts = urlsplit(url)
    if "?" in url or "#" in url:
        raise ValueError(f"must not have a query or fragment, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials; use credentialsSecretRef")
    return url.rstrip("/")


def parse_duration_ms(value: object) -> int:
    """`30s`, `1500ms`, `2m`, `1m30s`, `1.5s`, `1h` → milliseconds (a positive whole number)."""
    if not isinstance(value, str) or not _DURATION.match(value.strip()):
        raise ValueError(f"{_DURATION_HINT}, got {value!r}")
    total = sum(
        (Decimal(amount) * _MS_PER_UNIT[unit] for amount, unit in _DURATION_PART.findall(value.strip())),
        Decimal(0),
    )
    if total <= 0:
        raise ValueError(f"must be longer than 0, got {value!r}")
    if total != total.to_integral_value():
        raise ValueError(f"must be a whole number of milliseconds, got {value!r}")
    return int(total)


def parse_duration_s(value: object) -> int:
    """`90s`, `5m`, `24h`, `1h30m` → seconds (positive, at most a year)."""
    if not isinstance(value, str) or not _SECONDS.match(value.strip()):
        raise ValueError(
            f'expected a duration in whole s, m or h, such as "90s", "5m" or "24h", got {value!r}'
        )
    total = sum(int(amount) * _S_PER_UNIT[unit] for amount, unit in _SECONDS_PART.findall(value.strip()))
    if total <= 0:
        raise ValueError(f"must be longer than 0, got {value!r}")
    if total > MAX_CACHE_TTL_S:
        raise ValueError(f'must be at most a year ("8760h"), got {value!r}')
    return total


def _cache_mode(value: object) -> CacheMode:
    # YAML 1.1 (PyYAML, kubectl) reads an unquoted Off as false.
    if value is False:
        raise ValueError('write "Off" in quotes: unquoted, YAML reads Off as false')
    if value not in ("Off", "Exact", "Semantic"):
        raise ValueError(f'expected "Off", "Exact" or "Semantic", got {value!r}')
    return value


def _threshold(value: object) -> Decimal:
    number = _decimal(value)
    if not 0 < number <= 1:
        raise ValueError(f'must be above 0 and at most 1, such as "0.95", got {str(value)!r}')
    return number


def _api_version(value: object) -> str:
    """An Azure OpenAI `api-version`: a date (`2024-10-21`, `2025-04-01-preview`), `preview` or `latest`."""
    if not isinstance(value, str) or not _API_VERSION.match(value):
        raise ValueError(
            f'expected an Azure OpenAI api-version such as "2024-10-21" or "2025-04-01-preview", '
            f"got {value!r}"
        )
    return value


def _namespace_or_any(value: object) -> str:
    if value == ANY_NAMESPACE:
        return ANY_NAMESPACE
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"expected a namespace (a DNS label: lowercase letters, digits and '-') or '*', got {value!r}"
        )
    return value


def _timestamp(value: object) -> datetime:
    """RFC 3339 with an offset. YAML hands over unquoted timestamps as datetimes already."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f'expected an RFC 3339 timestamp such as "2026-01-31T00:00:00Z", got {value!r}'
            ) from None
    if not isinstance(value, datetime):
        raise ValueError(f'expected an RFC 3339 timestamp such as "2026-01-31T00:00:00Z", got {value!r}')
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError('needs a UTC offset, such as "2026-01-31T00:00:00Z"')
    return value


# --- field types --------------------------------------------------------------------------------------

Text = Annotated[str, StringConstraints(strict=True, min_length=1)]
DnsLabel = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=63, pattern=_DNS_LABEL)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
StrictBool = Annotated[bool, Field(strict=True)]
StatusCode = Annotated[int, Field(strict=True, ge=400, le=599)]
Percent = Annotated[int, Field(strict=True, ge=1, le=100)]
PositiveDecimal = Annotated[Decimal, PlainValidator(_positive_decimal)]
NonNegativeDecimal = Annotated[Decimal, PlainValidator(_non_negative_decimal)]
HttpURL = Annotated[str, PlainValidator(_http_url)]
BaseURL = Annotated[str, PlainValidator(base_url)]
DurationMs = Annotated[int, PlainValidator(parse_duration_ms)]
Timestamp = Annotated[datetime, PlainValidator(_timestamp)]
ApiVersion = Annotated[str, PlainValidator(_api_version)]
Region = Annotated[str, StringConstraints(strict=True, pattern=_ANY_REGION.pattern, max_length=32)]
GcpProject = Annotated[str, StringConstraints(strict=True, pattern=_GCP_PROJECT.pattern)]
NamespaceOrAny = Annotated[str, PlainValidator(_namespace_or_any)]
Seconds = Annotated[int, PlainValidator(parse_duration_s)]
CacheModeField = Annotated[CacheMode, PlainValidator(_cache_mode)]
Threshold = Annotated[Decimal, PlainValidator(_threshold)]
EntryBytes = Annotated[int, Field(strict=True, ge=1, le=MAX_CACHE_ENTRY_BYTES)]
ResourceName = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)
]


class Spec(BaseModel):
    """camelCase as users write it; unknown fields are errors; `null` means "not set"."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel)

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = {field.alias or name for name, field in cls.model_fields.items()}
        return {key: value for key, value in data.items() if value is not None or key not in known}

    def problems(self) -> list[tuple[str, str]]:
        """Rules across this spec's own fields: (field path relative to the spec, message)."""
        return []


class SecretKeyRef(Spec):
    name: Text
    key: Text


# --- VirtualKey ---------------------------------------------------------------------------------------


class OwnerSpec(Spec):
    team: Text | None = None
    user: Text | None = None


class LimitsSpec(Spec):
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    tokens_per_day: PositiveInt | None = None


class KeyCacheSpec(Spec):
    """A key opting in or out of its routes' response cache, and narrowing it (`cache_for`)."""

    mode: CacheModeField | None = None
    ttl: Seconds | None = None
    max_entry_bytes: EntryBytes | None = None
    partition: CachePartition | None = None


class VirtualKeySpec(Spec):
    secret_ref: SecretKeyRef | None = None
    owner: OwnerSpec = OwnerSpec()
    models: tuple[Text, ...] = ()
    limits: LimitsSpec = LimitsSpec()
    per_user_limits: LimitsSpec = LimitsSpec()
    budget_refs: tuple[Text, ...] = ()
    disabled: StrictBool = False
    expires_at: Timestamp | None = None
    cache: KeyCacheSpec | None = None


# --- Budget -------------------------------------------------------------------------------------------


class WebhookSpec(Spec):
    url: HttpURL


class BudgetSpec(Spec):
    limit: PositiveDecimal
    period: Period = "Monthly"
    per_user: StrictBool = False
    thresholds: tuple[Percent, ...] = (50, 80, 95)
    action: BudgetAction = "Block"
    failure_policy: FailurePolicy = "FailClosed"
    alert_webhook: WebhookSpec | None = None

    def problems(self) -> list[tuple[str, str]]:
        return [
            (f"thresholds[{i}]", f"thresholds must be strictly increasing: {value} follows {previous}")
            for i, (previous, value) in enumerate(zip(self.thresholds, self.thresholds[1:], strict=False), 1)
            if value <= previous
        ]


# --- RouteRule ----------------------------------------------------------------------------------------


class PricingSpec(Spec):
    """USD per million tokens."""

    input_per_million: NonNegativeDecimal
    output_per_million: NonNegativeDecimal
    cached_input_per_million: NonNegativeDecimal | None = None


RoleArn = Annotated[str, StringConstraints(strict=True, pattern=_ROLE_ARN.pattern, max_length=2048)]


class WebIdentitySpec(Spec):
    """bedrock: temporary credentials from STS with the gateway Pod's ServiceAccount token."""

    role_arn: RoleArn | None = Field(default=None, alias="roleARN")  # None: the Pod's AWS_ROLE_ARN


class BackendSpec(Spec):
    name: DnsLabel
    provider: Provider
    model: Text
    base_url: BaseURL | None = Field(default=None, alias="baseURL")
    credentials_secret_ref: SecretKeyRef | None = None
    web_identity: WebIdentitySpec | None = None  # bedrock, instead of credentialsSecretRef
    weight: NonNegativeInt = 1
    priority: NonNegativeInt = 0
    pricing: PricingSpec | None = None
    api_version: ApiVersion | None = None
    region: Region | None = None  # bedrock: the AWS region (SigV4 scope); vertex: the location
    project: GcpProject | None = None  # vertex: the Google Cloud project

    @property
    def resolved_base_url(self) -> str | None:
        if self.base_url is None and self.provider == "bedrock" and self.region is not None:
            return f"https://bedrock-runtime.{self.region}.amazonaws.com"
        if self.base_url is None and self.provider == "vertex" and self.region is not None:
            if self.region == "global":
                return "https://aiplatform.googleapis.com"
            return f"https://{self.region}-aiplatform.googleapis.com"
        return self.base_url or DEFAULT_BASE_URLS.get(self.provider)

    @property
    def resolved_api_version(self) -> str | None:
        if self.provider != "azure-openai":
            return None
        return self.api_version or DEFAULT_AZURE_API_VERSION

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.api_version is not None and self.provider != "azure-openai":
            found.append(
                ("apiVersion", f"only azure-openai backends take an apiVersion, not {self.provider!r}")
            )
        if self.provider == "bedrock" and self.region is None:
            found.append(("region", "required for provider 'bedrock' (the AWS region, e.g. us-east-1)"))
        elif self.provider == "vertex" and self.region is None:
            found.append(("region", "required for provider 'vertex' (the location, e.g. us-central1)"))
        elif self.region is not None and self.provider not in ("bedrock", "vertex"):
            found.append(("region", f"only bedrock and vertex backends take a region, not {self.provider!r}"))
        elif self.region is not None and self.provider == "bedrock" and not _REGION.match(self.region):
            found.append(("region", f"{self.region!r} is not an AWS region (e.g. us-east-1)"))
        elif self.region is not None and self.provider == "vertex" and not _GCP_REGION.match(self.region):
            found.append(("region", f"{self.region!r} is not a Google Cloud location (e.g. us-central1)"))
        if self.provider == "vertex" and self.project is None:
            found.append(("project", "required for provider 'vertex' (the Google Cloud project id)"))
        elif self.project is not None and self.provider != "vertex":
            found.append(("project", f"only vertex backends take a project, not {self.provider!r}"))
        regional = self.provider in ("bedrock", "vertex")
        if self.resolved_base_url is None and not (regional and self.region is None):
            found.append(("baseURL", f"required for provider {self.provider!r} (there is no default URL)"))
        if self.web_identity is not None and self.provider != "bedrock":
            found.append(("webIdentity", f"only bedrock backends take webIdentity, not {self.provider!r}"))
        elif self.web_identity is not None and self.credentials_secret_ref is not None:
            found.append(
                ("webIdentity", "a bedrock backend takes exactly one of credentialsSecretRef and webIdentity")
            )
        if self.credentials_secret_ref is None and self.web_identity is None and self.provider == "bedrock":
            found.append(
                (
                    "credentialsSecretRef",
                    "required for provider 'bedrock' unless webIdentity is set: name a Secret holding "
                    "AWS keys, or use the gateway Pod's web identity",
                )
            )
        elif self.credentials_secret_ref is None and self.provider in CREDENTIAL_REQUIRED - {"bedrock"}:
            found.append(
                (
                    "credentialsSecretRef",
                    f"required for provider {self.provider!r}: name a Secret and key holding the API key",
                )
            )
        return found


class FallbackSpec(Spec):
    on_status: tuple[StatusCode, ...] = DEFAULT_RETRY_STATUS
    on_timeout: StrictBool = True
    max_attempts: Annotated[int, Field(strict=True, ge=1, le=10)] | None = None


class SemanticCacheSpec(Spec):
    embedding_route: ResourceName  # a RouteRule in the same namespace (checked by the compiler)
    threshold: Threshold = Decimal("0.95")


class RouteCacheSpec(Spec):
    """A route's response cache; unset lifetimes fall back to 5m / 24h without crossing each other."""

    mode: CacheModeField = "Off"
    ttl: Seconds | None = None
    max_ttl: Seconds | None = None
    max_entry_bytes: EntryBytes | None = None
    partition: CachePartition = "Key"
    semantic: SemanticCacheSpec | None = None

    def problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self.ttl is not None and self.max_ttl is not None and self.ttl > self.max_ttl:
            found.append(("ttl", f"must not exceed maxTtl ({self.ttl}s > {self.max_ttl}s)"))
        if self.mode == "Semantic" and self.semantic is None:
            found.append(("semantic", "required with mode Semantic (embeddingRoute, threshold)"))
        if self.mode != "Semantic" and self.semantic is not None:
            found.append(("semantic", f"only with mode Semantic, not {self.mode}"))
        return found


RetentionDays = Annotated[int, Field(strict=True, ge=1, le=365)]


class CaptureSpec(Spec):
    """`spec.capture`: record the route's (redacted) prompts and completions on its spans and in
    the ledger, which keeps them `retentionDays`."""

    content: StrictBool = False
    retention_days: RetentionDays = DEFAULT_CONTENT_RETENTION_DAYS


class RouteRuleSpec(Spec):
    model: Text
    strategy: Strategy = "Priority"
    backends: tuple[BackendSpec, ...]
    fallback: FallbackSpec = FallbackSpec()
    timeout_ms: DurationMs = Field(default=60_000, alias="timeout")
    sticky_user: StrictBool = False
    capture_content: StrictBool | None = None
    capture: CaptureSpec | None = None
    # Namespaces (besides the rule's own) whose VirtualKeys may call this model; "*" for all.
    allowed_namespaces: tuple[NamespaceOrAny, ...] = ()
    cache: RouteCacheSpec | None = None

    def problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self.cache is not None:
            found += [(f"cache.{field}", message) for field, message in self.cache.problems()]
        for i, namespace in enumerate(self.allowed_namespaces):
            if namespace in self.allowed_namespaces[:i]:
                found.append((f"allowedNamespaces[{i}]", f"duplicate namespace {namespace!r}"))
        if not self.backends:
            found.append(("backends", "at least one backend is required"))
        first_index: dict[str, int] = {}
        for i, backend in enumerate(self.backends):
            found += [(f"backends[{i}].{field}", message) for field, message in backend.problems()]
            if backend.name in first_index:
                also = f"backends[{first_index[backend.name]}]"
                found.append((f"backends[{i}].name", f"duplicate name {backend.name!r} (also {also})"))
            first_index.setdefault(backend.name, i)
        if (
            self.strategy == "Weighted"
            and self.backends
            and all(backend.weight == 0 for backend in self.backends)
        ):
            found.append(("backends", "strategy Weighted needs at least one backend with weight above 0"))
        if self.sticky_user and self.strategy != "Weighted":
            found.append(("stickyUser", f"applies only to strategy Weighted, not {self.strategy}"))
        if self.capture is not None and self.capture_content is not None:
            found.append(("capture", "set either capture or the older captureContent, not both"))
        return found

    @property
    def captures(self) -> bool | None:
        """Whether the route captures content; None: the gateway's setting decides."""
        return self.capture.content if self.capture is not None else self.capture_content
