"""Every mutated request body gets a precise answer from the router filter, never an exception.

The bodies come from `tests/fuzzbodies.py` (every field of chat completions, embeddings and
Messages requests given every wrong JSON shape). Each is driven through the router filter's
request phases — and, on routes with several backends, through the upstream filter's per-attempt
rewrite — against routes of every provider mix, with quotas, budgets and content capture on, so
the estimate, the translation and the spans all see it. A call either goes on (with a body that is
strict JSON) or is answered with a 4xx in the endpoint's error shape; a 400 names the field.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tollway_sidecar.config.models import Backend, Budget, GatewayConfig, Limits, Pricing, Route, VirtualKey
from tollway_sidecar.extproc.dispatch import attach_call_id
from tollway_sidecar.extproc.router import RouterCall
from tollway_sidecar.extproc.upstream import UpstreamAttempt
from tollway_sidecar.runtime import CompiledConfig, Runtime
from tollway_sidecar.tracing import Tracing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fuzzbodies

KEY = "tw-fuzz-key-0000000000000000000000"
PRICE = Pricing(input_per_million=Decimal("2.5"), output_per_million=Decimal("10"))


def _backend(name: str, provider: str, model: str) -> Backend:
    return Backend(name=name, provider=provider, model=model, base_url="http://127.0.0.1:9/v1", pricing=PRICE)  # type: ignore[arg-type]


def _route(route_id: str, model: str, *backends: Backend, strategy: str = "Priority") -> Route:
    return Route(
        id=route_id, name=route_id, namespace="fuzz", model=model, backends=backends, strategy=strategy
    )  # type: ignore[arg-type]


ROUTES = (
    _route("openai-one", "gpt-4o-mini", _backend("oa", "openai", "gpt-4o-mini")),
    _route(
        "openai-two",
        "gpt-pair",
        _backend("oa1", "openai", "gpt-4o"),
        _backend("oa2", "openai-compatible", "llama"),
        strategy="Cost",
    ),
    _route("claude-one", "claude", _backend("an", "anthropic", "claude-sonnet-4-5")),
    _route(
        "claude-two",
        "claude-pair",
        _backend("an1", "anthropic", "claude-a"),
        _backend("an2", "anthropic", "claude-b"),
    ),
    _route(
        "mixed", "mixed", _backend("mo", "openai", "gpt-4o-mini"), _backend("ma", "anthropic", "claude-a")
    ),
    _route("embed", "text-embedding-3-small", _backend("em", "openai", "text-embedding-3-small")),
)
# Which client model each endpoint is fuzzed against (every provider mix that endpoint can reach).
MODELS = {
    fuzzbodies.CHAT: ("gpt-4o-mini", "gpt-pair", "claude", "claude-pair", "mixed"),
    fuzzbodies.EMBEDDINGS: ("text-embedding-3-small",),
    fuzzbodies.MESSAGES: ("claude", "claude-pair"),
}


def _config() -> GatewayConfig:
    import hashlib

    key = VirtualKey(
        name="fuzzer",
        namespace="fuzz",
        key_sha256=hashlib.sha256(KEY.encode()).hexdigest(),
        limits=Limits(requests_per_minute=10**9, tokens_per_minute=10**12),
        per_user_limits=Limits(tokens_per_day=10**12),
        budgets=("fuzz/cap",),
    )
    cap = Budget(name="cap", namespace="fuzz", limit_usd=Decimal("1000000"), per_user=True)
    return GatewayConfig(keys=(key,), budgets=(cap,), routes=ROUTES).with_checksum()


@dataclass
class Harness:
    runtime: Runtime
    exported: InMemorySpanExporter


@pytest.fixture(scope="module")
def harness() -> Harness:
    exported = InMemorySpanExporter()
    tracing = Tracing.from_env(capture_content=True, processor=SimpleSpanProcessor(exported))
    runtime = Runtime(CompiledConfig.build(_config()), max_request_bytes=1 << 20, tracing=tracing)
    return Harness(runtime, exported)


def _headers(pairs: dict[str, str], end_of_stream: bool = False) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        ),
        end_of_stream=end_of_stream,
    )


def _attempt_request(rid: str, backend: str, number: int) -> ep.ProcessingRequest:
    request = ep.ProcessingRequest(request_headers=_headers({":path": "/v1/chat/completions"}))
    holder = ep.ProcessingResponse()
    attach_call_id(holder, rid)
    for namespace, struct in holder.dynamic_metadata.fields.items():
        request.metadata_context.filter_metadata[namespace].CopyFrom(struct.struct_value)
    attrs = request.attributes["envoy.filters.http.ext_proc.upstream"]
    backend_field = f'key: "backend" value {{ string_value: "{backend}" }}'
    attrs.fields[
        "xds.upstream_host_metadata"
    ].string_value = f'filter_metadata {{ key: "tollway" value {{ fields {{ {backend_field} }} }} }}'
    attrs.fields["upstream.request_attempt_count"].number_value = number
    return request


def _strict_json(raw: bytes) -> Any:
    """Parse as a strict JSON parser (any provider's) would: no NaN, no Infinity."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    value = json.loads(raw, parse_constant=refuse)

    def finite(item: Any) -> None:
        stack = [item]
        while stack:
            current = stack.pop()
            if isinstance(current, float) and not math.isfinite(current):
                raise ValueError("a number too large for a double")
            if isinstance(current, dict):
                stack.extend(current.values())
            elif isinstance(current, list):
                stack.extend(current)

    finite(value)
    return value


def _problem_with_answer(reply: ep.ProcessingResponse, endpoint: str) -> str | None:
    """What is wrong with an immediate answer, or None."""
    answer = reply.immediate_response
    status = answer.status.code
    if not 400 <= status < 500:
        return f"status {status}: {answer.body[:300]!r}"
    payload = json.loads(answer.body)
    if endpoint == fuzzbodies.MESSAGES:
        if set(payload) != {"type", "error"} or not payload["error"].get("message"):
            return f"not the Anthropic error shape: {payload}"
        return None
    error = payload.get("error")
    if set(payload) != {"error"} or set(error) != {"message", "type", "param", "code"}:
        return f"not the OpenAI error shape: {payload}"
    if status == 400 and error["param"] is None and error["code"] != "invalid_json":
        return f"a 400 that names no field: {error}"
    return None


async def _drive(harness: Harness, mutation: fuzzbodies.Mutation) -> str | None:
    """Send one mutated body through the filters; say what went wrong, or None."""
    runtime = harness.runtime
    call = RouterCall(runtime)
    try:
        headers = {
            ":method": "POST",
            ":path": mutation.endpoint,
            "authorization": f"Bearer {KEY}",
            "content-type": "application/json",
            "content-length": str(len(mutation.body)),
        }
        reply = call.on_request_headers(_headers(headers, end_of_stream=not mutation.body))
        if reply.HasField("immediate_response"):
            return _problem_with_answer(reply, mutation.endpoint)
        reply = await call.on_request_body(ep.HttpBody(body=mutation.body, end_of_stream=True))
        if reply.HasField("immediate_response"):
            return _problem_with_answer(reply, mutation.endpoint)
        common = reply.request_body.response
        sent = common.body_mutation.body if common.HasField("body_mutation") else mutation.body
        _strict_json(sent)
        state = call.state
        assert state.route is not None
        if len(state.route.backends) > 1:
            for number, backend in enumerate(state.route.backends, start=1):
                attempt = UpstreamAttempt(runtime)
                head = attempt.on_request_headers(_attempt_request(state.request_id, backend.name, number))
                if head.HasField("immediate_response"):
                    return f"attempt on {backend.name}: " + (
                        _problem_with_answer(head, mutation.endpoint) or "refused after admission"
                    )
                body = attempt.on_request_body(ep.HttpBody(body=sent, end_of_stream=True))
                upstream = body.request_body.response
                if upstream.HasField("body_mutation"):
                    _strict_json(upstream.body_mutation.body)
                attempt.on_stream_closed()
        return None
    except Exception as exc:  # the finding: what a client would have seen as a 500
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        try:
            call.on_stream_closed()
        except Exception as exc:
            return f"on_stream_closed: {type(exc).__name__}: {str(exc)[:200]}"


def _cases() -> list[tuple[str, str]]:
    return [(endpoint, model) for endpoint, models in MODELS.items() for model in models]


@pytest.mark.parametrize(("endpoint", "model"), _cases())
async def test_every_mutated_body_gets_a_precise_answer(harness: Harness, endpoint: str, model: str) -> None:
    findings = []
    count = 0
    for mutation in fuzzbodies.mutations(endpoint, model):
        count += 1
        problem = await _drive(harness, mutation)
        if problem is not None:
            findings.append(f"{mutation} -> {problem}")
    for span in harness.exported.get_finished_spans():
        try:
            encode_spans([span])  # the exporter thread would lose the whole batch
        except Exception as exc:
            findings.append(f"span {span.name!r} -> cannot be exported: {type(exc).__name__}: {exc}")
    harness.exported.clear()
    assert count > 500
    assert not findings, _summary(findings, count)


def _summary(findings: list[str], count: int) -> str:
    """One line per distinct problem (the first body that showed it), most frequent first."""
    by_problem: dict[str, list[str]] = {}
    for finding in findings:
        where, _, problem = finding.partition(" -> ")
        by_problem.setdefault(problem[:120], []).append(where)
    lines = [f"{len(findings)} of {count} bodies went wrong, {len(by_problem)} distinct problems:"]
    for problem, wheres in sorted(by_problem.items(), key=lambda item: -len(item[1]))[:60]:
        lines.append(f"  {len(wheres):4d}x {problem}  (e.g. {wheres[0]})")
    return "\n".join(lines)
