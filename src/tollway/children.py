"""Child processes of `tollway dev`, the tests and the benchmark: started in their own sessions,
restarted with backoff when they crash, stopped together."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Restarting a crashed child, as a kubelet does (CrashLoopBackOff), on a local scale: the first
# restart at once, then after 1, 2, 4 ... seconds up to 30; a child that has run for a minute
# starts again from an immediate restart.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
RESTART_RESET_AFTER_S = 60.0


@dataclass
class _Spec:
    argv: list[str]
    env: dict[str, str] | None
    cwd: Path | None
    since: float  # when the running process was started (monotonic)
    restarts: int = 0  # restarts in a row without a minute of running
    due: float | None = None  # when the exited process is restarted


@dataclass
class Children:
    """Child processes, each in its own session with its output in `<log_dir>/<name>.log`.

    Stopped together, newest first: SIGTERM to each process group, SIGKILL after the grace period,
    so nothing a child started is left behind. `restart_exited` starts a crashed child again with
    backoff. `tollway dev`, the tests and the benchmark share it.
    """

    log_dir: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    _specs: dict[str, _Spec] = field(default_factory=dict)

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, *, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        process = self._popen(name, argv, env, cwd)
        self.started.append((name, process))
        self._specs[name] = _Spec(argv, env, cwd, time.monotonic())
        return process

    def _popen(
        self, name: str, argv: list[str], env: dict[str, str] | None, cwd: Path | None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def exited(self, name: str | None = None) -> str | None:
        """Says which child (of that name, or any) has exited, with the tail of its log; else None."""
        for child, process in self.started:
            if (name is None or child == name) and process.poll() is not None:
                tail = (self.log_dir / f"{child}.log").read_text(errors="replace")[-3000:]
                return f"{child} exited with code {process.returncode}:\n{tail}"
        return None

    def restart_exited(self, now: float | None = None) -> list[str]:
        """Start again every child that has exited, once its backoff is over; what happened, one line each.

        The other children keep running: a sidecar that crashed comes back behind the same Envoy.
        """
        now = time.monotonic() if now is None else now
        notes: list[str] = []
        for i, (name, process) in enumerate(self.started):
            spec = self._specs[name]
            if process.poll() is None:
                if spec.restarts and now - spec.since >= RESTART_RESET_AFTER_S:
                    spec.restarts = 0
                continue
            if spec.due is None:
                delay = (
                    min(RESTART_BACKOFF_S * 2 ** (spec.restarts - 1), RESTART_BACKOFF_MAX_S)
                    if spec.restarts
                    else 0.0
                )
                spec.due = now + delay
                when = f"in {delay:.0f} s" if delay else "now"
                notes.append(
                    f"{name} exited with code {process.returncode}; restarting it {when} "
                    f"(log: {self.log_dir / f'{name}.log'})"
                )
            if now >= spec.due:
                restarted = self._popen(name, spec.argv, spec.env, spec.cwd)
                self.started[i] = (name, restarted)
                spec.restarts, spec.since, spec.due = spec.restarts + 1, now, None
                notes.append(f"{name} restarted (pid {restarted.pid}, restart {spec.restarts} in a row)")
        return notes

    def stop(self, grace: float = 10.0) -> None:
        for _name, process in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _name, process in reversed(self.started):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.started.clear()
        self._specs.clear()
