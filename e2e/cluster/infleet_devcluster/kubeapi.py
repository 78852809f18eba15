"""The few API calls the pod runner makes, over httpx with the runner's own client certificate.

Pods are kept in memory by a LIST + WATCH (label-selected, so thousands of simulated pods cost nothing here);
everything else is a single GET, PATCH or DELETE.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger("infleet_devcluster.runner")


class KubeAPI:
    def __init__(self, server: str, ca: Path, cert: Path, key: Path) -> None:
        self.server = server
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self._ctx = ctx
        self.http = httpx.Client(base_url=server, verify=ctx, timeout=10, trust_env=False)

    def get(self, path: str) -> dict[str, Any] | None:
        r = self.http.get(path)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def patch_pod_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        r = self.http.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", content=json.dumps({"status": status}),
                            headers={"Content-Type": "application/merge-patch+json"})
        if r.status_code != 404:
            r.raise_for_status()

    def delete_pod_now(self, ns: str, name: str, uid: str) -> None:
        """What the kubelet does once the containers are gone: delete with grace 0, only that very pod (uid)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        r = self.http.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", content=json.dumps(body),
                              headers={"Content-Type": "application/json"})
        if r.status_code not in (404, 409):
            r.raise_for_status()

    def close(self) -> None:
        self.http.close()


class PodWatch:
    """An in-memory copy of the pods matching a label selector, kept current by a watch in a background thread."""

    def __init__(self, api: KubeAPI, label_selector: str) -> None:
        self.api = api
        self.selector = quote(label_selector)
        self._pods: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def start(self) -> PodWatch:
        self._thread.start()
        return self

    def pods(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._pods.values())

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                rv = self._list()
                backoff = 0.5
                self._watch(rv)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                if self._stop.is_set():
                    return
                log.warning("pod watch: %s; re-listing in %.1fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10)

    def _list(self) -> str:
        r = self.api.http.get(f"/api/v1/pods?labelSelector={self.selector}")
        r.raise_for_status()
        doc = r.json()
        with self._lock:
            self._pods = {p["metadata"]["uid"]: p for p in doc["items"]}
        self.synced.set()
        return str(doc["metadata"]["resourceVersion"])

    def _watch(self, rv: str) -> None:
        url = (f"/api/v1/pods?labelSelector={self.selector}&watch=1&allowWatchBookmarks=true"
               f"&resourceVersion={rv}&timeoutSeconds=300")
        with self.api.http.stream("GET", url, timeout=httpx.Timeout(10, read=330)) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if self._stop.is_set():
                    return
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":  # e.g. 410 Gone: the resourceVersion is too old; re-list
                    return
                if kind == "BOOKMARK":
                    continue
                with self._lock:
                    if kind == "DELETED":
                        self._pods.pop(obj["metadata"]["uid"], None)
                    else:
                        self._pods[obj["metadata"]["uid"]] = obj
