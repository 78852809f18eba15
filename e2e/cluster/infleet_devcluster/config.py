"""Where the local cluster keeps its files, and the pinned versions read from ``versions.env``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
VERSIONS_FILE = PACKAGE_DIR.parent / "versions.env"


def cache_dir() -> Path:
    """Binary and build cache, shared by every checkout on the machine (survives between CI runs)."""
    env = os.environ.get("INFLEET_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "infleet"


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str
    kwok: str
    helm: str
    kind: str
    go_min: str
    prometheus: str = ""  # optional tool: only `make demo` builds it, when no prometheus is installed


def load_versions(path: Path = VERSIONS_FILE) -> Versions:
    """Parse the KEY=VALUE pin file; a missing key is an error naming the key and the file."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: line {raw!r} is not KEY=VALUE")
        values[key.strip()] = value.strip()
    want = {
        "kubernetes": "KUBERNETES_VERSION",
        "etcd": "ETCD_VERSION",
        "kwok": "KWOK_VERSION",
        "helm": "HELM_VERSION",
        "kind": "KIND_VERSION",
        "go_min": "GO_MIN_VERSION",
        "prometheus": "PROMETHEUS_VERSION",
    }
    missing = [k for k in want.values() if k not in values]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    return Versions(**{attr: values[key] for attr, key in want.items()})
