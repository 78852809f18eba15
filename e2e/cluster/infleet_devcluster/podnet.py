"""Loopback address ranges of one local cluster, derived from its port offset so two clusters never share one.

Every address is in 127.0.0.0/8: whatever dials a pod (the operator's scrape, a test) stays on this machine.
A cluster's *slot* is its port offset modulo 1024; offsets 0..1023 (the ones that do not already collide on
ports) get disjoint ranges:

- simulated pods (kwok assigns them; nothing listens): ``127.(100 + slot // 8).((slot % 8) * 32).0/19``,
  8,190 addresses, enough for the scale tests' thousands of pods;
- running pods (the pod runner assigns them; a real worker listens): ``127.(96 + slot // 256).(slot % 256).0/24``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

SLOTS = 1024


@dataclass(frozen=True, kw_only=True)
class PodNetwork:
    simulated: ipaddress.IPv4Network
    running: ipaddress.IPv4Network

    @classmethod
    def for_offset(cls, offset: int) -> PodNetwork:
        if offset < 0:
            raise ValueError(f"INFLEET_CLUSTER_PORT_OFFSET must be >= 0, got {offset}")
        slot = offset % SLOTS
        simulated = ipaddress.IPv4Network(f"127.{100 + slot // 8}.{(slot % 8) * 32}.0/19")
        running = ipaddress.IPv4Network(f"127.{96 + slot // 256}.{slot % 256}.0/24")
        return cls(simulated=simulated, running=running)

    @classmethod
    def from_env(cls) -> PodNetwork:
        return cls.for_offset(int(os.environ.get("INFLEET_CLUSTER_PORT_OFFSET", "0")))


class AddressPool:
    """Hands out the running range's host addresses, lowest free first; a released address is reused."""

    def __init__(self, network: ipaddress.IPv4Network) -> None:
        self.network = network
        self._taken: set[ipaddress.IPv4Address] = set()

    def claim(self, address: str) -> None:
        """Mark an address already in use (a pod that kept its IP across a runner restart)."""
        ip = ipaddress.IPv4Address(address)
        if ip in self.network:
            self._taken.add(ip)

    def allocate(self) -> str:
        for ip in self.network.hosts():
            if ip not in self._taken:
                self._taken.add(ip)
                return str(ip)
        raise RuntimeError(f"no free address left in {self.network}")

    def release(self, address: str) -> None:
        self._taken.discard(ipaddress.IPv4Address(address))
