"""A local OTLP/gRPC trace receiver that accepts every export and counts spans.

`python -m bench.otlp --port P --stats FILE`: answers `TraceService/Export` (and the metrics and
logs services) with an empty success, and rewrites FILE with {"exports", "spans", "bytes"} after
every export, so the report can say whether the gateway really exported spans during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc

_SERVICES = {
    "opentelemetry.proto.collector.trace.v1.TraceService": "spans",
    "opentelemetry.proto.collector.metrics.v1.MetricsService": "metrics",
    "opentelemetry.proto.collector.logs.v1.LogsService": "logs",
}


def _count_spans(raw: bytes) -> int:
    try:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    except ImportError:  # the sidecar's exporter brings opentelemetry-proto; count bytes only
        return 0
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(raw)
    return sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)


async def serve(port: int, stats_file: Path) -> None:
    stats: dict[str, int] = {"exports": 0, "spans": 0, "bytes": 0, "metrics": 0, "logs": 0}

    def write() -> None:
        tmp = stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, stats_file)

    def handler(kind: str) -> Any:
        async def export(raw: bytes, _context: Any) -> bytes:
            stats["bytes"] += len(raw)
            if kind == "spans":
                stats["exports"] += 1
                stats["spans"] += _count_spans(raw)
            else:
                stats[kind] += 1
            write()
            return b""  # an empty Export*ServiceResponse: full success

        return grpc.unary_unary_rpc_method_handler(export)

    server = grpc.aio.server()
    for service, kind in _SERVICES.items():
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {"Export": handler(kind)}),)
        )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    write()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)
    write()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.stats))


if __name__ == "__main__":
    main()
