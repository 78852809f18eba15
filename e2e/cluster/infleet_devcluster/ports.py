"""Free TCP ports for the local servers tests and scenarios start (operators, gateways, workers).

Binding port 0 and closing the socket hands out a port the kernel may give again: to the next bind(0) in the same
process (an operator's metrics and liveness ports once came out equal; prometheus-client's server then answered
the liveness probe, and the operator died on its own bind) or as the source port of any outgoing connection, since
bind(0) draws from the ephemeral range. So ports come from below that range (and above the local clusters' fixed
ports, 12379-21300 with every offset), are checked free by binding, and are never handed out twice per process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

LOW = 22000  # above the local clusters' fixed ports (etcd 12379+, apiserver 16443+, controllers 20247+; offset < 1024)
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_handed: set[int] = set()
_lock = threading.Lock()


def ephemeral_low() -> int:
    """The first port the kernel hands out as a source port (32768 when it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range, not returned before by this process."""
    high = ephemeral_low()
    with _lock:
        for _ in range(500):
            port = random.randrange(LOW, high) if high > LOW + 100 else 0
            if port in _handed:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                port = int(s.getsockname()[1])
            if port not in _handed:
                _handed.add(port)
                return port
    raise RuntimeError(f"no free port found between {LOW} and {high}")
