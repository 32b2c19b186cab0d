"""Summaries of a py-spy `--format raw` profile (collapsed stacks: `frame;frame;… count`)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")

# Self time in these frames is time spent inside native code they call without a Python frame of
# its own: grpc.aio's Cython `context.read()`/`write()` for the stream loop, uvloop + grpc's
# completion-queue handling for the event loop's top frame.
_NATIVE_CALLERS = {
    ("ExternalProcessor._router", "tollway_sidecar/extproc/server"): "ext_proc messages: grpc.aio read/write",
    (
        "ExternalProcessor._upstream",
        "tollway_sidecar/extproc/server",
    ): "ext_proc messages: grpc.aio read/write",
    ("ExternalProcessor.Process", "tollway_sidecar/extproc/server"): "ext_proc messages: grpc.aio read/write",
    ("Runner.run", "asyncio/runners"): "event loop + grpc C-core (native)",
    ("run", "uvloop"): "event loop + grpc C-core (native)",
}

# Where a frame's file lives → the area it is reported under (first match wins).
_AREAS = (
    ("tollway_sidecar/extproc/server", "sidecar: ext_proc stream loop"),
    ("tollway_sidecar/extproc/router", "sidecar: router filter"),
    ("tollway_sidecar/extproc/upstream", "sidecar: upstream filter"),
    ("tollway_sidecar/extproc/messages", "sidecar: building replies"),
    ("tollway_sidecar/extproc/validation", "sidecar: body validation"),
    ("tollway_sidecar/providers", "sidecar: usage parsing"),
    ("tollway_sidecar/pricing", "sidecar: pricing"),
    ("tollway_sidecar/quota/resp", "redis client"),
    ("tollway_sidecar/quota", "sidecar: quotas/ledger"),
    ("tollway_sidecar/routing", "sidecar: routing"),
    ("tollway_sidecar/telemetry", "sidecar: metrics"),
    ("tollway_sidecar/tracing", "sidecar: tracing"),
    ("tollway_sidecar/", "sidecar: other"),
    ("grpc/", "grpc (Python + C-core)"),
    ("google/protobuf", "protobuf"),
    ("envoy/", "protobuf"),
    ("prometheus_client", "prometheus_client"),
    ("opentelemetry", "opentelemetry"),
    ("redis/", "redis client"),
    ("tiktoken", "tiktoken"),
    ("genai_prices", "genai-prices"),
    ("pydantic", "pydantic"),
    ("json/", "json"),
    ("logging/", "logging"),
    ("uuid", "uuid"),
    ("decimal", "decimal"),
    ("asyncio/", "event loop"),
    ("uvloop", "event loop"),
)


# What a sample was doing for the request path, by the functions on its stack (inclusive time;
# one sample can count under several labels).
_FEATURES = (
    ("router filter: request headers (auth)", ("RouterCall.on_request_headers",)),
    ("router filter: request body (validate, route, quota admit)", ("RouterCall.on_request_body",)),
    ("router filter: response headers", ("RouterCall.on_response_headers",)),
    ("router filter: response body (usage, price, settle)", ("RouterCall.on_response_body",)),
    ("upstream filter (per attempt)", ("UpstreamAttempt.",)),
    ("quota: admit (estimate + Redis reserve)", ("QuotaGate.admit",)),
    ("quota: estimate (tokens + price)", ("estimate_call",)),
    ("quota: settle", ("QuotaGate.settle",)),
    ("Redis calls (store round trips)", ("RedisStore._call",)),
    ("pricing: genai-prices calc_price", ("ModelPrice.calc_price",)),
    (
        "replies: protobuf building",
        ("header_map", "mutation", "continue_body", "continue_headers", "immediate"),
    ),
    ("headers_of (request header dicts)", ("headers_of",)),
    ("tracing: spans (start/end)", ("Tracer.start_span", "Span.end", "Span.set_attribute")),
    ("tracing: OTLP export (batch thread)", ("OTLPSpanExporter.export", "BatchSpanProcessor")),
    ("metrics: prometheus_client", ("MetricWrapperBase.labels", "Counter.inc", "Histogram.observe")),
)


def parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match.group("func"), match.group("file") or ""


def area_of(file: str, func: str = "") -> str:
    for (name, needle), area in _NATIVE_CALLERS.items():
        if func == name and needle in file:
            return area
    for needle, area in _AREAS:
        if needle in file:
            return area
    return "other"


def _self_area(frames: list[tuple[str, str]]) -> str:
    """The area of the leaf frame; asyncio/unknown leaves go to their nearest caller with an area
    (time in asyncio's StreamWriter under redis-py is the Redis client's)."""
    for func, file in reversed(frames):
        area = area_of(file, func)
        if area not in ("event loop", "other"):
            return area
    return area_of(frames[-1][1], frames[-1][0])


def summarize_raw(text: str, top: int = 15) -> dict[str, Any]:
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas_self: Counter[str] = Counter()
    areas_incl: Counter[str] = Counter()
    features: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [parse_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        names = [f"{func} ({_short(file)})" for func, file in frames]
        self_time[names[-1]] += count
        areas_self[_self_area(frames)] += count
        for name in set(names):
            inclusive[name] += count
        for area in {area_of(file) for _func, file in frames if "tollway_sidecar/" in file}:
            areas_incl[area] += count
        funcs = {func for func, _file in frames}
        for label, needles in _FEATURES:
            if any(f == n or f.startswith(n) or f.endswith("." + n) for f in funcs for n in needles):
                features[label] += count

    def pct(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "top_self": pct(self_time),
        "top_inclusive": pct(inclusive),
        "areas_self": pct(areas_self),
        "sidecar_areas_inclusive": pct(areas_incl),
        "features_inclusive": [
            [label, round(100 * features[label] / total, 1)] for label, _n in _FEATURES if total
        ],
    }


def _short(file: str) -> str:
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1].lstrip("/")
    return file
