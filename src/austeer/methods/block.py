"""Block-level AUSteer: the gain of the selected AUs spread over every dimension of their blocks.

A block is an attention head for the ``head`` site (``head_dim`` dimensions), a whole layer for the other
sites. Each block holding at least one of the AUSteer top-``k`` AUs gets, on *every* dimension, the gain
``1 + alpha * mean(beta)`` (mean over the selected AUs it holds). Foldable exactly (it is a gain).

Example:
    >>> from austeer.core.momentum import Unit
    >>> [(g.index, g.gamma) for g in spread([Unit("head", 0, 5, 1.0), Unit("head", 0, 6, 0.5)], 4, 8, 2.0)]
    [(4, 1.5), (5, 1.5), (6, 1.5), (7, 1.5)]
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from austeer.core.momentum import Unit
from austeer.core.sites import head_dim, site_width
from austeer.core.steer import Gain
from austeer.methods.au import GRID, top_units
from austeer.methods.base import Evidence, Frontier, GainSteerer, Method


def spread(units: list[Unit], block: int, width: int, alpha: float) -> list[Gain]:
    """Every dimension of each ``block``-wide block holding a unit, with the gain ``gamma = alpha * mean(beta)``."""
    groups: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for u in units:
        groups[(u.site, u.layer, u.index // block)].append(u.beta)
    out: list[Gain] = []
    for (site, layer, b), betas in sorted(groups.items()):
        gamma = float(alpha) * sum(betas) / len(betas)
        out.extend(Gain(site, layer, i, gamma) for i in range(b * block, min((b + 1) * block, width)))
    return out


def build(model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0) -> GainSteerer:
    """Block-level steering of the heads (``head``) or layers (other sites) holding the top-``k`` AUs."""
    width = site_width(model, site)
    block = head_dim(model) if site == "head" else width
    gains = spread(top_units(evidence, site, k), block, width, alpha)
    return GainSteerer("block", gains, {"site": site, "k": k, "alpha": alpha})


METHOD = Method(
    "block",
    ("head",),
    GRID,
    build,
    "exact: gains folded into the weights",
    strength="alpha",
    frontier=Frontier({"site": "head", "k": 32}, (2.0, 5.0, 10.0, 20.0)),
    default=True,
)
