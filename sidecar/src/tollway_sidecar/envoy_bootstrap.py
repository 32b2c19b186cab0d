"""Envoy's bootstrap: the static listener, its filter chain and the ext_proc cluster.

The dynamic half (clusters and routes, rewritten with every config) is `xds`; this is what Envoy
starts from, rendered by `tollway dev` and by the Helm chart's init container from the same code:
an HTTP listener whose connection manager runs the router-level ext_proc filter and Envoy's router,
reads its routes from `rds.json` and its clusters from `cds.json` (both watched), turns Envoy's own
error replies into the OpenAI error shape (`local_reply_config`), and reaches the sidecar over a
Unix socket or TCP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tollway_sidecar.limits import (
    DEFAULT_MAX_RESPONSE_BYTES,
    MESSAGE_TIMEOUT_MS,
    grpc_message_limit,
)
from tollway_sidecar.xds import (
    BLACKHOLE_CLUSTER,
    EXTPROC_CLUSTER,
    ROUTE_CONFIG_NAME,
    extproc_filter,
    extproc_target,
    worker_address,
    worker_extproc_cluster,
)

__all__ = [
    "EXTPROC_FAILURE",
    "RESPONSE_TOO_LARGE",
    "TOO_LARGE_FOR_GRPC",
    "UPSTREAM_FAILURE_FLAGS",
    "bootstrap",
]

_T = "type.googleapis.com/"


def _path_source(directory: Path, name: str) -> dict[str, Any]:
    return {
        "path_config_source": {"path": str(directory / name), "watched_directory": {"path": str(directory)}},
        "resource_api_version": "V3",
    }


# Envoy's response flags for failures on the way to (or from) a backend.
UPSTREAM_FAILURE_FLAGS = ["UF", "UH", "UO", "URX", "UC", "UR", "UT", "NC", "DF", "UPE", "UMSDR"]


# Envoy's own answers on the ext_proc path, by `response.code_details`: the sidecar did not answer a
# message in time (`…per-message_timeout_exceeded`), or the gRPC stream failed (`ext_proc_error…`).
EXTPROC_FAILURE = (
    "response.code_details.contains('per-message_timeout') || response.code_details.startsWith('ext_proc')"
)
# A buffered answer larger than the stream's buffer limit (Envoy's own 500) — or a body larger than
# the gRPC message limit: when a body arrives while Envoy still waits for the sidecar's reply to the
# headers (a loaded sidecar), Envoy queues it outside the buffer limit and may send it whole, and the
# sidecar's gRPC server refuses it (`…Received_message_larger_than_max…`).
TOO_LARGE_FOR_GRPC = "response.code_details.contains('larger_than_max')"
RESPONSE_TOO_LARGE = f"response.code_details == 'response_payload_too_large' || {TOO_LARGE_FOR_GRPC}"
# The sidecar's own refusal of an answer that announced more than the limit (`extproc.answer`).
SIDECAR_TOO_LARGE = "response.code_details == 'tollway_response_too_large'"


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": _T + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


def _openai_error_mapper(
    status: int,
    message: str,
    error_type: str,
    code: str,
    *,
    flags: list[str] | None = None,
    details: str | None = None,
    answer_status: int | None = None,
) -> dict[str, Any]:
    """Rewrite one kind of Envoy local reply into the OpenAI error shape.

    With `flags` (upstream failures) or `details` (a CEL test of `response.code_details`), only
    replies Envoy made for that reason match, so the sidecar's own answers with the same status
    (they already carry an OpenAI body) are left alone. `answer_status` replaces the status.
    """
    status_filter = {
        "status_code_filter": {
            "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": "tollway.unused"}}
        }
    }
    filters: list[dict[str, Any]] = [status_filter]
    if flags:
        filters.append({"response_flag_filter": {"flags": flags}})
    if details:
        filters.append(_cel(details))
    mapper: dict[str, Any] = {
        "filter": {"and_filter": {"filters": filters}} if len(filters) > 1 else status_filter,
        "body_format_override": {
            "json_format": {"error": {"message": message, "type": error_type, "param": None, "code": code}}
        },
    }
    if answer_status is not None:
        mapper["status_code"] = answer_status
    return mapper


def _gateway_failure_log() -> dict[str, Any]:
    """One stderr line for each answer Envoy made because the sidecar failed or was too slow, or an
    answer was over the limit: nothing else would say why a client got a 5xx (no key is logged)."""
    line = (
        "tollway gateway failure: %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %REQ(:METHOD)% %REQ(:PATH)% "
        "request_id=%REQ(X-REQUEST-ID)% duration_ms=%DURATION%\n"
    )
    return {
        "name": "envoy.access_loggers.stderr",
        # The status test first: CEL is then evaluated for failed calls only.
        "filter": {
            "and_filter": {
                "filters": [
                    {
                        "status_code_filter": {
                            "comparison": {
                                "op": "GE",
                                "value": {"default_value": 500, "runtime_key": "tollway.unused"},
                            }
                        }
                    },
                    _cel(f"({EXTPROC_FAILURE}) || ({RESPONSE_TOO_LARGE}) || ({SIDECAR_TOO_LARGE})"),
                ]
            }
        },
        "typed_config": {
            "@type": _T + "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
            "log_format": {"text_format_source": {"inline_string": line}},
        },
    }


def bootstrap(
    *,
    listen_host: str,
    listen_port: int,
    admin_port: int,
    extproc_address: str,
    xds_directory: Path,
    max_request_bytes: int,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    message_timeout_ms: int = MESSAGE_TIMEOUT_MS,
    workers: int = 1,
) -> dict[str, Any]:
    """The static Envoy bootstrap: listener, ext_proc cluster, and file-based CDS/RDS.

    With several sidecar `workers`, `tollway_extproc` lists every worker's address (the router
    filter's streams are balanced over them) and `tollway_extproc_<i>` reaches worker i alone (the
    upstream filter of that worker's cluster copies, `xds.cluster_for`).

    Envoy has one buffer limit per stream, for the request and the answer alike: it is
    `max_response_bytes`, which must be at least `max_request_bytes`; the sidecar refuses a request
    body over `max_request_bytes` itself (413), and Envoy answers a larger one with the same 413.
    """
    if max_response_bytes < max_request_bytes:
        raise ValueError(
            f"max_response_bytes ({max_response_bytes}) must be at least max_request_bytes "
            f"({max_request_bytes}): Envoy buffers both under one limit"
        )
    upstream_detail = "%UPSTREAM_METADATA(tollway:backend)%"
    local_reply_mappers = [
        _openai_error_mapper(
            500,
            f"Request body is larger than the gateway's limit of {max_request_bytes} bytes.",
            "invalid_request_error",
            "request_too_large",
            details=f"{TOO_LARGE_FOR_GRPC} && request.size > {max_request_bytes}",
            answer_status=413,
        ),
        _openai_error_mapper(
            500,
            f"The backend's answer is larger than the gateway's limit of {max_response_bytes} bytes "
            "for a non-streamed answer; ask for less (fewer inputs, fewer dimensions, base64 "
            "embeddings) or stream it.",
            "api_error",
            "response_too_large",
            details=RESPONSE_TOO_LARGE,
            answer_status=502,
        ),
        _openai_error_mapper(
            504,
            f"The gateway did not process this request within {message_timeout_ms} ms "
            "(%RESPONSE_CODE_DETAILS%); it has been logged.",
            "api_error",
            "gateway_timeout",
            details=EXTPROC_FAILURE,
        ),
        _openai_error_mapper(
            413,
            f"Request body is larger than the gateway's limit of {max_request_bytes} bytes.",
            "invalid_request_error",
            "request_too_large",
        ),
        _openai_error_mapper(
            503,
            f"Backend '{upstream_detail}' is unavailable: %RESPONSE_CODE_DETAILS%.",
            "api_error",
            "backend_unavailable",
            flags=UPSTREAM_FAILURE_FLAGS,
        ),
        _openai_error_mapper(
            504,
            f"Backend '{upstream_detail}' did not answer in time: %RESPONSE_CODE_DETAILS%.",
            "api_error",
            "backend_timeout",
            flags=UPSTREAM_FAILURE_FLAGS,
        ),
        _openai_error_mapper(
            502,
            f"Backend '{upstream_detail}' failed: %RESPONSE_CODE_DETAILS%.",
            "api_error",
            "bad_gateway",
            flags=UPSTREAM_FAILURE_FLAGS,
        ),
        _openai_error_mapper(
            500,
            "The gateway could not process this request: %RESPONSE_CODE_DETAILS%.",
            "api_error",
            "gateway_error",
        ),
    ]
    hcm = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "tollway",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "always_set_request_id_in_response": True,
        "stream_idle_timeout": "300s",
        "request_timeout": "0s",
        "rds": {
            "route_config_name": ROUTE_CONFIG_NAME,
            "config_source": _path_source(xds_directory, "rds.json"),
        },
        "local_reply_config": {"mappers": local_reply_mappers},
        # An HTTP/2 stream's buffer limit is its window (256 MiB by default), not the listener's.
        "http2_protocol_options": {"initial_stream_window_size": max_response_bytes},
        "access_log": [_gateway_failure_log()],
        "http_filters": [
            extproc_filter(
                "router",
                upstream=False,
                message_timeout_ms=message_timeout_ms,
                max_message_bytes=grpc_message_limit(max_request_bytes, max_response_bytes),
            ),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": _T + "envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                },
            },
        ],
    }
    return {
        "node": {"id": "tollway-gateway", "cluster": "tollway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {"cds_config": _path_source(xds_directory, "cds.json")},
        "static_resources": {
            "listeners": [
                {
                    "name": "gateway",
                    "address": {"socket_address": {"address": listen_host, "port_value": listen_port}},
                    # What one call may buffer: a JSON answer, or a request (the sidecar holds
                    # requests to their own, lower limit).
                    "per_connection_buffer_limit_bytes": max_response_bytes,
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _extproc_cluster(
                    EXTPROC_CLUSTER, [worker_address(extproc_address, i, workers) for i in range(workers)]
                ),
                *(
                    _extproc_cluster(worker_extproc_cluster(i), [worker_address(extproc_address, i, workers)])
                    for i in range(workers if workers > 1 else 0)
                ),
                {
                    "name": BLACKHOLE_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": BLACKHOLE_CLUSTER, "endpoints": []},
                },
            ],
        },
    }


def _extproc_cluster(name: str, addresses: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {"connection_keepalive": {"interval": "30s", "timeout": "5s"}}
                },
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": extproc_target(address)}} for address in addresses
                    ]
                }
            ],
        },
    }
