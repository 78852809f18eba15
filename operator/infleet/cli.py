"""The `infleet` command: one entry point whose subcommands live next to the code they drive.

Each area exposes ``register(subparsers)``; importing it lazily here keeps `infleet simulate` free of kopf
start-up cost and `infleet run` free of matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, what it adds): each module defines `register(subparsers) -> None`, and each parser it adds sets
# `func=callable(args) -> int` as its default.
_AREAS: tuple[str, ...] = (
    "infleet.controller.cli",  # infleet run
    "infleet.sim.cli",  # infleet simulate
    "infleet.api.cli",  # infleet crds
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infleet",
        description="Serve models across GPU, Inferentia, TPU and CPU pools at the lowest cost that meets the SLO.",
    )
    from infleet import __version__

    parser.add_argument("--version", action="version", version=f"infleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that area is not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    result = func(args)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
