"""The ``austeer`` command line: the only package that talks to the terminal.

Each module named in :data:`COMMANDS` lives in this package and registers its subcommands with
``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from austeer.errors import UserError
from austeer.extras import MissingPackage
from austeer.io import OutputPathError, OutputWriteError

#: command modules of this package, in help order (a module not present in this build is skipped)
COMMANDS = ["core", "export", "evaluate", "tune", "inspect", "compare", "serve", "llamacpp"]


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


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, ``austeer: error: <what> (see <prog> --help)``, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"austeer: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from austeer import __version__

    parser = Parser(prog="austeer", description="Fine-grained activation steering (AUSteer).")
    parser.add_argument("--version", action="version", version=f"austeer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _modules():
        module.register(sub)
    return parser


#: errors caused by the user's input (files, paths, values): one line on stderr and exit code 2, no traceback
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,  # austeer's own errors about its input: malformed files, values out of range, unsteerable models
    FileNotFoundError,
    FileExistsError,  # austeer.io.OutputExistsError: an output path holds something austeer did not write
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    OutputPathError,  # an output path austeer cannot write (read-only, a name too long, the current directory)
    OutputWriteError,  # the final write failed (a full disk): the old output is left as it was
    MissingPackage,  # an optional package a command needs: the message names the pip install
)


def error_line(exc: BaseException) -> str:
    """``austeer: error: <path>: <what is wrong>`` on one line.

    Example:
        >>> error_line(FileNotFoundError(2, "No such file or directory", "x.jsonl"))
        'austeer: error: x.jsonl: No such file or directory'
    """
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return "austeer: error: " + " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:  # before any file is read or model loaded
            from austeer.models.loading import check_device

            check_device(args.device)
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(error_line(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
