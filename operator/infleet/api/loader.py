"""Parse multi-document YAML into typed API objects, with errors that say where and why.

An error names the file, the document's index (and kind/name when known), the field path in the manifest's
own camelCase spelling, and the reason, so a user can fix a manifest without reading a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infleet.api.v1alpha1 import (
    ACCELERATOR_POOL_KIND,
    API_VERSION,
    INFERENCE_DEPLOYMENT_KIND,
    AcceleratorPool,
    InferenceDeployment,
    Manifest,
)

_KINDS: dict[str, type[InferenceDeployment] | type[AcceleratorPool]] = {
    INFERENCE_DEPLOYMENT_KIND: InferenceDeployment,
    ACCELERATOR_POOL_KIND: AcceleratorPool,
}


_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """A manifest that is not a valid infleet object; ``problems`` lists (field path, reason) pairs."""

    def __init__(self, source: str, index: int, what: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.index = index
        self.what = what
        self.problems = problems
        lines = [f"{source}: document {index}{f' ({what})' if what else ''}:"]
        lines += [f"  {path or '<document>'}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _reason(error: Any) -> str:
    message = str(error["msg"])
    # pydantic prefixes messages raised from our own validators; the rule's message stands on its own.
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if error["type"] == "extra_forbidden":
        message = "unknown field (check the spelling; see `kubectl explain`)"
    return message


def parse_manifest(doc: Any, *, source: str = "<input>", index: int = 1) -> Manifest:
    """Validate one decoded YAML/JSON document as an InferenceDeployment or AcceleratorPool."""
    if not isinstance(doc, dict):
        raise ManifestError(source, index, "", [("", f"expected a mapping, got {type(doc).__name__}")])
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    what = f"{kind} {name}" if kind and name else str(kind or "")
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError(
            source, index, what, [("apiVersion", f"expected {API_VERSION}, got {doc.get('apiVersion')!r}")]
        )
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise ManifestError(source, index, what, [("kind", f"expected one of {sorted(_KINDS)}, got {kind!r}")])
    try:
        return cls.model_validate(doc)
    except ValidationError as exc:
        problems = [(_format_loc(tuple(err["loc"])), _reason(err)) for err in exc.errors()]
        raise ManifestError(source, index, what, problems) from None


def load_manifests(text_or_path: str | os.PathLike[str]) -> list[Manifest]:
    """Parse every document of a YAML stream (a path, or the YAML text itself) into typed objects.

    A ``str`` is read as a path when it names an existing file and has no newline; otherwise it is YAML text
    (a one-line ``*.yaml``/``*.yml``/``*.json`` name that does not exist raises FileNotFoundError rather than
    being parsed as YAML).
    Empty documents are skipped. The first invalid document raises :class:`ManifestError`.
    """
    looks_like_file = isinstance(text_or_path, str) and "\n" not in text_or_path
    if looks_like_file and str(text_or_path).endswith(_MANIFEST_SUFFIXES) and not Path(text_or_path).is_file():
        raise FileNotFoundError(f"{text_or_path}: no such manifest file")
    if isinstance(text_or_path, os.PathLike) or ("\n" not in text_or_path and Path(text_or_path).is_file()):
        source = os.fspath(text_or_path)
        text = Path(source).read_text(encoding="utf-8")
    else:
        source, text = "<input>", str(text_or_path)
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(source, 1, "", [("", f"not valid YAML: {exc}")]) from None
    # Documents are numbered from 1, as a reader counts them in the file.
    return [parse_manifest(doc, source=source, index=i) for i, doc in enumerate(docs, start=1) if doc is not None]
