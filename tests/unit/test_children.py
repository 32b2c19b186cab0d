"""`tollway dev`'s child supervisor: a crashed child comes back, with a kubelet-like backoff."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tollway.dev import Children


def wait_exit(children: Children, name: str) -> None:
    deadline = time.monotonic() + 10
    while children.exited(name) is None:
        assert time.monotonic() < deadline, f"{name} did not exit"
        time.sleep(0.01)


def test_a_crashing_child_is_restarted_at_once_then_after_1_then_2_seconds(tmp_path: Path) -> None:
    children = Children(tmp_path)
    first = children.spawn("crasher", ["sh", "-c", "exit 3"])
    try:
        wait_exit(children, "crasher")
        t0 = time.monotonic()
        notes = children.restart_exited(t0)
        assert notes[0].startswith("crasher exited with code 3; restarting it now (log: ")
        assert notes[1].startswith("crasher restarted (pid ") and notes[1].endswith("restart 1 in a row)")
        assert children.started[0][1] is not first

        wait_exit(children, "crasher")
        assert children.restart_exited(t0 + 0.1) == [
            f"crasher exited with code 3; restarting it in 1 s (log: {tmp_path / 'crasher.log'})"
        ]
        assert children.restart_exited(t0 + 0.5) == []  # still backing off
        assert children.restart_exited(t0 + 1.2)[0].endswith("restart 2 in a row)")

        wait_exit(children, "crasher")
        assert "restarting it in 2 s" in children.restart_exited(t0 + 1.3)[0]
    finally:
        children.stop()


def test_a_minute_of_running_resets_the_backoff(tmp_path: Path) -> None:
    children = Children(tmp_path)
    children.spawn("flaky", ["sh", "-c", "exit 1"])
    try:
        wait_exit(children, "flaky")
        t = time.monotonic()
        children.restart_exited(t)  # restart 1, at once; it crashes again
        children._specs["flaky"].argv = ["sleep", "120"]  # from now on it stays up
        wait_exit(children, "flaky")
        children.restart_exited(t + 0.1)  # restart 2 is due in 1 s
        assert children.restart_exited(t + 1.2)[0].endswith("restart 2 in a row)")
        assert children.exited("flaky") is None
        assert children.restart_exited(t + 1.2 + 61) == []  # a minute up: the backoff starts over
        os.kill(children.started[0][1].pid, signal.SIGKILL)
        wait_exit(children, "flaky")
        notes = children.restart_exited(t + 1.2 + 62)
        assert "exited with code -9; restarting it now" in notes[0]
        assert notes[1].endswith("restart 1 in a row)")
    finally:
        children.stop()
