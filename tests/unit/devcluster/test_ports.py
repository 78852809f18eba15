"""Ports for local test servers: free, distinct within a run, and never from the kernel's ephemeral range."""

from __future__ import annotations

import socket

import pytest

from infleet_devcluster import ports
from infleet_devcluster.ports import LOW, ephemeral_low, free_port


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)  # an operator's metrics and liveness ports once came out equal
    high = ephemeral_low()
    assert all(LOW <= p < high for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # nothing holds it


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        for candidate in range(LOW + 5000, LOW + 6000):  # a port in the range, held by someone else
            try:
                held.bind(("127.0.0.1", candidate))
                break
            except OSError:
                continue
        held.listen()
        taken = held.getsockname()[1]
        draws = iter([taken, taken + 1, taken + 2, taken + 3])
        monkeypatch.setattr(ports.random, "randrange", lambda low, high: next(draws))
        got = ports.free_port()
    assert got != taken and got in (taken + 1, taken + 2, taken + 3)
