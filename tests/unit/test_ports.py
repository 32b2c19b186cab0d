"""free_port: ports a child binds a moment later, never from the range outgoing connections use."""

from __future__ import annotations

import socket

import pytest

from tollway import ports


def test_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    low = ports._ephemeral_low()
    picked = [ports.free_port() for _ in range(300)]
    assert len(set(picked)) == len(picked)
    assert all(1024 <= port < low for port in picked)


def test_a_port_someone_listens_on_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        tries = iter([taken, taken, taken + 1 if taken + 1 < 65536 else taken - 1])
        monkeypatch.setattr(ports.random, "randrange", lambda low, high: next(tries))
        monkeypatch.setattr(ports, "_handed_out", set())
        assert ports.free_port() != taken
