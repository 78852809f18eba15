"""An in-memory stand-in for the one-method JSON seam (`Kube`): objects by path, resourceVersions, a call log.

For unit tests of reconciles and leader election only; integration tests use the real API server.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.exceptions import ApiException


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.version = 0
        self.down = False

    def _bump(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("api server down")

    def get(self, path: str) -> dict[str, Any] | None:
        self._check()
        self.calls.append(("GET", path))
        obj = self.objects.get(path)
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, path: str, label_selector: str | None = None, field_selector: str | None = None) -> list[Any]:
        self._check()
        self.calls.append(("LIST", path))
        return [copy.deepcopy(o) for p, o in self.objects.items() if p.startswith(path + "/")]

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        self.calls.append(("POST", path))
        name = body["metadata"].get("name") or f"{body['metadata'].get('generateName', 'obj')}{self.version}"
        full = f"{path}/{name}"
        if full in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        self._bump(obj)
        self.objects[full] = obj
        return obj

    def apply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        self.calls.append(("APPLY", path))
        obj = copy.deepcopy(body)
        self._bump(obj)
        self.objects[path] = obj
        return obj

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        self.calls.append(("PATCH", path))
        base_path = path.removesuffix("/status")
        obj = self.objects.get(base_path)
        if obj is None:
            raise ApiException(status=404, reason="NotFound")
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want is not None and want != obj["metadata"].get("resourceVersion"):
            raise ApiException(status=409, reason="Conflict")
        _merge(obj, dict(body.items()))
        self._bump(obj)
        return copy.deepcopy(obj)

    def delete(self, path: str) -> bool:
        self._check()
        self.calls.append(("DELETE", path))
        return self.objects.pop(path, None) is not None

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] not in ("GET", "LIST")]


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


class FakeOptionalApiKube:
    """Discovery and apply only: what an optional-API applier (`SloRules`, `InferencePools`) uses."""

    def __init__(self, api: str, resources: list[str] | None, apply_error: int | None = None) -> None:
        self.api = api
        self.resources = resources
        self.apply_error = apply_error
        self.discoveries = 0
        self.applied: list[tuple[str, dict[str, Any]]] = []

    def get(self, path: str) -> dict[str, Any] | None:
        assert path == self.api
        self.discoveries += 1
        return None if self.resources is None else {"resources": [{"name": r} for r in self.resources]}

    def apply(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        if self.apply_error is not None:
            raise ApiException(status=self.apply_error, reason="refused")
        self.applied.append((path, obj))
        return obj
