"""A private PostgreSQL cluster for the tests: initdb in a temp folder, on a free loopback port.

PostgreSQL refuses to run as root; when the tests run as root, the cluster belongs to (and runs
as) the `postgres` OS user that Debian's package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tollway.ports import free_port as _free_port

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
        self._started = False

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self, _tries: int = 5) -> None:
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
        taken = log.exists() and "Address already in use" in log.read_text()
        if started.returncode != 0 and taken and not self._started and _tries > 1:
            # The port we picked was taken before the server bound it: pick another (first start only;
            # a restart after `halt` must keep its port).
            log.write_text("")
            self.port = _free_port()
            self.start(_tries - 1)
            return
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{started.stderr}\n{log.read_text()[-2000:]}")
        self._started = True

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
