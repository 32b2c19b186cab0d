"""A private PostgreSQL cluster for the tests: initdb in a temp folder, on a free loopback port.

PostgreSQL refuses to run as root; when the tests run as root, the cluster belongs to (and runs
as) the `postgres` OS user that Debian's package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def postgres_bin() -> Path:
    """The bin directory from scripts/tools/postgres.sh (`make tools` installs it; this never installs)."""
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tools" / "postgres.sh")],
        env={**os.environ, "TOLLWAY_TOOLS_NO_BUILD": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise RuntimeError(
            f"PostgreSQL (initdb, pg_ctl) is not available (run `make tools`):\n{found.stderr}"
        )
    return Path(found.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "the tests run as root and PostgreSQL will not: create a `postgres` OS user "
                    "(Debian's postgresql package does) or run the tests as another user"
                ) from None
            self.user = "postgres"
        # Not under pytest's tmp_path: that is private to root, and the server runs as `postgres`.
        self.workdir = Path(tempfile.mkdtemp(prefix="tollway-pg-"))
        self.data = self.workdir / "data"
        if self.user:
            shutil.chown(self.workdir, self.user)
        self._databases = 0

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> None:
        """initdb on the first start; a later start (after `halt`) reuses the cluster and its port."""
        if not self.data.exists():
            init = [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"]
            made = self._run(*init, "-E", "UTF8", "--no-sync")
            if made.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{made.stdout}\n{made.stderr}")
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = self.workdir / "postgres.log"
        started = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start"
        )
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{started.stderr}\n{log.read_text()[-2000:]}")

    def halt(self) -> None:
        """Stop the server, keeping its data: PostgreSQL down, for the outage test."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (self.data / "postmaster.pid").exists():
            time.sleep(0.05)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database (one per test keeps the tests independent); returns its DSN."""
        import psycopg

        self._databases += 1
        name = f"ledger_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.workdir, ignore_errors=True)
