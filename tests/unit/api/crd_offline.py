"""Check objects against a generated CRD without a cluster: apply its defaults, validate its OpenAPI schema
(jsonschema, draft 4 semantics as the apiserver uses), and evaluate its CEL rules with cel-python.

This is how the unit tests catch a CEL expression that disagrees with the Python predicate next to it; the
integration tests then confirm against the real apiserver.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import celpy
import jsonschema  # type: ignore[import-untyped]
import yaml
from celpy.adapter import json_to_cel

ROOT = Path(__file__).resolve().parents[3]
CASES_FILE = Path(__file__).with_name("invalid_manifests.yaml")


def load_cases() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = yaml.safe_load(CASES_FILE.read_text())
    return data["bases"], data["cases"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def case_manifest(bases: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    return merge_patch(bases[case["base"]], case["patch"])  # type: ignore[no-any-return]


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill in schema defaults the way the apiserver does (top-down, a defaulted {} gets its own defaults)."""
    if isinstance(obj, dict) and "properties" in schema:
        out = dict(obj)
        for key, sub in schema["properties"].items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        return out
    if isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_defaults(schema["additionalProperties"], v) for k, v in obj.items()}
    if isinstance(obj, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in obj]
    return obj


def _closed(schema: Any) -> Any:
    """A copy that rejects unknown fields and duplicate set items, as the apiserver does with Strict validation."""
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) if isinstance(v, dict) else v for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if out.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    return out


def schema_errors(schema: dict[str, Any], obj: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(_closed(schema))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


_ESCAPES = {"-": "__dash__", ".": "__dot__", "/": "__slash__"}


def _escape(name: str) -> str:
    name = name.replace("__", "__underscores__")
    return re.sub(r"[-./]", lambda m: _ESCAPES[m.group(0)], name)


def _to_cel_json(schema: dict[str, Any], obj: Any) -> Any:
    """Rename object properties as Kubernetes exposes them to CEL (`nvidia-gpu` -> `nvidia__dash__gpu`)."""
    if isinstance(obj, dict) and "properties" in schema:
        return {_escape(k): _to_cel_json(schema["properties"].get(k, {}), v) for k, v in obj.items()}
    if isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: _to_cel_json(schema["additionalProperties"], v) for k, v in obj.items()}
    if isinstance(obj, list) and "items" in schema:
        return [_to_cel_json(schema["items"], v) for v in obj]
    return obj


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return _PROGRAMS[rule]


def cel_failures(schema: dict[str, Any], obj: Any, *, path: str = "") -> list[str]:
    """Messages of every non-transition CEL rule that evaluates to false on `obj` (defaults already applied)."""
    failures: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # transition rules need the stored object: only the apiserver evaluates them
        activation = {"self": json_to_cel(_to_cel_json(schema, obj))}
        result = _program(rule["rule"]).evaluate(activation)
        if isinstance(result, Exception):
            raise AssertionError(f"CEL rule {rule['rule']!r} at {path or '<root>'} failed to evaluate: {result}")
        if not bool(result):
            failures.append(f"{path}: {rule['message']}")
    if isinstance(obj, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key in obj:
                failures += cel_failures(sub, obj[key], path=f"{path}.{key}" if path else key)
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            failures += cel_failures(schema["additionalProperties"], value, path=f"{path}[{key}]")
    elif isinstance(obj, list) and "items" in schema:
        for i, value in enumerate(obj):
            failures += cel_failures(schema["items"], value, path=f"{path}[{i}]")
    return failures


def offline_errors(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Schema errors, then (on a schema-valid object) CEL failures, after applying defaults."""
    schema = schema_of(crd)
    defaulted = apply_defaults(schema, obj)
    errors = schema_errors(schema, defaulted)
    if errors:
        return errors
    return cel_failures(schema, defaulted)
