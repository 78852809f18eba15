"""infleet-worker pools render exactly as before the runtime adapters (see worker_cases)."""

from __future__ import annotations

from typing import Any

from infleet.controller import manifests
from tests.unit.runtimes.worker_cases import GOLDEN, cases, dumps


def test_worker_deployments_are_byte_for_byte_unchanged() -> None:
    assert dumps(cases(manifests, manifests.ContainerOverrides)) == GOLDEN.read_text()


def test_explicit_infleet_worker_engine_renders_the_same_as_unset() -> None:
    def explicit(**kw: Any) -> manifests.ContainerOverrides:
        return manifests.ContainerOverrides(engine="infleet-worker", **kw)

    assert dumps(cases(manifests, explicit)) == GOLDEN.read_text()
