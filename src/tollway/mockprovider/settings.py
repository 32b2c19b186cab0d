"""Process-wide defaults of the mock provider (the CLI flags); headers override them per request."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "o4-mini",
    "text-embedding-3-small",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
)


@dataclass(frozen=True, slots=True)
class MockSettings:
    """Defaults for every request; each delay/usage field has an ``x-mock-*`` header override.

    Attributes:
        host: Interface to listen on (``run``/``serve``).
        port: TCP port to listen on; ``0`` picks a free port (``serve`` only makes sense then).
        latency_ms: Delay before the response headers, for every provider endpoint.
        ttft_ms: Streaming only: delay between the response headers and the first body bytes.
        chunk_delay_ms: Streaming only: delay between two content chunks.
        completion_tokens: Completion (output) tokens per reply, before ``max_tokens`` caps it.
        chunks: Number of content chunks per stream; ``None`` means one per visible token.
        require_key: When set, provider endpoints answer 401 unless the request carries this key.
        embedding_dimensions: Length of embedding vectors when the request gives no ``dimensions``.
        record_limit: How many requests ``GET /_mock/requests`` keeps (0 disables recording).
        models: Model ids listed by ``GET /v1/models``.
        backlog: Listen backlog of the TCP socket (benchmarks open thousands of connections).
        shutdown_timeout: Seconds ``runner.cleanup()`` waits for in-flight requests.
        status: When set, every provider call is answered with this error status (``x-mock-status``).
        retry_after: With ``status``: the ``retry-after`` header sent (``x-mock-retry-after``).
        aws_access_key_id: Bedrock endpoints: the access key id requests must be SigV4-signed with.
        aws_secret_access_key: Bedrock endpoints: its secret; both unset, every signature is refused.
        vertex_public_key: Vertex: the service account's public key (PEM) token requests' JWT
            assertions must be signed with; unset, only their structure and claims are checked.
        vertex_client_email: Vertex: the service account's email the assertions must be issued by.
        vertex_token_lifetime_s: Vertex: how long an access token from ``POST /token`` is valid.
        sts_web_identity_token: STS endpoint: the one web identity token (a JWT) it accepts; unset,
            every AssumeRoleWithWebIdentity is refused.
        sts_role_arn: STS endpoint: when set, the only role it lets be assumed.
        sts_duration_s: STS endpoint: how long the temporary keys it issues stay valid (seconds).
        fail: Failure modes applied to every provider call (``x-mock-fail``), e.g. ``{"reset"}``.

    Headers override the defaults; a mock started with ``status``/``fail`` plays one misbehaving
    provider among several (fallback tests).
    """

    host: str = "127.0.0.1"
    port: int = 9000
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    completion_tokens: int = 20
    chunks: int | None = None
    require_key: str | None = None
    embedding_dimensions: int = 8
    record_limit: int = 100
    models: tuple[str, ...] = DEFAULT_MODELS
    backlog: int = 4096
    shutdown_timeout: float = 2.0
    status: int | None = None
    retry_after: str | None = None
    fail: frozenset[str] = frozenset()
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    vertex_public_key: str | None = None
    vertex_client_email: str | None = None
    vertex_token_lifetime_s: int = 3600
    sts_web_identity_token: str | None = None
    sts_role_arn: str | None = None
    sts_duration_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("latency_ms", "ttft_ms", "chunk_delay_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.completion_tokens < 0:
            raise ValueError("completion_tokens must be >= 0")
        if self.chunks is not None and self.chunks < 1:
            raise ValueError("chunks must be >= 1")
        if self.embedding_dimensions < 1:
            raise ValueError("embedding_dimensions must be >= 1")
        if self.vertex_token_lifetime_s < 1:
            raise ValueError("vertex_token_lifetime_s must be >= 1")
        if self.sts_duration_s <= 0:
            raise ValueError("sts_duration_s must be > 0")
        if self.record_limit < 0:
            raise ValueError("record_limit must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be within 0..65535")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be within 400..599")
        from .knobs import FAIL_MODES

        unknown = self.fail - FAIL_MODES
        if unknown:
            raise ValueError(f"unknown failure mode(s): {', '.join(sorted(unknown))}")
