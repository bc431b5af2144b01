"""AUSteer behind the shared interface: global top-k AUs by sign consistency, gain ``1 + alpha * beta``.

This is exactly :func:`austeer.fit` (the same :func:`~austeer.core.momentum.select` on the same sign counts),
built from shared :class:`~austeer.methods.base.Evidence` so every method reads the pairs once.
Foldable exactly (the core's weight folding).

Example:
    >>> from austeer.core.momentum import Unit
    >>> scaled([Unit("head", 0, 1, -0.75)], 4.0)
    [Gain(site='head', layer=0, index=1, gamma=-3.0)]
"""

from __future__ import annotations

from typing import Any

from torch import nn

from austeer.core.momentum import Unit, select
from austeer.core.steer import Gain
from austeer.methods.base import Evidence, Frontier, GainSteerer, Method


def scaled(units: list[Unit], alpha: float) -> list[Gain]:
    """AUSteer's gains on ``units``: ``gamma = alpha * beta``."""
    return [Gain(u.site, u.layer, u.index, float(alpha) * u.beta) for u in units]


def top_units(evidence: Evidence, site: str, k: int) -> list[Unit]:
    """AUSteer's selection: the global top-``k`` AUs of ``site`` (``beta`` in ``[-1, 1]``)."""
    return select({site: evidence.counts(site)}, k)


def build(model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0) -> GainSteerer:
    """AUSteer: top-``k`` AUs of ``site``, gain ``1 + alpha * beta``."""
    config: dict[str, Any] = {"site": site, "k": k, "alpha": alpha}
    return GainSteerer("austeer", scaled(top_units(evidence, site, k), alpha), config)


def build_last(
    model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0
) -> GainSteerer:
    """AUSteer's AUs and gains, acting at the last position of each pass only (``fit(positions="last")``)."""
    steerer = build(model, evidence, site, k, alpha)
    return GainSteerer("austeer-last", steerer.gains, steerer.config, positions="last")


def build_signed(
    model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0
) -> GainSteerer:
    """AUSteer's AUs with gains that move each toward the positive answers whatever its sign.

    The paper's gain changes ``x`` by ``alpha * beta * x``: towards the positive side (the sign of ``beta``)
    only where ``x > 0``; where an AU's activation is negative it moves it the other way. Here the gain of
    an AU whose mean activation over the pairs is negative is ``1 - alpha * beta``, so the change has the
    sign of ``beta`` for typical activations. Still a per-AU gain: foldable exactly.
    """
    level = evidence.level(site)
    units = top_units(evidence, site, k)
    gains = [
        Gain(u.site, u.layer, u.index, float(alpha) * u.beta * (1.0 if level[u.layer, u.index] >= 0 else -1.0))
        for u in units
    ]
    return GainSteerer("austeer-signed", gains, {"site": site, "k": k, "alpha": alpha})


def grid(site: str) -> tuple[dict[str, Any], ...]:
    """k from 2 to 100 and alpha from the small gains to the paper's range (up to 100), at ``site``."""
    return tuple({"site": site, "k": k, "alpha": a} for k in (2, 8, 32, 100) for a in (4.0, 10.0, 30.0, 100.0))


GRID = grid("head")

METHOD = Method(
    "austeer",
    ("head",),
    GRID,
    build,
    "exact: gains folded into W_O columns (head) / W_down",
    strength="alpha",
    frontier=Frontier({"site": "head", "k": 32}, (2.0, 5.0, 10.0, 20.0)),
    default=True,
)

#: AUSteer at the MLP output (``ffn``) and at the MLP's inner neurons (``neuron``): the paper's other AU sites,
#: with the same grid (run them by name: ``austeer compare --methods austeer,austeer-ffn,austeer-neuron``)
FFN = Method("austeer-ffn", ("ffn",), grid("ffn"), build, "exact: gains folded into W_down rows", strength="alpha")
NEURON = Method(
    "austeer-neuron", ("neuron",), grid("neuron"), build, "exact: gains folded into W_down columns", strength="alpha"
)

#: AUSteer with its gains at the answer position / each generated token only (a diagnosis variant: where the
#: gain applies); the same AUs, grid and frontier as ``austeer``. The neutral perplexity cannot see its damage on a
#: scored text (every scored token is predicted from earlier, unsteered positions); generated text is steered as
#: with ``austeer``
LAST = Method(
    "austeer-last",
    ("head",),
    GRID,
    build_last,
    "hooks only (austeer-last steers the last position only; folded weights steer every one)",
    strength="alpha",
    frontier=METHOD.frontier,
)

#: AUSteer with sign-aware gains (a diagnosis variant: the gain form): the same AUs, grid and frontier
SIGNED = Method(
    "austeer-signed",
    ("head",),
    GRID,
    build_signed,
    "exact: gains folded into W_O columns",
    strength="alpha",
    frontier=METHOD.frontier,
)
