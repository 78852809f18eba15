"""The workers' admin token: one Secret per namespace (`infleet-worker-admin`, key `token`) that worker pods read
into `INFLEET_WORKER_ADMIN_TOKEN` and the operator sends as `Authorization: Bearer ...` when it promotes a warm
pod. Without it, anyone who can reach a worker's port could drain it (the process exits).

`ensure_admin_secret` runs before a namespace's worker Deployments are applied (it creates the Secret with a random
token when missing, and is a read otherwise); `CachedAdminTokens` is the read-only lookup `HttpWorkerState` takes.
The Secret carries no owner reference: it is shared by every InferenceDeployment in the namespace and outlives
them (deleting it would only lock the operator out of workers still running).
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import threading
import time
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from infleet.controller.kube import Kube, Obj
from infleet.controller.manifests import ADMIN_SECRET_KEY, ADMIN_SECRET_NAME, MANAGED_BY, MANAGER

log = logging.getLogger("infleet.controller")

TOKEN_BYTES = 32


def secret_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/secrets"
    return base if name is None else f"{base}/{name}"


def token_of(secret: Obj) -> str | None:
    """The token in a Secret read from the API (base64 in `data`), or None when absent or not decodable."""
    raw = (secret.get("data") or {}).get(ADMIN_SECRET_KEY)
    if not isinstance(raw, str) or not raw:
        return None
    try:
        token = base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return token or None


def _encoded(token: str) -> str:
    return base64.b64encode(token.encode()).decode()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def admin_secret_body(namespace: str, token: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": ADMIN_SECRET_NAME, "namespace": namespace, "labels": {MANAGED_BY: MANAGER}},
        "data": {ADMIN_SECRET_KEY: _encoded(token)},
    }


def ensure_admin_secret(kube: Kube, namespace: str) -> str:
    """The namespace's admin token, creating the Secret (random token) when it does not exist yet.

    Two operator replicas racing to create it both end up with the one that won (409 -> read it back). A Secret
    of that name without a usable token gets one (merge patch)."""
    path = secret_path(namespace, ADMIN_SECRET_NAME)
    existing = kube.get(path)
    if existing is None:
        token = new_token()
        try:
            kube.create(secret_path(namespace), admin_secret_body(namespace, token))
            log.info("created Secret %s/%s with the workers' admin token", namespace, ADMIN_SECRET_NAME)
            return token
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = kube.get(path)
        if existing is None:
            raise RuntimeError(f"Secret {namespace}/{ADMIN_SECRET_NAME} was created concurrently and is gone again")
    found = token_of(existing)
    if found is not None:
        return found
    token = new_token()
    kube.merge_patch(path, {"data": {ADMIN_SECRET_KEY: _encoded(token)}})
    log.warning("Secret %s/%s had no usable %r; a new token was written", namespace, ADMIN_SECRET_NAME,
                ADMIN_SECRET_KEY)
    return token


class CachedAdminTokens:
    """namespace -> admin token, read from the Secret (never created here) and kept `ttl_s` seconds, so a
    promotion burst reads each Secret once. An API error is logged and answered None (the promotion then goes
    without a token, the worker refuses it, and a cold pod is started instead)."""

    def __init__(self, kube: Kube, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube, self.ttl_s, self.clock = kube, ttl_s, clock
        self._cache: dict[str, tuple[float, str | None]] = {}

    def __call__(self, namespace: str) -> str | None:
        now = self.clock()
        hit = self._cache.get(namespace)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        try:
            secret = self.kube.get(secret_path(namespace, ADMIN_SECRET_NAME))
        except ApiException as exc:
            log.warning("cannot read Secret %s/%s (%s); promoting without the admin token", namespace,
                        ADMIN_SECRET_NAME, exc.status)
            return None
        token = token_of(secret) if secret is not None else None
        self._cache[namespace] = (now, token)
        return token


class AdminSecrets:
    """Makes sure each namespace that runs workers has its admin Secret, once per ``recheck_s`` per namespace
    (not on every reconcile: the Secret is not watched, and its existence rarely changes)."""

    def __init__(self, kube: Kube, recheck_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube, self.recheck_s, self.clock = kube, recheck_s, clock
        self.ensured: dict[str, float] = {}
        self.lock = threading.Lock()

    def __call__(self, namespace: str) -> None:
        now = self.clock()
        with self.lock:
            last = self.ensured.get(namespace)
            if last is not None and now - last < self.recheck_s:
                return
        ensure_admin_secret(self.kube, namespace)
        with self.lock:
            self.ensured[namespace] = now
