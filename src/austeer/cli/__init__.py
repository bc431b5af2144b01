"""The ``austeer`` command line: the only package that talks to the terminal.

Each module named in :data:`COMMANDS` lives in this package and registers its subcommands with
``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command modules of this package, in help order (a module not present in this build is skipped)
COMMANDS = ["core", "evaluate", "inspect", "compare", "serve"]


def _modules() -> list:
    found = []
    for name in COMMANDS:
        full = f"austeer.cli.{name}"
        try:
            found.append(importlib.import_module(full))
        except ModuleNotFoundError as exc:
            if exc.name != full:
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    from austeer import __version__

    parser = argparse.ArgumentParser(prog="austeer", description="Fine-grained activation steering (AUSteer).")
    parser.add_argument("--version", action="version", version=f"austeer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _modules():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, IndexError) as exc:
        print(f"austeer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
