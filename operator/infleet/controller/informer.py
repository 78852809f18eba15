"""A small list-and-watch informer: keeps a watch stream per resource and feeds every event to one callback.

Used for the cluster-wide, high-volume kinds (Pods, Nodes) whose device use the capacity ledger needs whatever
namespaces the operator serves. A relist (first start, an expired resourceVersion, a broken stream) reconciles the
index with what exists: objects that vanished meanwhile are delivered as DELETED. Connection trouble is retried
every ``retry_s`` (reconciles resume within seconds of the API server's return) and logged at most once per
``log_every_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubernetes.client.exceptions import ApiException

from infleet.controller.kube import Kube, Obj, is_transient

log = logging.getLogger("infleet.controller")

Handler = Callable[[str, str | None, Obj], None]


@dataclass
class Informer:
    kube: Kube
    kind: str
    path: str
    handler: Handler
    query: Mapping[str, str] = field(default_factory=dict)
    watch_timeout_s: float = 300.0
    retry_s: float = 1.0
    log_every_s: float = 30.0
    stop: threading.Event = field(default_factory=threading.Event)
    synced: threading.Event = field(default_factory=threading.Event)
    known: set[tuple[str, str]] = field(default_factory=set)
    _last_log: float = 0.0
    _failures: int = 0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"informer-{self.kind}", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                version = self._relist()
                self.synced.set()
                self._watch(version)
                self._failures = 0
            except Exception as exc:
                self._trouble(exc)
                self.stop.wait(self.retry_s)

    def _relist(self) -> str:
        listing = self.kube.request("GET", self.path, query=dict(self.query))
        seen: set[tuple[str, str]] = set()
        for item in listing.get("items") or []:
            item.setdefault("kind", self.kind)
            item.setdefault("apiVersion", listing.get("apiVersion", "v1"))
            seen.add(_key(item))
            self.handler(self.kind, "ADDED", item)
        for namespace, name in self.known - seen:
            self.handler(self.kind, "DELETED", {"metadata": {"namespace": namespace, "name": name}})
        self.known = seen
        if self._failures:
            log.info("watch of %s resumed after %d failure(s)", self.kind, self._failures)
            self._failures = 0
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> None:
        query = {**self.query, "resourceVersion": version, "allowWatchBookmarks": "true"}
        for event in self.kube.watch(self.path, query=query, timeout_s=self.watch_timeout_s):
            if self.stop.is_set():
                return
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":  # 410 Gone (an expired version) and friends: relist
                return
            if kind == "BOOKMARK":
                continue
            key = _key(obj)
            if kind == "DELETED":
                self.known.discard(key)
            else:
                self.known.add(key)
            self.handler(self.kind, kind, obj)

    def _trouble(self, exc: Exception) -> None:
        self._failures += 1
        now = time.monotonic()
        if now - self._last_log >= self.log_every_s:
            transient = is_transient(exc) or (isinstance(exc, ApiException) and exc.status == 410)
            log.warning("watch of %s %s (%d failure(s) so far; retrying every %gs): %s", self.kind,
                        "interrupted" if transient else "failed", self._failures, self.retry_s, exc)  # fmt: skip
            self._last_log = now


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""
