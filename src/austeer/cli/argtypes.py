"""Typed ``argparse`` converters: a bad value is argparse's one-line usage error (exit 2), not a traceback,
and it comes before any file is read or any model loads.

Every numeric flag of the CLI uses one of these. Each converter declares what it accepts
(:attr:`Number.integer`, the bounds), so a test can enumerate the flags and know which values are
legitimate without a hand-written list.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(prog="austeer", exit_on_error=False)
    >>> _ = p.add_argument("--alpha", type=finite_float)
    >>> p.parse_args(["--alpha", "2.5"]).alpha
    2.5
    >>> p.parse_args(["--alpha", "nan"])
    Traceback (most recent call last):
    ...
    argparse.ArgumentError: argument --alpha: expected a finite number, got 'nan'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

from austeer.errors import UserError

#: the largest integer a count may be (an int64: what every tensor index and count fits in)
INT_MAX = 2**63 - 1


@dataclass(frozen=True)
class Number:
    """A number in ``[low, high]`` (``low_open`` / ``high_open``: that bound excluded); an integer when
    ``integer`` (written as one: ``2.5`` and ``1e3`` are refused), else a finite float."""

    name: str
    integer: bool
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = ""  # how messages call it (default: "an integer" or "a finite number")

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.name

    def describe(self) -> str:
        """What is expected, e.g. ``an integer >= 1``."""
        what = self.what or ("an integer" if self.integer else "a finite number")
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = None if self.high is None or self.high == INT_MAX else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " ".join([what, " and ".join(b for b in (low, high) if b)]).strip()

    def accepts(self, value: float) -> bool:
        """Whether ``value`` (already a number of the right kind) lies inside the bounds."""
        if isinstance(value, float) and not math.isfinite(value):  # an int of any size is a number
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        high = INT_MAX if self.integer and self.high is None else self.high
        return high is None or not (value > high or (self.high_open and value == high))

    def __call__(self, text: str) -> int | float:
        value: int | float
        try:
            value = int(text.strip(), 10) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {_shown(text)}") from None
        if not self.accepts(value):
            bound = f" (at most {INT_MAX})" if self.integer and value > INT_MAX else ""
            raise argparse.ArgumentTypeError(f"expected {self.describe()}{bound}, got {_shown(text)}")
        return value


def _shown(text: str) -> str:
    """``text`` quoted for a message, its middle left out when it is long (a 400-digit number)."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}...({len(text)} characters)"


@dataclass(frozen=True)
class Either:
    """The first of ``choices`` that accepts the text (e.g. a fraction of the depth or a layer index)."""

    name: str
    choices: tuple[Number, ...]

    @property
    def __name__(self) -> str:
        return self.name

    def __call__(self, text: str) -> int | float:
        for choice in self.choices:
            try:
                return choice(text)
            except argparse.ArgumentTypeError:
                pass
        expected = " or ".join(c.describe() for c in self.choices)
        raise argparse.ArgumentTypeError(f"expected {expected}, got {_shown(text)}")


@dataclass(frozen=True)
class NumberList:
    """A comma-separated list of ``item`` (at least one)."""

    name: str
    item: Number

    @property
    def __name__(self) -> str:
        return self.name

    def __call__(self, text: str) -> list[int | float]:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {self.item.describe()}s, got {text!r}"
            )
        out = []
        for i, part in enumerate(p for p in parts if p):
            try:
                out.append(self.item(part))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"item {i + 1} of {_shown(text)}: {exc}") from None
        return out


positive_int = Number("positive_int", integer=True, low=1)
"""An integer >= 1 (a count, a size, a limit)."""

non_negative_int = Number("non_negative_int", integer=True, low=0)
"""An integer >= 0."""

finite_float = Number("finite_float", integer=False)
"""A finite float (``nan``, ``inf`` and numbers too large for a float, ``1e400``, are refused)."""

positive_float = Number("positive_float", integer=False, low=0, low_open=True)
"""A finite float > 0 (a time out, a rate)."""

non_negative_float = Number("non_negative_float", integer=False, low=0)
"""A finite float >= 0 (a wait, a bound on a magnitude)."""

ratio = Number("ratio", integer=False, low=1)
"""A finite ratio >= 1 (a perplexity ratio bound)."""

fraction = Number("fraction", integer=False, low=0, high=1)
"""A share between 0 and 1 (a bound on an accuracy drop)."""

port = Number("port", integer=True, low=0, high=65535)
"""A TCP port, 0 (any free port) to 65535."""

layer_or_fraction = Either(
    "layer_or_fraction",
    (
        Number("fraction", integer=False, low=0, high=1, high_open=True, what="a fraction of the depth"),
        Number("layer", integer=True, low=1, what="a whole layer index"),
    ),
)
"""A fraction of the depth in ``[0, 1)`` or a whole layer index >= 1 (``29.7`` and ``-1`` are refused)."""

positive_ints = NumberList("positive_ints", positive_int)
"""A comma-separated list of integers >= 1."""

finite_floats = NumberList("finite_floats", finite_float)
"""A comma-separated list of finite floats."""

#: every converter of this module (a test enumerates the CLI's flags and checks each uses one of these)
ARGTYPES: Sequence[Number | Either | NumberList] = (
    positive_int,
    non_negative_int,
    finite_float,
    positive_float,
    non_negative_float,
    ratio,
    port,
    layer_or_fraction,
    positive_ints,
    finite_floats,
)


def parse_doses(text: str) -> list[int | None]:
    """Doses of the dose-response from ``"0,2,all"`` (``all``, as ``None``: every AU of the site).

    Example:
        >>> parse_doses("0, 2,all")
        [0, 2, None]
    """
    doses: list[int | None] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            doses.append(None)
        elif part.isdigit():
            doses.append(int(part))
        else:
            raise UserError(f"bad dose {part!r}: expected a number of AUs (0, 2, 100, ...) or 'all'")
    return doses
