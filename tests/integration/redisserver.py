"""A real redis-server for the tests, on a free loopback port, which a test may stop, pause and restart."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tollway.ports import free_port as _free_port

ROOT = Path(__file__).resolve().parents[2]


def redis_binary() -> str:
    """redis-server from scripts/tools/redis.sh (`make tools` installs it; this never installs)."""
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tools" / "redis.sh")],
        env={**os.environ, "TOLLWAY_TOOLS_NO_BUILD": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise RuntimeError(f"redis-server is not available (run `make tools`):\n{found.stderr}")
    return found.stdout.strip().splitlines()[-1]


class _PortTaken(Exception):
    pass


class RedisServer:
    def __init__(
        self, workdir: Path, port: int | None = None, config: Mapping[str, str] | None = None
    ) -> None:
        """`config`: redis.conf settings over the defaults (e.g. `appendonly yes` for a restart that
        keeps the data)."""
        self.binary = redis_binary()
        self.config = dict(config or {})
        self.workdir = workdir
        self.port = port or _free_port()
        # A port we picked may be taken (by another process's outgoing connection) before
        # redis-server binds it; until the first start succeeds we may pick another.
        self._may_repick = port is None
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        for _ in range(5):
            try:
                self._start_once()
            except _PortTaken:
                if not self._may_repick:
                    raise RuntimeError(f"redis-server could not bind port {self.port}") from None
                self.port = _free_port()
                continue
            self._may_repick = False
            return
        raise RuntimeError("redis-server found no free port in 5 tries")

    def _start_once(self) -> None:
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child keeps its own copy
        with log:
            options = {
                "port": str(self.port),
                "bind": "127.0.0.1",
                "save": "",
                "appendonly": "no",
                "dir": str(self.workdir),
                "daemonize": "no",
                "protected-mode": "no",
                **self.config,
            }
            argv = [self.binary]
            for name, value in options.items():
                argv += [f"--{name}", value]
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = (self.workdir / "redis.log").read_text()
                if f"{self.port}: bind: Address already in use" in output[-2000:]:
                    (self.workdir / "redis.log").write_text("")
                    raise _PortTaken
                raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        stop_child(self.process, timeout_s=10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing answers (a hung Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture(scope="session", name="redis_server")
def redis_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free port for a test folder's session (each test uses its own keys);
    a folder's conftest imports this fixture to offer it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stop_child(process: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    """SIGTERM a child (woken first if a test paused it with SIGSTOP); SIGKILL it past `timeout_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
