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

from tollway_sidecar.xds import (
    BLACKHOLE_CLUSTER,
    EXTPROC_CLUSTER,
    ROUTE_CONFIG_NAME,
    extproc_filter,
    extproc_target,
)

__all__ = ["UPSTREAM_FAILURE_FLAGS", "bootstrap"]

_T = "type.googleapis.com/"


def _path_source(directory: Path, name: str) -> dict[str, Any]:
    return {
        "path_config_source": {"path": str(directory / name), "watched_directory": {"path": str(directory)}},
        "resource_api_version": "V3",
    }


# Envoy's response flags for failures on the way to (or from) a backend.
UPSTREAM_FAILURE_FLAGS = ["UF", "UH", "UO", "URX", "UC", "UR", "UT", "NC", "DF", "UPE", "UMSDR"]


def _openai_error_mapper(
    status: int, message: str, error_type: str, code: str, *, flags: list[str] | None = None
) -> dict[str, Any]:
    """Rewrite one kind of Envoy local reply into the OpenAI error shape.

    With `flags`, only replies caused by those upstream failures match, so the sidecar's own answers
    with the same status (they already carry an OpenAI body) are left alone.
    """
    status_filter = {
        "status_code_filter": {
            "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": "tollway.unused"}}
        }
    }
    filters: list[dict[str, Any]] = [status_filter]
    if flags:
        filters.append({"response_flag_filter": {"flags": flags}})
    return {
        "filter": {"and_filter": {"filters": filters}} if len(filters) > 1 else status_filter,
        "body_format_override": {
            "json_format": {"error": {"message": message, "type": error_type, "param": None, "code": code}}
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
    message_timeout_ms: int = 2000,
) -> dict[str, Any]:
    """The static Envoy bootstrap: listener, ext_proc cluster, and file-based CDS/RDS."""
    upstream_detail = "%UPSTREAM_METADATA(tollway:backend)%"
    local_reply_mappers = [
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
        "http_filters": [
            extproc_filter("router", upstream=False, message_timeout_ms=message_timeout_ms),
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
                    "per_connection_buffer_limit_bytes": max_request_bytes,
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
                {
                    "name": EXTPROC_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                                }
                            },
                        }
                    },
                    "load_assignment": {
                        "cluster_name": EXTPROC_CLUSTER,
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": extproc_target(extproc_address)}}]}
                        ],
                    },
                },
                {
                    "name": BLACKHOLE_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": BLACKHOLE_CLUSTER, "endpoints": []},
                },
            ],
        },
    }
