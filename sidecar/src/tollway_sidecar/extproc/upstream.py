"""The upstream-level filter: rewrite one attempt for the backend Envoy picked for it.

Envoy runs this filter once per attempt (the first try and every retry), after it has chosen an
endpoint. The endpoint's metadata names the backend; we set that backend's path, credentials and
model name. Headers an earlier attempt set are still present on a retry, so every header we touch
is overwritten (or removed) on every attempt; the body starts from the original each time.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2

from tollway_sidecar.config.models import Backend
from tollway_sidecar.extproc import messages as msg
from tollway_sidecar.extproc.router import RID_HEADER
from tollway_sidecar.extproc.state import RequestState
from tollway_sidecar.runtime import Runtime
from tollway_sidecar.xds import ROUTE_HEADER

log = logging.getLogger("tollway.upstream")

_BACKEND_RE = re.compile(r'key: "backend"\s*value\s*\{\s*string_value: "((?:[^"\\]|\\.)*)"')
_INTERNAL_HEADERS = (ROUTE_HEADER, RID_HEADER, "x-api-key")


def backend_from_metadata(text: str) -> str | None:
    """The backend name from `xds.upstream_host_metadata` (a text-format core.v3.Metadata)."""
    match = _BACKEND_RE.search(text)
    return match.group(1) if match else None


def _attribute(request: ep.ProcessingRequest, name: str) -> Any:
    for struct in request.attributes.values():
        if name in struct.fields:
            value: struct_pb2.Value = struct.fields[name]
            kind = value.WhichOneof("kind")
            return getattr(value, kind) if kind else None
    return None


class UpstreamAttempt:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.state: RequestState | None = None
        self.backend: Backend | None = None

    def on_request_headers(self, request: ep.ProcessingRequest) -> ep.ProcessingResponse:
        headers = msg.headers_of(request.request_headers)
        state = self.runtime.inflight.get(headers.get(RID_HEADER, ""))
        metadata = _attribute(request, "xds.upstream_host_metadata")
        name = backend_from_metadata(metadata) if isinstance(metadata, str) else None
        if state is None or state.route is None or name is None:
            # Not a call the router filter admitted: never let it reach a provider.
            log.error(
                "upstream attempt without router state (rid=%r, backend=%r)", headers.get(RID_HEADER), name
            )
            return msg.error(
                500, "The gateway lost track of this request.", error_type="api_error", code="gateway_error"
            )
        backend = self.runtime.compiled.backends.get((state.route.id, name))
        if backend is None:
            return msg.error(
                500,
                f"Backend '{name}' is not in the current configuration.",
                error_type="api_error",
                code="gateway_error",
            )
        self.state, self.backend = state, backend
        attempt = _attribute(request, "upstream.request_attempt_count")
        state.attempts = int(attempt) if isinstance(attempt, float) else state.attempts + 1
        state.backend = backend

        path, _, query = headers.get(":path", "").partition("?")
        upstream_path = backend.path_prefix + path.removeprefix("/v1")
        if query:
            upstream_path += "?" + query
        set_headers = {":path": upstream_path}
        remove = list(_INTERNAL_HEADERS)
        if backend.credential:
            set_headers["authorization"] = f"Bearer {backend.credential}"
        else:
            remove.append("authorization")
        return msg.continue_headers("request_headers", set_headers=set_headers, remove=remove)

    def on_request_body(self, message: ep.HttpBody) -> ep.ProcessingResponse:
        state, backend = self.state, self.backend
        if state is None or backend is None or state.body is None:
            return msg.continue_body("request_body")
        if state.body.get("model") == backend.model:
            return msg.continue_body("request_body")
        body = dict(state.body)
        body["model"] = backend.model
        raw = json.dumps(body, separators=(",", ":")).encode()
        return msg.continue_body("request_body", body=raw, set_headers={"content-length": str(len(raw))})
