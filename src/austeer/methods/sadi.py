"""SADI (Wang et al. 2025): mask the top-K elements by ``|mean(pos - neg)|``, steer ``a <- a + delta * (M * a)``.

The mask has no sign: every masked element gets the same gain ``1 + delta``. Ranking is global across
layers; ties go to the lower layer, then the lower index. Foldable exactly (it is a gain).

Example:
    >>> import torch
    >>> top_k_mask(torch.tensor([[0.1, -3.0], [2.0, 0.5]]), 2)
    [(0, 1), (1, 0)]
"""

from __future__ import annotations

from torch import nn

from austeer.core.momentum import top_k_mask
from austeer.core.steer import Gain
from austeer.methods.base import Evidence, Frontier, GainSteerer, Method


def build(model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, delta: float = 1.0) -> GainSteerer:
    """SADI on ``site``: gain ``1 + delta`` on the top-``k`` elements by absolute mean difference."""
    gains = [Gain(site, layer, i, float(delta)) for layer, i in top_k_mask(evidence.mean_diff(site), k)]
    return GainSteerer("sadi", gains, {"site": site, "k": k, "delta": delta})


GRID = tuple({"site": "head", "k": k, "delta": d} for k in (2, 8, 32, 100) for d in (1.0, 4.0))

METHOD = Method(
    "sadi",
    ("head",),
    GRID,
    build,
    "exact: gains folded into the weights",
    strength="delta",
    frontier=Frontier({"site": "head", "k": 32}, (1.0, 2.0, 4.0, 8.0)),
    default=True,
)
