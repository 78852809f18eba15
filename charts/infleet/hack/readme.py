"""Keeps charts/infleet/README.md's values table in step with values.yaml's `# --` comments.

`python charts/infleet/hack/readme.py` rewrites the table between the markers; `--check` exits 1 if it is stale.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- values-table:begin -->", "<!-- values-table:end -->"


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key preceded by a `# --` comment, in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and pending is not None:
            pending.append(stripped[1:].strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z][\w]*):", line)
        if not m or line.lstrip().startswith("-"):
            if not stripped:
                pending = None
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m.group(2)])
        stack.append((indent, m.group(2)))
        if pending is not None:
            out.append((key, " ".join(pending)))
            pending = None
    return out


def lookup(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        node = node[part]
    return node


def type_name(v: Any) -> str:
    if v is None:
        return "number or null"
    return {bool: "bool", int: "int", float: "number", str: "string", list: "list", dict: "object"}[type(v)]


def table() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, desc in documented_keys(text):
        v = lookup(values, key)
        default = json.dumps(v, separators=(", ", ": "))
        if len(default) > 60:
            default = "see values.yaml"
        cell = desc.replace("|", "\\|")
        rows.append(f"| `{key}` | {type_name(v)} | `{default}` | {cell} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    readme = CHART / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    fresh = text[:start] + "\n" + table() + "\n" + text[end:]
    if "--check" in argv:
        if fresh != text:
            sys.stdout.write("charts/infleet/README.md is stale: run python charts/infleet/hack/readme.py\n")
            return 1
        return 0
    readme.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
