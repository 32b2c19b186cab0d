"""Several sidecar worker processes in one Pod: a parent that forks them and keeps them running.

One Python process is one core (the GIL). With `workers` > 1 the parent loads what every worker
only reads — the config, the tokenizers, the price catalogue — and forks the workers, so those pages
are shared. It never imports gRPC: a gRPC core must not be running across a fork, so each worker
starts its own after the fork (`app.main`).

Each worker serves ext_proc on its own address (`xds.worker_address`), which Envoy's ext_proc
cluster lists as one endpoint each; the calls a worker admits name its own copies of the clusters
with an upstream filter, so every attempt of a call comes back to the worker holding its state
(`xds.cluster_for`). Worker 0 also serves the admin port: `/metrics` aggregates every worker's
metrics (prometheus_client's multiprocess mode, files in `metrics_dir`), and `/readyz` fails while
any worker's address does not answer. A worker that dies is restarted (after a back-off if it keeps
dying); SIGTERM to the parent drains every worker (each stops its gRPC server with a grace period).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.context import ForkProcess
from pathlib import Path
from types import FrameType

from tollway_sidecar.settings import SidecarSettings

log = logging.getLogger("tollway.sidecar.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A worker that lived at least this long had a healthy run: restart it at once if it dies.
HEALTHY_RUN_S = 30.0
MAX_BACKOFF_S = 30.0
# SIGTERM to the workers, then this long for their calls to finish before SIGKILL.
DRAIN_GRACE_S = 20.0


class WorkersError(Exception):
    """Settings that cannot run several workers."""


def check_workers(settings: SidecarSettings) -> None:
    """Refuse settings under which several workers would not share what must be shared."""
    if settings.workers > 1 and settings.redis_url is None:
        raise WorkersError(
            f"TOLLWAY_WORKERS={settings.workers} needs TOLLWAY_REDIS_URL: the in-memory quota store "
            "and outbox live in one process, so several workers would each enforce budgets alone. "
            "Set TOLLWAY_REDIS_URL, or TOLLWAY_WORKERS=1."
        )


def backoff(failures: int) -> float:
    """Seconds before restarting a worker that died `failures` times in a row (0 for the first)."""
    if failures <= 1:
        return 0.0
    return min(MAX_BACKOFF_S, 0.5 * 2.0 ** (failures - 2))


def prepare_metrics_dir(directory: Path | None) -> Path:
    """The multiprocess metrics folder, emptied (files of an earlier run would be summed in)."""
    path = directory or Path(tempfile.mkdtemp(prefix="tollway-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path


def _preload(settings: SidecarSettings) -> None:
    """What every worker only reads, loaded before the fork so the pages are shared."""
    from tollway_sidecar.config.loader import ConfigError, load_config_file
    from tollway_sidecar.pricing import PriceBook
    from tollway_sidecar.quota.tokens import encodings_for, warm

    try:
        config = load_config_file(settings.config_file)
    except ConfigError:
        return  # the workers start with an empty config and log why
    warm(encodings_for({backend.model for route in config.routes for backend in route.backends}))
    PriceBook(config)  # loads the genai-prices catalogue
    # Out of the collector's sight before the fork: a collection in a worker would write to (and so
    # copy) every shared page holding these objects.
    gc.collect()
    gc.freeze()


@dataclass
class _Slot:
    index: int
    process: ForkProcess
    started: float
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Forks `settings.workers` workers, restarts the ones that die, drains them all on SIGTERM."""

    def __init__(self, settings: SidecarSettings) -> None:
        self.settings = settings
        self.count = settings.workers
        self._context = multiprocessing.get_context("fork")
        self._stopping = False
        self._slots: dict[int, _Slot] = {}

    def _start(self, index: int, failures: int = 0) -> _Slot:
        process = self._context.Process(
            target=_run_worker, args=(self.settings, index, self.count), name=f"tollway-worker-{index}"
        )
        process.start()
        log.info("worker %d started (pid %s)", index, process.pid)
        return _Slot(index, process, time.monotonic(), failures)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(self.count):
            self._slots[index] = self._start(index)
        while not self._stopping:
            self._reap()
        return self._drain()

    def _reap(self) -> None:
        live = [slot.process.sentinel for slot in self._slots.values() if slot.restart_at is None]
        wait(live, timeout=0.2)
        now = time.monotonic()
        for slot in list(self._slots.values()):
            if self._stopping:
                return
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    self._slots[slot.index] = self._start(slot.index, slot.failures)
                continue
            if slot.process.is_alive():
                continue
            _mark_dead(slot.process.pid)
            failures = 1 if now - slot.started >= HEALTHY_RUN_S else slot.failures + 1
            delay = backoff(failures)
            log.error(
                "worker %d (pid %s) exited with %s; restarting it in %.1f s",
                slot.index,
                slot.process.pid,
                slot.process.exitcode,
                delay,
            )
            slot.failures = failures
            slot.restart_at = now + delay

    def _drain(self) -> int:
        log.info("stopping %d workers", self.count)
        running = [slot.process for slot in self._slots.values() if slot.restart_at is None]
        for process in running:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_GRACE_S
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %s did not stop in %.0f s; killing it", process.pid, DRAIN_GRACE_S)
                process.kill()
                process.join()
        return 0


def _mark_dead(pid: int | None) -> None:
    """Drop a dead worker's live gauges from the aggregate (its counters stay counted)."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _run_worker(settings: SidecarSettings, index: int, count: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the parent, which drains
    from tollway_sidecar.app import main as app_main

    app_main(settings, worker=index, workers=count)


def main(settings: SidecarSettings | None = None) -> None:
    """The sidecar's entry point: one process, or a parent of `workers` workers."""
    settings = settings or SidecarSettings()
    if settings.workers == 1:
        from tollway_sidecar.app import main as app_main

        app_main(settings)
        return
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        check_workers(settings)
    except WorkersError as exc:
        raise SystemExit(f"tollway sidecar: {exc}") from None
    # Before prometheus_client is imported anywhere: it picks its value store at import.
    metrics_dir = prepare_metrics_dir(settings.metrics_dir)
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    started = time.monotonic()
    _preload(settings)
    log.info(
        "%d workers: shared data loaded in %.2f s, metrics in %s",
        settings.workers,
        time.monotonic() - started,
        metrics_dir,
    )
    raise SystemExit(Supervisor(settings).run())
