"""The sidecar process: ext_proc gRPC server, admin HTTP server, config follower."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from tollway_sidecar.admin import create_admin_app
from tollway_sidecar.cache import Coalescer, MemoryCacheStore
from tollway_sidecar.cache.redis_store import RedisCacheStore
from tollway_sidecar.cache.redis_vectors import RedisVectorStore
from tollway_sidecar.config.loader import ConfigError, FileWatcher, load_config_file
from tollway_sidecar.config.models import GatewayConfig
from tollway_sidecar.config.secret_watch import ApiAccess, SecretWatcher, parse_secret_ref
from tollway_sidecar.extproc.response_store import MemoryResponseStore, RedisResponseStore, ResponseStore
from tollway_sidecar.extproc.server import ExternalProcessor
from tollway_sidecar.limits import grpc_message_limit
from tollway_sidecar.providers.refresh import Refreshers
from tollway_sidecar.providers.sources import credential_sources
from tollway_sidecar.quota.gate import QuotaGate
from tollway_sidecar.quota.memory import MemoryStore
from tollway_sidecar.quota.redis_store import RedisStore
from tollway_sidecar.quota.store import QuotaStore, StoreUnavailable
from tollway_sidecar.quota.tokens import encodings_for, loaded, warm
from tollway_sidecar.runtime import CompiledConfig, Runtime
from tollway_sidecar.settings import SidecarSettings
from tollway_sidecar.telemetry import multiprocess_metrics
from tollway_sidecar.tracing import Tracing
from tollway_sidecar.xds import worker_address, write_dynamic_resources

log = logging.getLogger("tollway.sidecar")


def _initial_config(path: Path) -> GatewayConfig:
    try:
        return load_config_file(path)
    except ConfigError as exc:
        log.warning("starting with an empty config until a valid one appears: %s", exc)
        return GatewayConfig().with_checksum()


async def serve(
    settings: SidecarSettings, stop: asyncio.Event | None = None, *, worker: int = 0, workers: int = 1
) -> None:
    """Serve until `stop` is set. As worker `worker` of `workers` (`tollway_sidecar.workers`): on
    that worker's own ext_proc address, and the admin port only from worker 0."""
    stop = stop or asyncio.Event()
    config = _initial_config(settings.config_file)
    runtime = Runtime(
        CompiledConfig.build(config, worker=worker, workers=workers),
        max_request_bytes=settings.max_request_bytes,
        max_response_bytes=settings.max_response_bytes,
        replica=settings.replica,
        quota=await _quota_gate(settings, config),
        cache=_response_cache(settings),
        responses=_response_store(settings),
        tracing=Tracing.from_env(
            capture_content=settings.capture_content, redact_patterns=settings.redact_patterns
        ),
        credentials=Refreshers(credential_sources()),
    )
    runtime.worker_index = worker
    # Short-lived credentials before the first call needs them (a failure is logged and retried).
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.credentials.refresh_due(), timeout=CREDENTIALS_START_TIMEOUT_S)
    write_dynamic_resources(config, settings.xds_dir, workers=workers)

    def apply(new: GatewayConfig) -> None:
        missing = encodings_for(_models(new)) - loaded()
        if missing:  # load a new route's tokenizer off the event loop, before requests need it
            threading.Thread(target=warm, args=(missing,), name="tollway-tiktoken", daemon=True).start()
        compiled = CompiledConfig.build(new, worker=worker, workers=workers)
        write_dynamic_resources(new, settings.xds_dir, workers=workers)
        runtime.swap(compiled)
        log.info(
            "loaded config %s: %d keys, %d budgets, %d routes",
            new.version,
            len(new.keys),
            len(new.budgets),
            len(new.routes),
        )

    watcher = FileWatcher(settings.config_file, apply, settings.config_poll_seconds)
    secret_watcher = _secret_watcher(settings, apply, watcher, config)
    if config.checksum != GatewayConfig().with_checksum().checksum:
        watcher.last_digest = _digest_or_none(settings.config_file)

    address = worker_address(settings.extproc_address, worker, workers)
    _prepare_socket(address)
    # gRPC's default 4 MiB receive limit is below the request and answer limits: a body is one message.
    message_limit = grpc_message_limit(settings.max_request_bytes, settings.max_response_bytes)
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
        ]
    )
    ep_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(runtime), server)
    server.add_insecure_port(address)
    await server.start()

    admin: web.AppRunner | None = None
    if worker == 0:
        peers = [worker_address(settings.extproc_address, i, workers) for i in range(1, workers)]
        admin = web.AppRunner(create_admin_app(runtime, peers=peers), access_log=None)
        await admin.setup()
        await web.TCPSite(admin, settings.admin_host, settings.admin_port).start()
    refresh_task = asyncio.create_task(_refresh_gauges(runtime)) if multiprocess_metrics() else None
    watch_task = asyncio.create_task(watcher.run())
    secret_task = asyncio.create_task(secret_watcher.run()) if secret_watcher is not None else None
    credentials_task = asyncio.create_task(runtime.credentials.run())
    _tune_gc()
    log.info(
        "sidecar worker %d of %d ready: ext_proc on %s, admin %s, config %s",
        worker,
        workers,
        address,
        f"on http://{settings.admin_host}:{settings.admin_port}" if admin else "in worker 0",
        config.version,
    )
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        watch_task.cancel()
        credentials_task.cancel()
        if secret_task is not None:
            secret_task.cancel()
        if refresh_task is not None:
            refresh_task.cancel()
        await _drain(runtime)
        await server.stop(grace=DRAIN_GRACE_S)
        if admin is not None:
            await admin.cleanup()
        await runtime.quota.close()
        await runtime.drain_cache()
        await runtime.cache.close()
        await runtime.drain_responses()
        await runtime.responses.close()
        runtime.tracing.shutdown()  # flushes the spans still queued


async def _quota_gate(settings: SidecarSettings, config: GatewayConfig) -> QuotaGate:
    """Redis when a URL is set, else the in-memory store; the tokenizers the routes need loaded
    before serving."""
    await asyncio.to_thread(warm, encodings_for(_models(config)))
    if settings.redis_url is None:
        store: QuotaStore = MemoryStore()
        log.info("quota store: in memory (this process only; set TOLLWAY_REDIS_URL to share it)")
    else:
        redis_store = RedisStore(
            settings.redis_url,
            timeout_s=settings.redis_timeout_ms / 1000,
            password=settings.redis_password.get_secret_value() if settings.redis_password else None,
            usage_stream_maxlen=settings.usage_stream_maxlen,
        )
        try:
            await redis_store.ping()
            log.info("quota store: Redis at %s", redis_store.url.rsplit("@", 1)[-1])
        except StoreUnavailable as exc:  # start anyway: failure policies apply until it answers
            log.error("quota store unreachable at start-up: %s", exc)
        store = redis_store
    return QuotaGate(
        store,
        default_max_tokens=settings.quota_default_max_tokens,
        reservation_ttl_s=settings.quota_reservation_ttl_seconds,
        failure_policy=settings.quota_failure_policy,
    )


# A stopping gRPC server refuses new streams, and a call under way on a route that can fall back opens
# one per attempt: keep serving until the calls admitted have ended (or this long has passed).
DRAIN_CALLS_S = 4.0
CREDENTIALS_START_TIMEOUT_S = 10.0  # a slow token endpoint delays start-up no longer than this
DRAIN_GRACE_S = 5.0  # as before: the streams still open (a long answer) get this long


async def _drain(runtime: Runtime) -> None:
    if not await runtime.inflight.wait_empty(DRAIN_CALLS_S):
        log.warning("stopping with %d calls still under way", len(runtime.inflight.requests))


# How stale a worker's function gauges (open reservations, pending reconciliation) may be on the
# pod's /metrics: in multiprocess mode the aggregate reads files, not this process's functions.
GAUGE_REFRESH_S = 1.0


async def _refresh_gauges(runtime: Runtime) -> None:
    while True:
        runtime.metrics.refresh()
        await asyncio.sleep(GAUGE_REFRESH_S)


def _response_cache(settings: SidecarSettings) -> Coalescer:
    """The response cache's store: the quota store's Redis (its own client) when there is one, else
    this process's memory. Only routes whose cache is on use it."""
    if settings.redis_url is None:
        return Coalescer(MemoryCacheStore(max_bytes=settings.cache_memory_max_bytes))
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    store = RedisCacheStore(settings.redis_url, password=password)
    return Coalescer(store, vectors=RedisVectorStore(store))


def _response_store(settings: SidecarSettings) -> ResponseStore:
    """Which backend stored each Responses answer: in the quota store's Redis (its own client), else
    this process's memory (lost on restart, not shared with other replicas or workers)."""
    if settings.redis_url is None:
        log.info("stored-response records: in memory (set TOLLWAY_REDIS_URL to share them)")
        return MemoryResponseStore()
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return RedisResponseStore(
        settings.redis_url, password=password, timeout_s=settings.redis_timeout_ms / 1000
    )


def _models(config: GatewayConfig) -> set[str]:
    return {backend.model for route in config.routes for backend in route.backends}


# Collections of the youngest generation every 700 allocations (CPython's default) land on random
# requests: each ext_proc message allocates hundreds of short-lived objects. Most die young without
# cycles (reference counting frees them), so collect far less often.
GC_THRESHOLDS = (50_000, 50, 100)
# The span exporter's thread (and a tokenizer thread for a large prompt) keeps the GIL for up to
# this long while the event loop waits to answer Envoy; CPython's default is 5 ms. Measured at
# 250 calls/s (bench/ANALYSIS.md): p99 41-42 ms with the default, 19-20 ms with 0.5 ms; p50 and CPU
# per call unchanged.
SWITCH_INTERVAL_S = 0.0005


def _tune_gc() -> None:
    """Start-up is done: move what it allocated (config, encodings, modules) out of the collector's
    sight for good, collect less often, and hand the GIL back to the event loop sooner."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def _secret_watcher(
    settings: SidecarSettings,
    apply: Callable[[GatewayConfig], None],
    files: FileWatcher,
    config: GatewayConfig,
) -> SecretWatcher | None:
    """With TOLLWAY_CONFIG_SECRET: the API watch applies configs; the file only while it is down."""
    if settings.config_secret is None:
        return None
    namespace, name = parse_secret_ref(settings.config_secret)
    watcher = SecretWatcher(ApiAccess.discover(settings.kubeconfig), namespace, name, apply)
    watcher.applied_checksum = config.checksum
    files.on_config = watcher.file_fallback()
    return watcher


def _prepare_socket(address: str) -> None:
    """Start-up only: make the Unix socket's folder and remove a stale socket file."""
    if address.startswith("unix:"):
        socket_path = Path(address.removeprefix("unix:"))
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


def _digest_or_none(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def main(settings: SidecarSettings | None = None, *, worker: int = 0, workers: int = 1) -> None:
    settings = settings or SidecarSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the sidecar image
        runner = asyncio.run
    else:
        runner = uvloop.run

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop, worker=worker, workers=workers)

    runner(run())
