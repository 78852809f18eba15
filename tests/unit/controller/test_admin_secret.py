"""The workers' admin Secret: created once per namespace with a random token, read back afterwards, repaired
when its token is unusable, and races between operator replicas end on one token."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from infleet.controller.admin_secret import CachedAdminTokens, ensure_admin_secret, secret_path, token_of
from infleet.controller.manifests import ADMIN_SECRET_KEY, ADMIN_SECRET_NAME


class SecretStore:
    """Thin stand-in for the Secrets API: get / create (409 when it exists) / merge patch."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.race: dict[str, Any] | None = None  # created by "another replica" just before our create lands
        self.fail_get = False

    def get(self, path: str) -> dict[str, Any] | None:
        self.calls.append(f"get {path}")
        if self.fail_get:
            raise ApiException(status=403, reason="Forbidden")
        return self.objects.get(path)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"create {path}")
        name = f"{path}/{body['metadata']['name']}"
        if self.race is not None:
            self.objects[name], self.race = self.race, None
        if name in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[name] = body
        return body

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"patch {path}")
        self.objects[path].setdefault("data", {}).update(body["data"])
        return self.objects[path]


PATH = secret_path("team-a", ADMIN_SECRET_NAME)


def stored_token(store: SecretStore) -> str | None:
    return token_of(store.objects[PATH])


def test_creates_a_random_token_once_then_reads_it() -> None:
    store = SecretStore()
    first = ensure_admin_secret(store, "team-a")  # type: ignore[arg-type]
    assert len(first) >= 40 and stored_token(store) == first
    body = store.objects[PATH]
    assert body["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "infleet"}
    assert "ownerReferences" not in body["metadata"]  # shared by the namespace, outlives deployments
    assert ensure_admin_secret(store, "team-a") == first  # type: ignore[arg-type]
    assert [c.split()[0] for c in store.calls] == ["get", "create", "get"]
    other = SecretStore()
    assert ensure_admin_secret(other, "team-a") != first  # type: ignore[arg-type]


def test_a_concurrent_create_wins_and_its_token_is_returned() -> None:
    store = SecretStore()
    store.race = {"metadata": {"name": ADMIN_SECRET_NAME},
                  "data": {ADMIN_SECRET_KEY: base64.b64encode(b"theirs").decode()}}
    assert ensure_admin_secret(store, "team-a") == "theirs"  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [{}, {ADMIN_SECRET_KEY: ""}, {ADMIN_SECRET_KEY: "%%% not base64"}])
def test_a_secret_without_a_usable_token_gets_one(data: dict[str, str]) -> None:
    store = SecretStore()
    store.objects[PATH] = {"metadata": {"name": ADMIN_SECRET_NAME}, "data": dict(data)}
    token = ensure_admin_secret(store, "team-a")  # type: ignore[arg-type]
    assert token and stored_token(store) == token
    assert store.calls[-1] == f"patch {PATH}"


def test_other_api_errors_propagate() -> None:
    store = SecretStore()
    store.fail_get = True
    with pytest.raises(ApiException):
        ensure_admin_secret(store, "team-a")  # type: ignore[arg-type]


def test_cached_lookup_reads_each_namespace_once_per_ttl_and_never_creates() -> None:
    store = SecretStore()
    now = [0.0]
    tokens = CachedAdminTokens(store, ttl_s=60, clock=lambda: now[0])  # type: ignore[arg-type]
    assert tokens("team-a") is None  # not created by a lookup
    assert not any(c.startswith("create") for c in store.calls)
    made = ensure_admin_secret(store, "team-a")  # type: ignore[arg-type]
    assert tokens("team-a") is None  # cached miss until the TTL runs out
    now[0] = 61.0
    assert tokens("team-a") == made
    gets = len(store.calls)
    assert tokens("team-a") == made and len(store.calls) == gets
    store.fail_get = True
    assert tokens("team-b") is None  # an API error is answered None, not raised
