"""`infleet crds`: print the generated CRDs, write them to a directory, or check a directory is current."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from infleet.api import crdgen


def _run(args: argparse.Namespace) -> int:
    if args.check is not None:
        stale = crdgen.stale(Path(args.check))
        for name in stale:
            print(f"{Path(args.check) / name} is out of date: run `infleet crds --write {args.check}`", file=sys.stderr)
        return 1 if stale else 0
    if args.write is not None:
        for path in crdgen.write(Path(args.write)):
            print(path)
        return 0
    sys.stdout.write("---\n".join(crdgen.rendered_files().values()))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "crds",
        help="print or write the infleet.io CustomResourceDefinitions",
        description="Generate the InferenceDeployment and AcceleratorPool CRDs from the typed models.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="DIR", help="write one YAML file per CRD into DIR")
    group.add_argument("--check", metavar="DIR", help="exit 1 if the CRD files in DIR differ from the models")
    parser.set_defaults(func=_run)
