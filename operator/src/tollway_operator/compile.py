"""Compile VirtualKey, Budget and RouteRule resources (and the Secrets they name) into a GatewayConfig.

`compile_manifests` is pure: the same manifests give the same config and checksum. Each violation is
one `CompileError` naming the resource and the field; an invalid resource is left out and the rest
still compile. `compile_directory` compiles a folder read by `manifests.load_manifests` (local mode,
`tollway compile`). A warning (`CompileResult.warnings`) names a field that is served narrower than
written (the response cache, `cachecompile`); its resource is still compiled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from tollway_operator.cachecompile import (
    CACHE_REFERENCE_REASONS,
    CacheWarning,
    key_cache,
    key_warnings,
    route_cache,
    settle_routes,
)

# Re-exported: what a caller of the compiler needs (the `as` form says so to mypy).
from tollway_operator.manifests import MANIFEST_SUFFIXES as MANIFEST_SUFFIXES
from tollway_operator.manifests import CompileError as CompileError
from tollway_operator.manifests import Manifest as Manifest
from tollway_operator.manifests import ResourceId as ResourceId
from tollway_operator.manifests import load_file as load_file
from tollway_operator.manifests import load_manifests as load_manifests
from tollway_operator.manifests import manifest_paths as manifest_paths
from tollway_operator.resources import (
    API_VERSION,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    SERVICE_ACCOUNT_FIELDS,
    BudgetSpec,
    LimitsSpec,
    RouteRuleSpec,
    SecretKeyRef,
    Spec,
    VirtualKeySpec,
)
from tollway_sidecar.config.models import (
    DEFAULT_CONTENT_RETENTION_DAYS,
    Backend,
    Budget,
    CredentialSource,
    Fallback,
    GatewayConfig,
    Limits,
    Pricing,
    Route,
    VirtualKey,
)
from tollway_sidecar.contract.catalog import has_catalog_price

# CompileError reasons for a reference that does not resolve (the operator's ResolvedRefs=False).
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
SECRET_INVALID = "SecretInvalid"
BUDGET_NOT_FOUND = "BudgetNotFound"
BUDGET_INVALID = "BudgetInvalid"
KEY_NOT_MINTED = "KeyNotMinted"
# A RouteRule claiming a model that an older RouteRule already routes (the operator's Accepted=False).
MODEL_CONFLICT = "ModelConflict"
REFERENCE_REASONS = frozenset(
    {SECRET_NOT_FOUND, SECRET_KEY_NOT_FOUND, SECRET_INVALID, BUDGET_NOT_FOUND, BUDGET_INVALID, KEY_NOT_MINTED}
    | CACHE_REFERENCE_REASONS
)

MIN_KEY_LENGTH = 16
MINTED_SECRET_PREFIX = "tollway-key-"  # the operator mints a VirtualKey's key into tollway-key-<name>
MINTED_SECRET_KEY = "key"

_API_VERSIONS = {"Secret": "v1", "Budget": API_VERSION, "VirtualKey": API_VERSION, "RouteRule": API_VERSION}
_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

_S = TypeVar("_S", bound=Spec)


@dataclass(frozen=True)
class CompileResult:
    config: GatewayConfig
    errors: tuple[CompileError, ...]
    accepted: frozenset[ResourceId]  # (kind, namespace, name) of every VirtualKey/Budget/RouteRule compiled
    # Rejected in their current version but served at their last good one (`tollway_operator.lastgood`);
    # their errors are those of the current version.
    held: frozenset[ResourceId] = frozenset()
    # Fields of compiled resources that are served narrower than written (never a reason to leave out).
    warnings: tuple[CompileError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    def errors_for(self, kind: str, namespace: str, name: str) -> tuple[CompileError, ...]:
        return tuple(e for e in self.errors if (e.kind, e.namespace, e.name) == (kind, namespace, name))

    def warnings_for(self, kind: str, namespace: str, name: str) -> tuple[CompileError, ...]:
        return tuple(w for w in self.warnings if (w.kind, w.namespace, w.name) == (kind, namespace, name))


def route_id(namespace: str, name: str) -> str:
    """A DNS-safe slug of `<namespace>-<name>`, used for Envoy cluster and route names."""
    return re.sub(r"[^a-z0-9]+", "-", f"{namespace}-{name}".lower()).strip("-")


def key_sha256(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


# --- compile ------------------------------------------------------------------------------------------


@dataclass
class _Compiler:
    errors: list[CompileError] = field(default_factory=list)
    accepted: set[ResourceId] = field(default_factory=set)
    secrets: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    bad_secrets: set[tuple[str, str]] = field(default_factory=set)
    budgets: dict[tuple[str, str], Budget] = field(default_factory=dict)
    bad_budgets: set[tuple[str, str]] = field(default_factory=set)
    embedding_names: dict[str, str] = field(default_factory=dict)  # route id -> embeddingRoute as written

    def error(self, m: Manifest, path: str, message: str, reason: str = "Invalid") -> None:
        self.errors.append(CompileError(m.source, m.kind, m.namespace, m.name, path, message, reason))

    def spec(self, m: Manifest, model: type[_S]) -> _S | None:
        """Validate `spec`; on failure record one error per problem and return None."""
        count = len(self.errors)
        for key in m.body:
            if key not in _TOP_LEVEL:
                self.error(m, str(key), f"unknown field; expected {', '.join(sorted(_TOP_LEVEL))}")
        raw = m.body.get("spec")
        if raw is None:
            self.error(m, "spec", "required")
            return None
        try:
            spec = model.model_validate(raw)
        except ValidationError as exc:
            for detail in exc.errors():
                self.error(m, _path("spec", detail["loc"]), _message(detail))
            return None
        for path, message in spec.problems():
            self.error(m, f"spec.{path}", message)
        return spec if len(self.errors) == count else None

    def secret_value(self, m: Manifest, ref: SecretKeyRef, path: str) -> bytes | None:
        where = (m.namespace, ref.name)
        if where in self.bad_secrets:
            self.error(
                m,
                f"{path}.name",
                f"Secret {m.namespace}/{ref.name} is invalid (see its errors)",
                SECRET_INVALID,
            )
            return None
        data = self.secrets.get(where)
        if data is None:
            self.error(m, f"{path}.name", f"Secret {m.namespace}/{ref.name} not found", SECRET_NOT_FOUND)
            return None
        if ref.key not in data:
            keys = ", ".join(sorted(data)) or "none"
            self.error(
                m,
                f"{path}.key",
                f"Secret {m.namespace}/{ref.name} has no key {ref.key!r} (keys: {keys})",
                SECRET_KEY_NOT_FOUND,
            )
            return None
        return data[ref.key]

    # Secrets ------------------------------------------------------------------------------------------

    def add_secret(self, m: Manifest) -> None:
        values: dict[str, bytes] = {}
        count = len(self.errors)
        for section in ("data", "stringData"):
            raw = m.body.get(section)
            if raw is None:
                continue
            if not isinstance(raw, Mapping):
                self.error(m, section, "expected a mapping of key to value")
                continue
            for key, value in raw.items():
                if not isinstance(value, str):
                    self.error(m, f"{section}.{key}", "expected a string")
                elif section == "stringData":
                    values[str(key)] = value.encode()
                else:
                    try:
                        values[str(key)] = base64.b64decode(value, validate=True)
                    except (binascii.Error, ValueError):
                        self.error(m, f"{section}.{key}", "not valid base64 (use stringData for plain text)")
        if len(self.errors) == count:
            self.secrets[(m.namespace, m.name)] = values
        else:
            self.bad_secrets.add((m.namespace, m.name))

    # Budgets ------------------------------------------------------------------------------------------

    def add_budget(self, m: Manifest) -> None:
        spec = self.spec(m, BudgetSpec)
        if spec is None:
            self.bad_budgets.add((m.namespace, m.name))
            return
        self.budgets[(m.namespace, m.name)] = Budget(
            name=m.name,
            namespace=m.namespace,
            limit_usd=spec.limit,
            period=spec.period,
            per_user=spec.per_user,
            thresholds=spec.thresholds,
            action=spec.action,
            failure_policy=spec.failure_policy,
            alert_webhook_url=spec.alert_webhook.url if spec.alert_webhook else None,
        )
        self.accepted.add(("Budget", m.namespace, m.name))

    # VirtualKeys --------------------------------------------------------------------------------------

    def add_key(self, m: Manifest, hashes: dict[str, Manifest]) -> VirtualKey | None:
        spec = self.spec(m, VirtualKeySpec)
        if spec is None:
            return None
        count = len(self.errors)
        digest = self.key_digest(m, spec)
        if digest is not None:
            if digest in hashes:
                other = hashes[digest]
                self.error(
                    m,
                    "spec.secretRef",
                    f"the same key as VirtualKey {other.namespace}/{other.name}; every key must be unique",
                )
            hashes.setdefault(digest, m)
        budget_ids: list[str] = []
        for i, ref in enumerate(spec.budget_refs):
            if (m.namespace, ref) in self.bad_budgets:
                self.error(
                    m,
                    f"spec.budgetRefs[{i}]",
                    f"Budget {m.namespace}/{ref} is invalid, so this key is left out rather than served "
                    "without it (see the Budget's errors)",
                    BUDGET_INVALID,
                )
            elif (m.namespace, ref) not in self.budgets:
                self.error(
                    m, f"spec.budgetRefs[{i}]", f"Budget {m.namespace}/{ref} not found", BUDGET_NOT_FOUND
                )
            elif f"{m.namespace}/{ref}" not in budget_ids:
                budget_ids.append(f"{m.namespace}/{ref}")
        if digest is None or len(self.errors) != count:
            return None
        self.accepted.add(("VirtualKey", m.namespace, m.name))
        return VirtualKey(
            name=m.name,
            namespace=m.namespace,
            key_sha256=digest,
            owner_team=spec.owner.team,
            owner_user=spec.owner.user,
            models=spec.models,
            limits=_limits(spec.limits),
            per_user_limits=_limits(spec.per_user_limits),
            budgets=tuple(budget_ids),
            disabled=spec.disabled,
            expires_at=spec.expires_at,
            cache=key_cache(spec.cache),
        )

    def key_digest(self, m: Manifest, spec: VirtualKeySpec) -> str | None:
        if spec.secret_ref is not None:
            value = self.secret_value(m, spec.secret_ref, "spec.secretRef")
            path, where = "spec.secretRef.key", f"Secret {m.namespace}/{spec.secret_ref.name}"
        else:
            minted = self.secrets.get((m.namespace, MINTED_SECRET_PREFIX + m.name), {})
            value = minted.get(MINTED_SECRET_KEY)
            path, where = "spec.secretRef", f"Secret {m.namespace}/{MINTED_SECRET_PREFIX}{m.name}"
            if value is None:
                self.error(
                    m,
                    path,
                    f"secretRef is required, or the minted {where} (key {MINTED_SECRET_KEY!r}) "
                    "does not exist yet",
                    KEY_NOT_MINTED,
                )
                return None
        if value is None:
            return None
        problem = _key_problem(value)
        if problem:
            self.error(m, path, f"the key in {where} {problem}")
            return None
        return key_sha256(value)

    # RouteRules ---------------------------------------------------------------------------------------

    def add_route(self, m: Manifest, models: dict[str, Manifest], ids: dict[str, Manifest]) -> Route | None:
        count = len(self.errors)
        rid = route_id(m.namespace, m.name)
        if rid in ids:
            other = ids[rid]
            self.error(
                m,
                "metadata.name",
                f"route id {rid!r} is already used by RouteRule {other.namespace}/{other.name}",
            )
        ids.setdefault(rid, m)
        spec = self.spec(m, RouteRuleSpec)
        if spec is None:
            return None
        if spec.model in models:
            other = models[spec.model]
            self.error(
                m,
                "spec.model",
                f"model {spec.model!r} is already routed by RouteRule {other.namespace}/{other.name}, "
                "the older claim; only one RouteRule in the cluster may route a model name",
                MODEL_CONFLICT,
            )
        models.setdefault(spec.model, m)
        backends: list[Backend] = []
        for i, b in enumerate(spec.backends):
            path = f"spec.backends[{i}]"
            credential: str | None = None
            if b.credentials_secret_ref is not None:
                value = self.secret_value(m, b.credentials_secret_ref, f"{path}.credentialsSecretRef")
                if value is not None and b.provider == "vertex":
                    credential = self.service_account_key(m, value, b.credentials_secret_ref, path)
                elif value is not None:
                    credential = self.credential(m, value, b.credentials_secret_ref, path)
                if credential is not None and b.provider == "bedrock":
                    credential = self.aws_credential(m, credential, b.credentials_secret_ref, path)
            # Web identity: the sidecar assumes this role (None: the Pod's AWS_ROLE_ARN) and keeps the
            # temporary keys fresh; no Secret is involved.
            source: CredentialSource | None = None
            if b.provider == "vertex":  # the sidecar trades the service-account key for access tokens
                source = "google-service-account"
            if b.web_identity is not None:
                credential, source = b.web_identity.role_arn, "aws-web-identity"
            if b.pricing is None and not has_catalog_price(b.provider, b.model):
                self.error(
                    m,
                    f"{path}.pricing",
                    f"backend {b.name!r}: the price catalogue has no price for {b.provider} model "
                    f"{b.model!r}; declare pricing (inputPerMillion, outputPerMillion)",
                )
            base = b.resolved_base_url
            if base is None:  # already reported by the spec's own checks
                continue
            pricing = None
            if b.pricing is not None:
                pricing = Pricing(
                    input_per_million=b.pricing.input_per_million,
                    output_per_million=b.pricing.output_per_million,
                    cached_input_per_million=b.pricing.cached_input_per_million,
                )
            backends.append(
                Backend(
                    name=b.name,
                    provider=b.provider,
                    model=b.model,
                    base_url=base,
                    credential=credential,
                    weight=b.weight,
                    priority=b.priority,
                    pricing=pricing,
                    api_version=b.resolved_api_version,
                    region=b.region,
                    project=b.project,
                    credential_source=source,
                )
            )
        if len(self.errors) != count:
            return None
        if spec.strategy == "Priority":  # fallback order; sorted() is stable, so ties keep declaration order
            backends = sorted(backends, key=lambda backend: backend.priority)
        # More attempts than backends start the order again from the first backend.
        attempts = spec.fallback.max_attempts or min(len(backends), 10)
        if spec.cache is not None and spec.cache.semantic is not None:
            self.embedding_names[rid] = spec.cache.semantic.embedding_route
        self.accepted.add(("RouteRule", m.namespace, m.name))
        return Route(
            id=rid,
            name=m.name,
            namespace=m.namespace,
            model=spec.model,
            strategy=spec.strategy,
            backends=tuple(backends),
            fallback=Fallback(
                on_status=tuple(sorted(set(spec.fallback.on_status))),
                on_timeout=spec.fallback.on_timeout,
                max_attempts=attempts,
            ),
            timeout_ms=spec.timeout_ms,
            sticky_user=spec.sticky_user,
            capture_content=spec.captures,
            content_retention_days=(
                spec.capture.retention_days if spec.capture is not None else DEFAULT_CONTENT_RETENTION_DAYS
            ),
            allowed_namespaces=tuple(sorted(set(spec.allowed_namespaces))),
            cache=route_cache(spec.cache, m.namespace, route_id),
        )

    def credential(self, m: Manifest, value: bytes, ref: SecretKeyRef, path: str) -> str | None:
        try:
            text = value.decode()
        except UnicodeDecodeError:
            text = ""
        if not text or text != text.strip() or any(not c.isprintable() for c in text):
            self.error(
                m,
                f"{path}.credentialsSecretRef.key",
                f"the value of {ref.key!r} in Secret {m.namespace}/{ref.name} must be non-empty printable "
                "text without surrounding whitespace (a trailing newline?)",
            )
            return None
        return text

    def service_account_key(self, m: Manifest, value: bytes, ref: SecretKeyRef, path: str) -> str | None:
        """A vertex backend's credential: the Secret's service-account JSON key (a key file as Google
        downloads it, newlines and all), checked for the fields the sidecar signs its token requests
        with and sent on compact. The key itself is never quoted."""
        try:
            key = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            key = None
        missing = (
            [name for name in SERVICE_ACCOUNT_FIELDS if not isinstance(key.get(name), str) or not key[name]]
            if isinstance(key, dict)
            else list(SERVICE_ACCOUNT_FIELDS)
        )
        if missing:
            self.error(
                m,
                f"{path}.credentialsSecretRef.key",
                f"Secret {m.namespace}/{ref.name} key {ref.key!r} must hold a Google service-account JSON "
                f"key (missing: {', '.join(missing)})",
            )
            return None
        return json.dumps(key, sort_keys=True, separators=(",", ":"))

    def aws_credential(self, m: Manifest, key_id: str, ref: SecretKeyRef, path: str) -> str | None:
        """A bedrock backend's credential: the access key id, secret and session token of one Secret,
        as the JSON object the sidecar's Bedrock adapter reads."""
        secret_ref = SecretKeyRef(name=ref.name, key=AWS_SECRET_ACCESS_KEY)
        value = self.secret_value(m, secret_ref, f"{path}.credentialsSecretRef")
        secret = self.credential(m, value, secret_ref, path) if value is not None else None
        if secret is None:
            return None
        credential = {"access_key_id": key_id, "secret_access_key": secret}
        data = self.secrets.get((m.namespace, ref.name)) or {}
        if AWS_SESSION_TOKEN in data:
            token_ref = SecretKeyRef(name=ref.name, key=AWS_SESSION_TOKEN)
            token = self.credential(m, data[AWS_SESSION_TOKEN], token_ref, path)
            if token is None:
                return None
            credential["session_token"] = token
        return json.dumps(credential, sort_keys=True, separators=(",", ":"))


def compile_manifests(manifests: Iterable[Manifest], *, default_namespace: str = "default") -> CompileResult:
    """Compile every manifest into one GatewayConfig; invalid resources are reported and left out."""
    c = _Compiler()
    first: dict[ResourceId, Manifest] = {}
    for raw in manifests:
        m = raw if raw.namespace else _with_namespace(raw, default_namespace)
        if _header_ok(c, m):
            rid = (m.kind, m.namespace, m.name)
            if rid in first:
                c.error(
                    m,
                    "metadata.name",
                    f"duplicate {m.kind} {m.namespace}/{m.name}; first in {first[rid].source}",
                )
            else:
                first[rid] = m

    def of_kind(kind: str) -> list[Manifest]:
        # Oldest claim first: it keeps a contested model name or key value.
        return sorted((m for m in first.values() if m.kind == kind), key=lambda m: m.claim_rank)

    def by_name(item: VirtualKey | Route) -> tuple[str, str]:
        return item.namespace, item.name

    for m in of_kind("Secret"):
        c.add_secret(m)
    for m in of_kind("Budget"):
        c.add_budget(m)
    hashes: dict[str, Manifest] = {}
    keys = [key for m in of_kind("VirtualKey") if (key := c.add_key(m, hashes)) is not None]
    models: dict[str, Manifest] = {}
    ids: dict[str, Manifest] = {}
    routes = [route for m in of_kind("RouteRule") if (route := c.add_route(m, models, ids)) is not None]
    rejected = [(m.namespace, m.name) for m in of_kind("RouteRule") if m.id not in c.accepted]
    routes, route_warnings = settle_routes(routes, rejected, c.embedding_names)
    warnings = [_warning(first, "RouteRule", w) for w in route_warnings]
    warnings += [_warning(first, "VirtualKey", w) for w in key_warnings(keys, routes)]
    config = GatewayConfig(
        keys=tuple(sorted(keys, key=by_name)),
        budgets=tuple(c.budgets.values()),
        routes=tuple(sorted(routes, key=by_name)),
    )
    return CompileResult(
        config=config.with_checksum(),
        errors=tuple(c.errors),
        accepted=frozenset(c.accepted),
        warnings=tuple(warnings),
    )


def _warning(first: Mapping[ResourceId, Manifest], kind: str, w: CacheWarning) -> CompileError:
    m = first[(kind, w.namespace, w.name)]
    return CompileError(m.source, kind, w.namespace, w.name, w.field, w.message, w.reason)


def _header_ok(c: _Compiler, m: Manifest) -> bool:
    if m.kind not in _API_VERSIONS:
        expected = f"Secret (v1), or VirtualKey, Budget or RouteRule ({API_VERSION})"
        c.error(m, "kind", f"unsupported kind {m.kind!r}; expected {expected}" if m.kind else "required")
        return False
    if m.api_version != _API_VERSIONS[m.kind]:
        c.error(m, "apiVersion", f"expected {_API_VERSIONS[m.kind]!r} for {m.kind}, got {m.api_version!r}")
        return False
    if not m.name:
        c.error(m, "metadata.name", "required, as a string")
        return False
    if len(m.name) > 253 or not _DNS_SUBDOMAIN.match(m.name):
        c.error(m, "metadata.name", "must be a DNS subdomain: lowercase letters, digits, '-' and '.'")
        return False
    if len(m.namespace) > 63 or not _DNS_LABEL.match(m.namespace):
        c.error(m, "metadata.namespace", "must be a DNS label: lowercase letters, digits and '-'")
        return False
    return True


def _with_namespace(m: Manifest, namespace: str) -> Manifest:
    return replace(m, namespace=namespace)


def _limits(spec: LimitsSpec) -> Limits:
    return Limits(
        requests_per_minute=spec.requests_per_minute,
        tokens_per_minute=spec.tokens_per_minute,
        tokens_per_day=spec.tokens_per_day,
    )


def _key_problem(value: bytes) -> str:
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    if len(text) < MIN_KEY_LENGTH:
        return f"is {len(text)} characters long; at least {MIN_KEY_LENGTH} are required"
    if any(c.isspace() or not c.isprintable() for c in text):
        return "contains whitespace or control characters (a trailing newline?)"
    return ""


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "int_type": "expected an integer",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "string_pattern_mismatch": "must be a DNS label: lowercase letters, digits and '-', at most 63",
}


def _message(detail: ErrorDetails) -> str:
    kind = detail["type"]
    if kind == "value_error":
        return detail["msg"].removeprefix("Value error, ")
    message = _MESSAGES.get(kind, detail["msg"])
    value = detail.get("input")
    if kind not in ("missing", "extra_forbidden") and isinstance(value, str | int | float | bool):
        message += f", got {value!r}"[:100]
    return message


def compile_directory(directory: Path, *, default_namespace: str = "default") -> CompileResult:
    manifests, load_errors = load_manifests(directory, default_namespace=default_namespace)
    result = compile_manifests(manifests, default_namespace=default_namespace)
    return CompileResult(
        result.config, (*load_errors, *result.errors), result.accepted, warnings=result.warnings
    )
