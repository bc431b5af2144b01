"""Typed ``argparse`` converters: a bad value is argparse's one-line usage error (exit 2), not a traceback.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(prog="austeer", exit_on_error=False)
    >>> _ = p.add_argument("--alpha", type=finite_float)
    >>> p.parse_args(["--alpha", "2.5"]).alpha
    2.5
    >>> p.parse_args(["--alpha", "nan"])
    Traceback (most recent call last):
    ...
    argparse.ArgumentError: argument --alpha: invalid finite_float value: 'nan'
"""

from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """A finite float (``nan``, ``inf`` rejected)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value
