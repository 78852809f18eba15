"""Lease leader election with an injected clock: one leader, takeover after expiry, instant handover on release."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from infleet.controller.leader import LeaseElector
from tests.unit.controller.fakekube import FakeKube

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def pair() -> tuple[FakeKube, Clock, LeaseElector, LeaseElector]:
    kube, clock = FakeKube(), Clock()
    a = LeaseElector(kube, "infleet", "infleet", "a", lease_s=4, clock=clock)  # type: ignore[arg-type]
    b = LeaseElector(kube, "infleet", "infleet", "b", lease_s=4, clock=clock)  # type: ignore[arg-type]
    return kube, clock, a, b


def test_one_leader_at_a_time_and_renewals_keep_it() -> None:
    _, clock, a, b = pair()
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    for _ in range(10):
        clock.now += timedelta(seconds=1)
        assert a.try_acquire_or_renew() is True
        assert b.try_acquire_or_renew() is False


def test_a_dead_leader_is_replaced_after_the_lease_expires() -> None:
    kube, clock, a, b = pair()
    assert a.try_acquire_or_renew()
    clock.now += timedelta(seconds=3)
    assert b.try_acquire_or_renew() is False  # not expired yet
    clock.now += timedelta(seconds=1.5)
    assert b.try_acquire_or_renew() is True  # 4.5 s without a renewal: taken over
    lease = kube.objects["/apis/coordination.k8s.io/v1/namespaces/infleet/leases/infleet"]
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    assert a.try_acquire_or_renew() is False  # the old leader, back, does not fight


def test_release_hands_over_at_once() -> None:
    _, _, a, b = pair()
    assert a.try_acquire_or_renew()
    a._leading = True
    a.release()
    assert a.is_leader() is False
    assert b.try_acquire_or_renew() is True  # no waiting for expiry


def test_a_concurrent_update_loses_on_the_resource_version() -> None:
    kube, clock, a, b = pair()
    assert a.try_acquire_or_renew()
    clock.now += timedelta(seconds=10)
    lease_path = a.path
    stale = kube.get(lease_path)
    assert b.try_acquire_or_renew() is True
    assert stale is not None
    assert a._patch(stale, {"holderIdentity": "a"}) is False  # the version b wrote wins
