"""The ``edgeslim`` command: one entry point, one sub-command module each.

Sub-command modules expose ``register(subparsers)``; each sets ``func`` on its parser.
Nothing here imports Django or torch at import time, so ``edgeslim --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each entry: module under webapp.cli that registers one or more sub-commands.
SUBCOMMAND_MODULES = ("up", "compress", "methods", "manage", "jobs", "sensitivity")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeslim",
        description="EdgeSlim: compress CNNs and prove the result on real edge devices.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"webapp.cli.{name}")
        except ModuleNotFoundError as exc:  # a sub-command still being built
            if exc.name != f"webapp.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
