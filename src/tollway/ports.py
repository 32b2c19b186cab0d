"""Free loopback ports for child processes that bind them a moment later.

`bind(("127.0.0.1", 0))` hands out a port from the kernel's ephemeral range, the same range every
outgoing connection takes its local port from; between the pick and the child's bind, a connection
may take it. Ports picked below that range cannot be taken that way, and this process never hands
out the same port twice.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_WINDOW = 12_000
_handed_out: set[int] = set()
_lock = threading.Lock()


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback TCP port that was free just now, outside the ephemeral range where possible."""
    high = _ephemeral_low()
    low = max(1024, high - _WINDOW)
    with _lock:
        for _ in range(200):
            port = random.randrange(low, high) if high > low else 0
            if port in _handed_out:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                chosen = int(sock.getsockname()[1])
            _handed_out.add(chosen)
            return chosen
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
