"""A small JSON-in/JSON-out Kubernetes client over the official client's transport (auth, TLS, kubeconfig).

The operator deals in plain dicts (what the pure snapshot and manifest functions take and return), so this
wraps the generic request path instead of the generated typed models. Transient failures (connection errors,
429, 5xx) are retried with exponential backoff here; anything else raises `ApiException` at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

FIELD_MANAGER = "infleet"
TRANSIENT_STATUSES = frozenset({0, 408, 429, 500, 502, 503, 504})

Obj = dict[str, Any]


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the API server was unreachable, overloaded or briefly failing."""
    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUSES
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


_retry = retry(
    retry=retry_if_exception(is_transient),
    stop=stop_after_attempt(4),
    wait=wait_exponential(multiplier=0.2, max=3),
    reraise=True,
)


class Kube:
    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.api = api

    @classmethod
    def connect(cls, kubeconfig: Path | None = None, *, connections: int | None = None) -> Kube:
        """A kubeconfig when given, else the in-cluster service account, else the default kubeconfig.

        ``connections``: how many connections to the API server are kept open for reuse. The official client sizes
        its pool from the host's CPU count (10 on a 2-core machine, hundreds on a big node, whatever the pod's CPU
        limit); every watch holds one for its life, so a pool smaller than watches plus concurrent requests opens,
        handshakes and drops a TLS connection per request once it is full.
        """
        cfg = k8s_client.Configuration()
        if kubeconfig is not None:
            k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException:
                k8s_config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        if connections is not None:
            cfg.connection_pool_maxsize = connections
        return cls(k8s_client.ApiClient(configuration=cfg))

    @_retry
    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str | None = None,
    ) -> Obj:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        method_, url, hdrs, data, _ = self.api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(method_, url, hdrs, data)
        raw = resp.read()  # type: ignore[no-untyped-call]
        if not 200 <= resp.status < 300:
            raise ApiException(http_resp=resp)
        return cast(Obj, json.loads(raw)) if raw else {}

    def get(self, path: str) -> Obj | None:
        try:
            return self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, path: str, label_selector: str | None = None, field_selector: str | None = None) -> list[Obj]:
        query: dict[str, str] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        items = self.request("GET", path, query=query).get("items") or []
        return cast(list[Obj], items)

    def apply(self, path: str, body: Obj) -> Obj:
        """Server-side apply: creates or converges, and is a no-op when nothing changed."""
        return self.request(
            "PATCH",
            path,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    def merge_patch(self, path: str, body: Obj) -> Obj:
        return self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body=body)

    def delete(self, path: str) -> bool:
        """Delete with background propagation; False when it was already gone."""
        try:
            self.request("DELETE", path, body={"propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def watch(self, path: str, *, query: Mapping[str, str], timeout_s: float) -> Iterator[Obj]:
        """Watch events (``{"type": ..., "object": ...}``) of a list path, streamed line by line.

        No retries here: the informer that calls it relists and resumes (a watch is long-lived by design).
        """
        method_, url, hdrs, data, _ = self.api.param_serialize(
            "GET",
            path,
            query_params=[*query.items(), ("watch", "true"), ("timeoutSeconds", str(int(timeout_s)))],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(method_, url, hdrs, data, _request_timeout=(5.0, timeout_s + 10.0))
        raw = resp.response
        try:
            if not 200 <= resp.status < 300:
                raise ApiException(status=resp.status, reason=resp.reason)
            pending = b""
            for chunk in raw.stream(64 * 1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield cast(Obj, json.loads(line))
        finally:
            raw.release_conn()
