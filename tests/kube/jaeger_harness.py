"""A real Jaeger (v2) for trace tests: OTLP in, the query API out, in-memory storage.

The binary comes from ``scripts/tools/jaeger.sh`` (``make tools`` builds it once). Everything listens
on free loopback ports: OTLP gRPC, OTLP HTTP, the query HTTP API (``/api/traces``) and its gRPC API.

Usage::

    with Jaeger.start(tmp_path) as jaeger:
        exporter = OTLPSpanExporter(endpoint=f"{jaeger.otlp_http}/v1/traces")   # or jaeger.otlp_grpc
        ...  # send spans
        traces = jaeger.wait_for_traces("my-service")
        assert traces[0]["spans"][0]["operationName"] == "chat"
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Process, free_port, tool_paths, wait_until


@dataclass
class Jaeger:
    """A running Jaeger; use :meth:`start`, and :meth:`stop` (or ``with``)."""

    otlp_grpc: str  # "127.0.0.1:PORT", for OTLP gRPC exporters (insecure)
    otlp_http: str  # "http://127.0.0.1:PORT"; traces go to {otlp_http}/v1/traces
    query_url: str  # "http://127.0.0.1:PORT": /api/traces, /api/services, the UI
    query_grpc: str  # "127.0.0.1:PORT": jaeger.api_v2.QueryService / api_v3
    process: Process

    @classmethod
    def start(cls, workdir: Path, *, timeout: float = 60.0) -> Jaeger:
        (binary,) = tool_paths("jaeger.sh")
        workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            grpc, http, query, query_grpc = (free_port() for _ in range(4))
            config = workdir / "jaeger.yaml"
            config.write_text(json.dumps(_config(grpc, http, query, query_grpc), indent=2))  # JSON is YAML
            process = Process.spawn("jaeger", [binary, f"--config=file:{config}"], workdir / "jaeger.log")
            jaeger = cls(
                f"127.0.0.1:{grpc}",
                f"http://127.0.0.1:{http}",
                f"http://127.0.0.1:{query}",
                f"127.0.0.1:{query_grpc}",
                process,
            )
            try:
                wait_until(jaeger._ready, timeout, "jaeger", process)
                return jaeger
            except RuntimeError:
                process.stop()
                if "address already in use" not in process.log_tail():
                    raise
        raise RuntimeError("jaeger: no free ports after 3 tries")

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Jaeger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ready(self) -> bool:
        # Extensions (the query API) start before the pipelines (the OTLP receivers): check both.
        self._get("/api/services")  # raises (caught by wait_until) until the query API answers
        for address in (self.otlp_grpc, self.otlp_http.removeprefix("http://")):
            host, port = address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=2):
                pass
        return True

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.query_url + path, timeout=10) as response:
            return json.loads(response.read())

    def services(self) -> list[str]:
        names: list[str] = self._get("/api/services")["data"] or []
        return names

    def traces(
        self, service: str, *, lookback: str = "1h", limit: int = 100, **tags: str
    ) -> list[dict[str, Any]]:
        """``/api/traces?service=...``: the traces stored so far (each with ``spans`` and ``processes``)."""
        query = {"service": service, "lookback": lookback, "limit": str(limit)}
        if tags:
            query["tags"] = json.dumps(tags)
        data: list[dict[str, Any]] = self._get("/api/traces?" + urllib.parse.urlencode(query))["data"] or []
        return data

    def wait_for_traces(self, service: str, *, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until at least ``count`` traces of ``service`` are stored (spans arrive in batches)."""
        deadline = time.monotonic() + timeout
        traces: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            traces = self.traces(service)
            if len(traces) >= count:
                return traces
            time.sleep(0.2)
        raise TimeoutError(
            f"jaeger: {len(traces)} trace(s) of service {service!r} after {timeout:.0f} s, wanted {count}"
        )


def _config(grpc: int, http: int, query: int, query_grpc: int) -> dict[str, Any]:
    """All-in-one with in-memory storage, OTLP receivers only, no metrics listener."""
    return {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
        },
        "extensions": {
            "jaeger_storage": {"backends": {"memory": {"memory": {"max_traces": 100000}}}},
            "jaeger_query": {
                "storage": {"traces": "memory"},
                # Otherwise the query service traces itself to OTLP gRPC on localhost:4317, whoever
                # listens there (and waits 10 s at shutdown to flush when nobody does).
                "enable_tracing": False,
                "http": {"endpoint": f"127.0.0.1:{query}"},
                "grpc": {"endpoint": f"127.0.0.1:{query_grpc}"},
            },
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{grpc}"},
                    "http": {"endpoint": f"127.0.0.1:{http}"},
                }
            }
        },
        "processors": {"batch": {"timeout": "100ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memory"}},
    }
