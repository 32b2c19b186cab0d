"""The sidecar process: ext_proc gRPC server, admin HTTP server, config follower."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import grpc
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from tollway_sidecar.admin import create_admin_app
from tollway_sidecar.config.loader import ConfigError, FileWatcher, load_config_file
from tollway_sidecar.config.models import GatewayConfig
from tollway_sidecar.extproc.server import ExternalProcessor
from tollway_sidecar.runtime import CompiledConfig, Runtime
from tollway_sidecar.settings import SidecarSettings
from tollway_sidecar.xds import write_dynamic_resources

log = logging.getLogger("tollway.sidecar")


def _initial_config(path: Path) -> GatewayConfig:
    try:
        return load_config_file(path)
    except ConfigError as exc:
        log.warning("starting with an empty config until a valid one appears: %s", exc)
        return GatewayConfig().with_checksum()


async def serve(settings: SidecarSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    config = _initial_config(settings.config_file)
    runtime = Runtime(CompiledConfig.build(config), max_request_bytes=settings.max_request_bytes)
    write_dynamic_resources(config, settings.xds_dir)

    def apply(new: GatewayConfig) -> None:
        compiled = CompiledConfig.build(new)
        write_dynamic_resources(new, settings.xds_dir)
        runtime.swap(compiled)
        log.info(
            "loaded config %s: %d keys, %d budgets, %d routes",
            new.version,
            len(new.keys),
            len(new.budgets),
            len(new.routes),
        )

    watcher = FileWatcher(settings.config_file, apply, settings.config_poll_seconds)
    if config.checksum != GatewayConfig().with_checksum().checksum:
        watcher.last_digest = _digest_or_none(settings.config_file)

    _prepare_socket(settings.extproc_address)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    ep_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(runtime), server)
    server.add_insecure_port(settings.extproc_address)
    await server.start()

    admin = web.AppRunner(create_admin_app(runtime), access_log=None)
    await admin.setup()
    await web.TCPSite(admin, settings.admin_host, settings.admin_port).start()
    watch_task = asyncio.create_task(watcher.run())
    log.info(
        "sidecar ready: ext_proc on %s, admin on http://%s:%d, config %s",
        settings.extproc_address,
        settings.admin_host,
        settings.admin_port,
        config.version,
    )
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        watch_task.cancel()
        await server.stop(grace=5)
        await admin.cleanup()


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


def main(settings: SidecarSettings | None = None) -> None:
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
        await serve(settings, stop)

    runner(run())
