"""Envoy resources derived from a GatewayConfig.

Envoy reads its clusters (CDS) and routes (RDS) from two files that the sidecar rewrites atomically
whenever it loads a new config, so Envoy and the filter always serve the same config version. The
listener and the ext_proc cluster are static and live in the bootstrap (`envoy_bootstrap`), which the
local runner and the Helm chart both render from here.

Shape (see docs/architecture.md):
- one cluster per backend order a route may need (`routing.plan`: one for Priority, one per weighted
  backend for Weighted, one per cheapest-first order for Cost), each listing the route's backends at
  priority 0, 1, 2… in that order, each endpoint carrying `filter_metadata.tollway` {backend,
  provider, model} and a TLS flag;
- one route per route id, matched on the `x-tollway-route` header the router-level ext_proc sets
  (after which it clears the route cache); the cluster is named per call by the `x-tollway-cluster`
  header (`cluster_header`); a catch-all route sends the rest to a blackhole cluster, which the
  ext_proc never lets a request reach;
- the cluster's upstream HTTP filters run the upstream-level ext_proc once per attempt, so each
  attempt is rewritten for its own provider, and each attempt's answer is seen (status, retry-after,
  error body) before Envoy decides whether to retry. A route with one backend has no choice to
  make per attempt: the router filter rewrites its calls, and its cluster has no upstream filter
  (`routing.plan.rewritten_by_router`); Envoy waits out a `retry-after` itself there.

With several sidecar workers (`workers`), the router filter's streams are spread over every
worker's endpoint of `tollway_extproc`, and each cluster with an upstream filter has one copy per
worker (`cluster_for`) whose filter reaches only that worker (`tollway_extproc_<i>`): the worker
that admitted a call names its own copy, so each attempt finds the call's state where it is.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tollway_sidecar.config.models import Backend, GatewayConfig, Route
from tollway_sidecar.providers.adapters.base import KeepsResponses
from tollway_sidecar.providers.adapters.registry import adapter_for
from tollway_sidecar.routing.plan import cluster_name, pinned_cluster, plans_for, rewritten_by_router

METADATA_NAMESPACE = "tollway"
ROUTE_HEADER = "x-tollway-route"
CLUSTER_HEADER = "x-tollway-cluster"
# Dynamic metadata the router filter sets and each upstream attempt reads: the call's id.
CALL_METADATA_NAMESPACE = "tollway.call"
# The longest the upstream filter may hold an attempt (waiting out a provider's retry-after).
MAX_UPSTREAM_HOLD_S = 300
EXTPROC_CLUSTER = "tollway_extproc"
BLACKHOLE_CLUSTER = "tollway_unrouted"
ROUTE_CONFIG_NAME = "tollway"
FILTER_ROLE_HEADER = "x-tollway-filter"
RID_HEADER = "x-tollway-rid"
# Headers the router filter sets for Envoy and the upstream filter; never sent to a provider.
INTERNAL_HEADERS = (ROUTE_HEADER, RID_HEADER, CLUSTER_HEADER)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

_T = "type.googleapis.com/"
_EXTPROC = _T + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"


__all__ = [
    "CLUSTER_HEADER",
    "METADATA_NAMESPACE",
    "ROUTER_PROCESSING_MODE",
    "ROUTE_HEADER",
    "cluster_for",
    "cluster_name",
    "clusters",
    "extproc_filter",
    "extproc_target",
    "route_configuration",
    "worker_address",
    "worker_extproc_cluster",
    "write_dynamic_resources",
]


# The router-level filter's messages: request headers, the buffered request body, response headers;
# the response body's mode is chosen per response (`mode_override`: STREAMED for SSE, else BUFFERED).
ROUTER_PROCESSING_MODE: dict[str, str] = {
    "request_header_mode": "SEND",
    "request_body_mode": "BUFFERED",
    "response_header_mode": "SEND",
    "response_body_mode": "NONE",
    "request_trailer_mode": "SKIP",
    "response_trailer_mode": "SKIP",
}


def worker_address(address: str, worker: int, workers: int) -> str:
    """Where worker `worker` of `workers` serves ext_proc: the configured address itself with one
    worker; else `unix:/run/x.sock` becomes `unix:/run/x-<i>.sock`, and `host:port` is `port + i`."""
    if workers == 1:
        return address
    if address.startswith("unix:"):
        path = Path(address.removeprefix("unix:"))
        return f"unix:{path.with_name(f'{path.stem}-{worker}{path.suffix}')}"
    host, port = address.rsplit(":", 1)
    return f"{host}:{int(port) + worker}"


def worker_extproc_cluster(worker: int) -> str:
    """The ext_proc cluster that reaches worker `worker` only (its upstream-filter streams)."""
    return f"{EXTPROC_CLUSTER}_{worker}"


def cluster_for(cluster: str, worker: int, workers: int) -> str:
    """Worker `worker`'s copy of a cluster with an upstream filter; the cluster itself with one."""
    return cluster if workers == 1 else f"{cluster}__w{worker}"


def extproc_target(address: str) -> dict[str, Any]:
    """An Envoy address for the sidecar: `unix:/path` or `host:port`."""
    if address.startswith("unix:"):
        return {"pipe": {"path": address.removeprefix("unix:")}}
    host, port = address.rsplit(":", 1)
    return {"socket_address": {"address": host, "port_value": int(port)}}


def extproc_filter(
    role: str,
    *,
    upstream: bool,
    message_timeout_ms: int,
    max_message_bytes: int | None = None,
    grpc_cluster: str = EXTPROC_CLUSTER,
) -> dict[str, Any]:
    # The same messages for both filters. The upstream filter's response headers are each attempt's
    # status and retry-after (error bodies buffered by mode_override); each attempt's request-headers
    # reply drops the phases it does not need (`extproc.messages.UPSTREAM_MODES`).
    mode = dict(ROUTER_PROCESSING_MODE)
    if upstream:
        attributes: dict[str, Any] = {
            "request_attributes": ["xds.upstream_host_metadata", "upstream.request_attempt_count"],
            # Host and path rewrites must reach this attempt's upstream.
            "mutation_rules": {"allow_all_routing": True},
            "allow_mode_override": True,
            "metadata_options": {"forwarding_namespaces": {"untyped": [CALL_METADATA_NAMESPACE]}},
            # An attempt that waits out a provider's retry-after extends its own message timeout.
            "max_message_timeout": f"{MAX_UPSTREAM_HOLD_S}s",
        }
    else:
        attributes = {
            "allow_mode_override": True,
            "metadata_options": {"receiving_namespaces": {"untyped": [CALL_METADATA_NAMESPACE]}},
            # Which backend gave the final answer, and after how many attempts (a connection that
            # fails fast never reaches the upstream filter, so only Envoy knows for sure).
            # `response.code_details` tells a backend's answer from Envoy's own (extproc.final_attempt).
            "response_attributes": [
                "xds.upstream_host_metadata",
                "upstream.request_attempt_count",
                "response.code_details",
            ],
        }
    envoy_grpc: dict[str, Any] = {"cluster_name": grpc_cluster}
    if max_message_bytes is not None:
        # The sidecar's reply may carry a whole rewritten body (a translated answer).
        envoy_grpc["max_receive_message_length"] = max_message_bytes
    return {
        "name": f"envoy.filters.http.ext_proc.{role}",
        "typed_config": {
            "@type": _EXTPROC,
            "grpc_service": {
                "envoy_grpc": envoy_grpc,
                "timeout": "5s",
                "initial_metadata": [{"key": FILTER_ROLE_HEADER, "value": role}],
            },
            "failure_mode_allow": False,
            "message_timeout": f"{message_timeout_ms / 1000:.3f}s",
            "processing_mode": mode,
            **attributes,
        },
    }


MAX_CLUSTER_REQUESTS = 1024  # requests (and so fallbacks) in flight to one cluster, Envoy's default


def clusters(
    config: GatewayConfig, *, message_timeout_ms: int = 2000, workers: int = 1
) -> list[dict[str, Any]]:
    plans = plans_for(config)
    out: list[dict[str, Any]] = []
    for route in config.routes:
        plan = plans[route.id]
        for name, order in zip(plan.clusters, plan.orders, strict=True):
            backends = [route.backends[i] for i in order]
            if rewritten_by_router(route):
                out.append(
                    _cluster(name, backends, message_timeout_ms=message_timeout_ms, upstream_filter=None)
                )
                continue
            for worker in range(workers):
                out.append(
                    _cluster(
                        cluster_for(name, worker, workers),
                        backends,
                        message_timeout_ms=message_timeout_ms,
                        upstream_filter=EXTPROC_CLUSTER if workers == 1 else worker_extproc_cluster(worker),
                    )
                )
        if not rewritten_by_router(route):
            out.extend(_pinned_clusters(route, message_timeout_ms))
    return out


def _pinned_clusters(route: Route, message_timeout_ms: int) -> list[dict[str, Any]]:
    """One single-backend cluster per backend that stores Responses (`routing.plan.pinned_cluster`):
    a stored response's calls reach only the backend that has it."""
    return [
        _cluster(
            pinned_cluster(route, index),
            [backend],
            message_timeout_ms=message_timeout_ms,
            upstream_filter=None,
        )
        for index, backend in enumerate(route.backends)
        if isinstance(adapter_for("responses", backend.provider), KeepsResponses)
    ]


def _cluster(
    name: str, backends: list[Backend], *, message_timeout_ms: int, upstream_filter: str | None
) -> dict[str, Any]:
    """One cluster: the backends at priority 0, 1, 2… in the order given.

    `upstream_filter`: the ext_proc cluster of the upstream-level filter run on each attempt (routes
    with several backends); None for a one-backend route, whose calls the router filter rewrites.
    """
    protocol: dict[str, Any] = {
        "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "upstream_http_protocol_options": {"auto_sni": True, "auto_san_validation": True},
        "explicit_http_config": {"http_protocol_options": {}},
    }
    if upstream_filter is not None:
        protocol["http_filters"] = [
            extproc_filter(
                "upstream",
                upstream=True,
                message_timeout_ms=message_timeout_ms,
                grpc_cluster=upstream_filter,
            ),
            {
                "name": "envoy.filters.http.upstream_codec",
                "typed_config": {
                    "@type": _T + "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                },
            },
        ]
    endpoints = []
    for priority, backend in enumerate(backends):
        endpoints.append(
            {
                "priority": priority,
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {
                                    "address": backend.host,
                                    "port_value": backend.port,
                                }
                            },
                            "hostname": backend.host,
                        },
                        "metadata": {
                            "filter_metadata": {
                                METADATA_NAMESPACE: {
                                    "backend": backend.name,
                                    "provider": backend.provider,
                                    "model": backend.model,
                                },
                                "envoy.transport_socket_match": {
                                    "tls": backend.scheme == "https",
                                },
                            }
                        },
                    }
                ],
            }
        )
    return {
        "@type": _T + "envoy.config.cluster.v3.Cluster",
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "per_connection_buffer_limit_bytes": 32 * 1024 * 1024,
        "load_assignment": {"cluster_name": name, "endpoints": endpoints},
        # Envoy otherwise spills a priority's traffic over to the next one on its own.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
        # A fallback is a retry, and Envoy's default allows 3 in flight per cluster: past that a
        # call gets the failed backend's answer. Each call's retries are bounded by its route's
        # max_attempts; the cap here is the cluster's request cap (Envoy's default 1024).
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_requests": MAX_CLUSTER_REQUESTS,
                    "max_retries": MAX_CLUSTER_REQUESTS,
                }
            ]
        },
        "transport_socket_matches": [
            {
                "name": "tls",
                "match": {"tls": True},
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": _T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "common_tls_context": {"validation_context": {"trusted_ca": {"filename": CA_BUNDLE}}},
                    },
                },
            },
            {
                "name": "plaintext",
                "match": {},
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {
                        "@type": _T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                    },
                },
            },
        ],
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": protocol
        },
    }


def _route_entry(route: Route) -> dict[str, Any]:
    retry_on = ["retriable-status-codes", "reset", "connect-failure"]
    if route.fallback.on_timeout:
        # Envoy has no timeout-only token: a per-try timeout counts as a gateway error (so do an
        # upstream's own 502/503/504 answers, which the default onStatus retries anyway).
        retry_on.append("gateway-error")
    action: dict[str, Any] = {
        # The router filter names this call's cluster (its backend order) in this header.
        "cluster_header": CLUSTER_HEADER,
        "auto_host_rewrite": True,
        # The whole-response timer would cut long streams; each attempt has its own timers instead.
        "timeout": "0s",
        "retry_policy": {
            "retry_on": ",".join(retry_on),
            "retriable_status_codes": list(route.fallback.on_status),
            # More attempts than backends wrap around (previous_priorities starts again at 0).
            "num_retries": max(0, route.fallback.max_attempts - 1),
            # One timer per attempt: to its first byte, then between any two bytes, so a stream
            # that goes silent is cut too. No per_try_timeout: once the response has started,
            # Envoy 1.40 ignores it when it fires, and that disarms the idle timer as well.
            "per_try_idle_timeout": f"{route.timeout_ms / 1000:.3f}s",
            "retry_priority": {
                "name": "envoy.retry_priorities.previous_priorities",
                "typed_config": {
                    "@type": _T + "envoy.extensions.retry.priority.previous_priorities.v3."
                    "PreviousPrioritiesConfig",
                    "update_frequency": 1,
                },
            },
            "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.010s"},
        },
    }
    if rewritten_by_router(route):
        # No upstream filter waits out a provider's retry-after on this route: Envoy does, within the
        # call's time (a longer wait is not honoured and the retry goes at once).
        longest = min(route.timeout_ms * route.fallback.max_attempts / 1000, MAX_UPSTREAM_HOLD_S)
        action["retry_policy"]["rate_limited_retry_back_off"] = {
            "reset_headers": [{"name": "retry-after", "format": "SECONDS"}],
            "max_interval": f"{longest:.3f}s",
        }
    return {
        "name": route.id,
        "match": {
            "prefix": "/",
            "headers": [{"name": ROUTE_HEADER, "string_match": {"exact": route.id}}],
        },
        "route": action,
        # Chosen by them already; a provider never sees the gateway's own headers.
        "request_headers_to_remove": list(INTERNAL_HEADERS),
    }


def route_configuration(config: GatewayConfig) -> dict[str, Any]:
    routes = [_route_entry(route) for route in config.routes]
    routes.append({"name": "unrouted", "match": {"prefix": "/"}, "route": {"cluster": BLACKHOLE_CLUSTER}})
    return {
        "@type": _T + "envoy.config.route.v3.RouteConfiguration",
        "name": ROUTE_CONFIG_NAME,
        "virtual_hosts": [{"name": "gateway", "domains": ["*"], "routes": routes}],
    }


def _discovery_response(version: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version_info": version, "resources": resources}


def write_dynamic_resources(config: GatewayConfig, directory: Path, *, workers: int = 1) -> None:
    """Write cds.json and rds.json for Envoy; each file is replaced by an atomic rename. Every
    worker writes them (the same bytes) before it serves a new config."""
    directory.mkdir(parents=True, exist_ok=True)
    version = config.version or "empty"
    _atomic_write(directory / "cds.json", _discovery_response(version, clusters(config, workers=workers)))
    _atomic_write(directory / "rds.json", _discovery_response(version, [route_configuration(config)]))


def _atomic_write(path: Path, document: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)
    os.replace(tmp, path)
