"""The router filter's own cost, with no Envoy, gRPC or Redis: its four handlers called in a loop.

    .venv/bin/python -m bench.handlers [--calls 3000] [--profile]

One `RouterCall` per call, as the sidecar makes per ext_proc stream, with the demo config
(`examples/local/`), the in-memory quota store, tracing on (spans go to a batch processor with an
exporter that drops them) and uvloop: request headers (auth), the buffered request body (validate,
route, estimate and reserve, rewrite), response headers, the buffered JSON response body (usage,
price, settle, metrics, spans). Prints the median microseconds of each handler after 300 warm-up
calls; `--profile` adds cProfile's top functions. These are warm, hot-cache figures: the lower bound
of what the sidecar spends per call beyond its ext_proc messaging (compare the `floor` system in
`make bench`).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from tollway.dev import compile_folder
from tollway_sidecar.extproc.router import RouterCall
from tollway_sidecar.extproc.server import code_details, final_attempt
from tollway_sidecar.quota.gate import QuotaGate
from tollway_sidecar.quota.memory import MemoryStore
from tollway_sidecar.runtime import CompiledConfig, Runtime
from tollway_sidecar.tracing import Tracing

ROOT = Path(__file__).resolve().parents[1]
DEMO_KEY = "tw-demo-0123456789abcdef0123456789abcdef"  # examples/local/secrets.yaml
PHASES = ("request headers", "request body", "response headers", "response body")


class _DropSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _headers(pairs: list[tuple[str, str]]) -> ep.HttpHeaders:
    values = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    return ep.HttpHeaders(headers=base_pb2.HeaderMap(headers=values))


def _messages(prompt_bytes: int) -> tuple[ep.HttpHeaders, ep.HttpBody, ep.ProcessingRequest, ep.HttpBody]:
    prompt = ("lorem ipsum dolor sit amet " * (prompt_bytes // 27 + 1))[:prompt_bytes]
    messages = [{"role": "system", "content": "You are concise."}, {"role": "user", "content": prompt}]
    body = json.dumps({"model": "gpt-4o-mini", "messages": messages, "max_tokens": 256}).encode()
    request_headers = _headers(
        [
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "127.0.0.1:8080"),
            ("content-type", "application/json"),
            ("authorization", f"Bearer {DEMO_KEY}"),
            ("content-length", str(len(body))),
            ("x-request-id", "bench"),
        ]
    )
    response_headers = ep.ProcessingRequest(
        response_headers=_headers([(":status", "200"), ("content-type", "application/json")])
    )
    attributes = struct_pb2.Struct()
    backend = 'fields { key: "backend" value { string_value: "mock" } }'
    attributes.fields[
        "xds.upstream_host_metadata"
    ].string_value = f'filter_metadata {{ key: "tollway" value {{ {backend} }} }}'
    attributes.fields["upstream.request_attempt_count"].number_value = 1
    attributes.fields["response.code_details"].string_value = "via_upstream"
    response_headers.attributes["envoy.filters.http.ext_proc"].CopyFrom(attributes)
    answer = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi " * 20}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 300, "completion_tokens": 20, "total_tokens": 320},
    }
    return (
        request_headers,
        ep.HttpBody(body=body, end_of_stream=True),
        response_headers,
        ep.HttpBody(body=json.dumps(answer).encode(), end_of_stream=True),
    )


async def _run(runtime: Runtime, calls: int, prompt_bytes: int, profile: bool) -> dict[str, float]:
    request_headers, request_body, response_headers, response_body = _messages(prompt_bytes)
    timings: dict[str, list[float]] = {phase: [] for phase in PHASES}

    async def one() -> None:
        call = RouterCall(runtime)
        t0 = time.perf_counter()
        call.on_request_headers(request_headers)
        t1 = time.perf_counter()
        reply = await call.on_request_body(request_body)
        t2 = time.perf_counter()
        if reply.WhichOneof("response") != "request_body":
            raise SystemExit(f"the call was refused: {reply}")
        call.on_response_headers(
            response_headers.response_headers, final_attempt(response_headers), code_details(response_headers)
        )
        t3 = time.perf_counter()
        call.on_response_body(response_body)
        t4 = time.perf_counter()
        call.on_stream_closed()
        for phase, start, end in zip(PHASES, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
            timings[phase].append((end - start) * 1e6)

    for _ in range(300):
        await one()
    for values in timings.values():
        values.clear()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    for _ in range(calls):
        await one()
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats(os.environ.get("TOLLWAY_PROFILE_SORT", "tottime")).print_stats(30)
    return {phase: statistics.median(values) for phase, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--prompt-bytes", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    result, _ = compile_folder(ROOT / "examples" / "local")
    tracing = Tracing.from_env(processor=BatchSpanProcessor(_DropSpans()))
    runtime = Runtime(
        CompiledConfig.build(result.config),
        max_request_bytes=1 << 22,
        quota=QuotaGate(MemoryStore()),
        tracing=tracing,
    )
    try:
        medians = uvloop.run(_run(runtime, args.calls, args.prompt_bytes, args.profile))
    finally:
        tracing.shutdown()
    print(f"{'router filter handler':<28}{'median µs':>10}")
    for phase, value in medians.items():
        print(f"{phase:<28}{value:>10.0f}")
    print(f"{'per call':<28}{sum(medians.values()):>10.0f}")


if __name__ == "__main__":
    main()
