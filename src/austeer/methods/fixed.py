"""Fixed strength: the AUSteer selection with gain ``1 + alpha * sign(beta)`` instead of ``1 + alpha * beta``.

An ablation of the graded gain: every selected AU gets the same magnitude. Foldable exactly.

Example:
    >>> from austeer.core.momentum import Unit
    >>> [g.gamma for g in signed([Unit("head", 0, 1, -0.6), Unit("head", 0, 2, 0.9)], 5.0)]
    [-5.0, 5.0]
"""

from __future__ import annotations

from torch import nn

from austeer.core.momentum import Unit
from austeer.core.steer import Gain
from austeer.methods.au import GRID, top_units
from austeer.methods.base import Evidence, Frontier, GainSteerer, Method


def signed(units: list[Unit], alpha: float) -> list[Gain]:
    """Gains ``gamma = alpha * sign(beta)`` on ``units`` (a zero beta gets no gain)."""
    return [Gain(u.site, u.layer, u.index, float(alpha) * ((u.beta > 0) - (u.beta < 0))) for u in units]


def build(model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0) -> GainSteerer:
    """Fixed-strength AUSteer."""
    return GainSteerer("fixed", signed(top_units(evidence, site, k), alpha), {"site": site, "k": k, "alpha": alpha})


METHOD = Method(
    "fixed",
    ("head",),
    GRID,
    build,
    "exact: gains folded into the weights",
    strength="alpha",
    frontier=Frontier({"site": "head", "k": 32}, (2.0, 5.0, 10.0, 20.0)),
    default=True,
)
