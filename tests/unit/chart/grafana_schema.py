"""Grafana's published dashboard schema as JSON Schema.

Grafana publishes its dashboard and panel types in the `@grafana/schema` npm package (generated from its CUE
schema). `ts-json-schema-generator` turns those TypeScript types into JSON Schema, which jsonschema then checks
the dashboards against, unknown keys included. Both are pinned and installed once into the infleet cache.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from infleet_devcluster.config import cache_dir

PACKAGES = ("@grafana/schema@13.2.3", "ts-json-schema-generator@2.4.0")
PANEL_TYPES = ("timeseries", "stat")


class UnavailableError(RuntimeError):
    """npm is missing or the packages could not be installed; the message says which."""


def _home() -> Path:
    return cache_dir() / "grafana-schema"


def _install() -> Path:
    home = _home()
    stamp = home / "installed.txt"
    if stamp.exists() and stamp.read_text() == "\n".join(PACKAGES):
        return home
    npm = shutil.which("npm")
    if npm is None:
        raise UnavailableError("npm is not installed (Debian: apt-get install npm)")
    home.mkdir(parents=True, exist_ok=True)
    (home / "package.json").write_text('{"private": true}\n')
    res = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--save-exact", *PACKAGES], cwd=home,
                         capture_output=True, text=True, timeout=300, check=False)
    if res.returncode != 0:
        raise UnavailableError(f"npm install {' '.join(PACKAGES)} failed:\n{res.stderr[-2000:]}")
    stamp.write_text("\n".join(PACKAGES))
    return home


def _generate(home: Path, types_file: str, type_name: str, out: Path) -> dict[str, Any]:
    if not out.exists():
        gen = home / "node_modules" / ".bin" / "ts-json-schema-generator"
        src = home / "node_modules" / "@grafana" / "schema" / "dist" / "types" / "raw" / types_file
        res = subprocess.run([str(gen), "--path", str(src), "--type", type_name, "--no-type-check", "-o", str(out)],
                             capture_output=True, text=True, timeout=300, check=False)
        if res.returncode != 0:
            raise UnavailableError(f"ts-json-schema-generator failed for {type_name}:\n{res.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(out.read_text())
    return {**doc, "$ref": f"#/definitions/{type_name}"}


def schemas() -> dict[str, dict[str, Any]]:
    """'dashboard', and '<panel type>.options' / '<panel type>.fieldConfig' for the panel types we use."""
    home = _install()
    out = {"dashboard": _generate(home, "dashboard/x/types.gen.d.ts", "Dashboard", home / "Dashboard.json")}
    for panel in PANEL_TYPES:
        types_file = f"composable/{panel}/panelcfg/x/types.gen.d.ts"
        out[f"{panel}.options"] = _generate(home, types_file, "Options", home / f"{panel}-Options.json")
        out[f"{panel}.fieldConfig"] = _generate(home, types_file, "FieldConfig", home / f"{panel}-FieldConfig.json")
    return out
