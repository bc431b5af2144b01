"""Random AUs: ``k`` AUs of the site drawn uniformly (all layers), carrying AUSteer's own gains.

The gains are the multiset ``alpha * beta`` of the AUSteer top-``k`` selection, assigned in order to the
random units, so only the localisation differs. One steerer per seed; the comparison averages them.
Foldable exactly.

Example:
    >>> [(layer, i) for layer, i in draw(3, 10, 2, seed=0)] == [(layer, i) for layer, i in draw(3, 10, 2, seed=0)]
    True
"""

from __future__ import annotations

import torch
from torch import nn

from austeer.core.sites import site_width
from austeer.core.steer import Gain
from austeer.methods.au import GRID, top_units
from austeer.methods.base import Evidence, GainSteerer, Method


def draw(n_layers: int, width: int, k: int, seed: int) -> list[tuple[int, int]]:
    """``k`` distinct ``(layer, index)`` pairs, uniformly without replacement, reproducible by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(n_layers * width, generator=g)[:k].tolist()
    return [(int(f) // width, int(f) % width) for f in flat]


def build(
    model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0, seeds: int = 3
) -> list[GainSteerer]:
    """``seeds`` steerers, each with ``k`` random AUs of ``site`` and AUSteer's gains."""
    best = top_units(evidence, site, k)
    n_layers = int(evidence.pos[site].shape[1])
    out = []
    for seed in range(seeds):
        where = draw(n_layers, site_width(model, site), len(best), seed)
        gains = [Gain(site, layer, i, float(alpha) * u.beta) for (layer, i), u in zip(where, best, strict=True)]
        out.append(GainSteerer("random", gains, {"site": site, "k": k, "alpha": alpha, "seed": seed}))
    return out


METHOD = Method(
    "random", ("head",), GRID, build, "exact: gains folded into the weights", strength="alpha", default=True
)
