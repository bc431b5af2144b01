"""Optional packages: check that one is installed before the work that needs it, and say what to install.

Each feature that needs a package outside the core install calls :func:`require` first (the CLI does it
before reading inputs or loading a model), so a missing package is one line with the ``pip install`` to
run, not a traceback at import or after an hour of evaluation. The optional packages themselves are
imported only where they are used.

Example:
    >>> require("json", "json", "a doctest")
    >>> try:
    ...     require("no_such_module_x", "austeer[report]", "austeer inspect")
    ... except MissingPackage as exc:
    ...     print(exc)
    'no_such_module_x' is not installed (austeer inspect needs it): pip install 'austeer[report]'
"""

from __future__ import annotations

import importlib.util
import sys

#: the packages of the optional extras (``pip install 'austeer[EXTRA]'``): the module to import, the extra
REPORT = ("matplotlib", "austeer[report]")
VADER = ("vaderSentiment", "austeer[eval]")
PROFANITY = ("profanity_check", "austeer[eval]")
GGUF = ("gguf", "gguf>=0.16")
JINJA2 = ("jinja2", "jinja2>=3.1")


class MissingPackage(ImportError):
    """A package a feature needs is not installed; the message says what to ``pip install``."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; not imported here)."""
    if sys.modules.get(module) is not None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or broken package
        return False


def require(module: str, pip: str, needed_by: str) -> None:
    """Raise :class:`MissingPackage` naming the ``pip install`` to run when ``module`` is not installed.

    ``pip`` is what to install (a requirement such as ``austeer[report]``, or ``--no-deps NAME``);
    ``needed_by`` says what needs it (``"austeer inspect"``, ``"the sentiment task"``).
    """
    if not installed(module):
        target = pip if pip.startswith("-") else f"'{pip}'" if "[" in pip or ">" in pip else pip
        raise MissingPackage(f"{module!r} is not installed ({needed_by} needs it): pip install {target}", name=module)
