"""Helpers shared by the chart tests (a uniquely named module: test directories have no __init__.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "infleet"

Render = Callable[..., list[dict[str, Any]]]


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    return res


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def by_component(objs: list[dict[str, Any]], kind: str, component: str) -> list[dict[str, Any]]:
    """Objects of `kind` belonging to one part of the release (`operator` or `gateway`)."""
    return [o for o in by_kind(objs, kind)
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == component]
