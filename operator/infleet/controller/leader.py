"""Leader election on a coordination.k8s.io Lease: one operator replica acts, the others stay warm and take over.

The holder renews every ``renew_s``; a Lease not renewed for ``lease_s`` may be taken by another replica (with the
Lease's resourceVersion, so two cannot take it at once). A replica that stops gracefully releases the Lease, so a
rolling update hands over at once; one killed hard is replaced after ``lease_s``. Followers keep their watch indexes
up to date, so the new leader's first reconciles need no warm-up. Times on the Lease are the API's MicroTime.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from kubernetes.client.exceptions import ApiException

from infleet.controller.kube import Kube, Obj

log = logging.getLogger("infleet.controller")


def micro_time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class LeaseElector:
    kube: Kube
    namespace: str
    name: str
    identity: str
    lease_s: float = 4.0
    renew_s: float = 1.0
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    on_change: Callable[[bool], None] = lambda leading: None
    stop: threading.Event = field(default_factory=threading.Event)
    _leading: bool = False

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def is_leader(self) -> bool:
        return self._leading

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._set(self.try_acquire_or_renew())
            except Exception as exc:  # API trouble: lead no longer than the lease we hold could still be valid
                log.warning("leader election: %s", exc)
                self._set(False)
            self.stop.wait(self.renew_s)

    def _set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info("%s leadership of %s/%s as %s", "took" if leading else "lost", self.namespace, self.name,
                     self.identity)  # fmt: skip
            self.on_change(leading)

    def try_acquire_or_renew(self) -> bool:
        now = self.clock()
        lease = self.kube.get(self.path)
        if lease is None:
            return self._create(now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = parse_micro_time(spec.get("renewTime")) or parse_micro_time(spec.get("acquireTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.lease_s)
        expired = renewed is None or now - renewed > timedelta(seconds=duration)
        if holder != self.identity and holder and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        new_spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_s),
            "renewTime": micro_time(now),
            "leaseTransitions": transitions,
        }
        if holder != self.identity:
            new_spec["acquireTime"] = micro_time(now)
        return self._patch(lease, new_spec)

    def release(self) -> None:
        """Give the Lease up (on a graceful stop) so a peer takes over without waiting for it to expire."""
        self.stop.set()
        if not self._leading:
            return
        try:
            lease = self.kube.get(self.path)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                self._patch(lease, {"holderIdentity": None, "renewTime": None, "acquireTime": None})
        except Exception as exc:
            log.warning("could not release the lease %s/%s: %s", self.namespace, self.name, exc)
        self._set(False)

    def _create(self, now: datetime) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_s),
                "acquireTime": micro_time(now),
                "renewTime": micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            self.kube.create(f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body)
        except ApiException as exc:
            if exc.status == 409:  # a peer created it first
                return False
            raise
        return True

    def _patch(self, lease: Obj, spec: Obj) -> bool:
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        try:
            self.kube.merge_patch(self.path, patch)
        except ApiException as exc:
            if exc.status == 409:  # someone else changed it since we read it
                return False
            raise
        return True
