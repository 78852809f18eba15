"""Fixtures for chart tests: the pinned helm binary and a `helm template` runner."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet_devcluster.config import load_versions
from infleet_devcluster.tools import binary_path

CHART = Path(__file__).resolve().parents[3] / "charts" / "infleet"


@pytest.fixture(scope="session")
def helm() -> Path:
    path = binary_path("helm", load_versions().helm)
    if not path.exists():
        pytest.skip(f"helm not built at {path} (run `infleet-cluster build`; CI builds it first)")
    return path


@pytest.fixture(scope="session")
def render(helm: Path) -> Callable[..., list[dict[str, Any]]]:
    """`helm template` with values files and --set pairs; returns the rendered objects."""

    def _render(*values_files: str, sets: tuple[str, ...] = (), namespace: str = "infleet-system",
                release: str = "infleet") -> list[dict[str, Any]]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        for f in values_files:
            args += ["-f", str(CHART / "ci" / f)]
        for s in sets:
            args += ["--set", s]
        res = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, f"helm {' '.join(args)} failed:\n{res.stderr}"
        out = res.stdout
        return [d for d in yaml.safe_load_all(out) if d]

    return _render
