"""AU-level addition (``au-add``): AUSteer's top-k AUs, each shifted by ``alpha * beta_i * s_i`` instead of scaled.

A gain ``(1 + alpha * beta) x`` can only scale what an activation already carries; where the input does not
excite an AU it does nothing. ``au-add`` keeps AUSteer's selection (the global top-``k`` AUs of the ``head``
site by sign consistency, :func:`austeer.methods.au.top_units`) and adds a constant to each selected
activation at every position: ``x_i <- x_i + alpha * beta_i * s_i``, a sparse ITI/CAA on ``k`` activations.

``s_i``, the per-AU scale, is measured on the pairs' last-token activations:

- ``scale="std"`` (``au-add``): the standard deviation of AU ``i`` over both texts of every pair, so ``alpha``
  is in standard deviations of the AU (as ITI's ``sigma``) and a step is comparable across AUs;
- ``scale="diff"`` (``au-add-diff``): ``|mean(pos - neg)|`` of AU ``i``, so ``alpha = 1`` moves every AU by its
  mean positive-negative difference (``beta_i`` keeps the direction and the consistency weight).

``au-add-attr`` selects by attribution instead (issue 31's variant): the additive attribution
``a_i = d margin / d c_i`` of a constant ``c_i`` added to AU ``i`` at every position
(:func:`~austeer.core.attribution.margin_attribution` with ``probe="add"``), times ``s_i`` (std): the first-order
change of the pairs' answer margin when the AU is shifted by one standard deviation. The top-``k`` AUs by
``|a_i s_i|`` get ``beta_i = a_i s_i / max |a s|`` (signed to raise the margin) and the same shift
``alpha * beta_i * s_i``. Ranking by ``|a_i|`` alone would favour AUs whose activations barely vary, where one
unit is a large step.

It steers ``k`` activations. Folded exactly as a bias, as ITI is: ``W_O (x + v) = W_O x + W_O v`` (``o_proj``
gets the bias ``W_O v``, created if absent); a head-site addition is one residual vector per layer.

Example:
    >>> import torch
    >>> per_au_scale(torch.tensor([[[1.0, 2.0]], [[3.0, 2.0]]]), torch.tensor([[[0.0, 2.0]], [[1.0, 2.0]]]), "diff")
    tensor([[1.5000, 0.0000]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from austeer.core.attribution import top_attributed
from austeer.core.momentum import Unit
from austeer.errors import UserError
from austeer.methods import attribution
from austeer.methods.au import top_units
from austeer.methods.base import AddSteerer, Evidence, Frontier, Method

SCALES = ("std", "diff")


def per_au_scale(pos: torch.Tensor, neg: torch.Tensor, scale: str) -> torch.Tensor:
    """``s`` of every AU, ``[L, W]``, from ``[N, L, W]`` last-token activations (see the module docstring)."""
    if scale == "std":
        return torch.cat([pos, neg]).double().std(0).float()
    if scale == "diff":
        return (pos.double() - neg.double()).mean(0).abs().float()
    raise UserError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")


def _scale(evidence: Evidence, site: str, scale: str) -> torch.Tensor:
    if site != "head":
        raise UserError(f"au-add adds at the head site (the o_proj input), got site {site!r}")
    pos, neg = evidence.pos[site], evidence.neg[site]
    return evidence.memo(f"au-add-scale-{site}-{scale}", lambda: per_au_scale(pos, neg, scale))


def _shifts(
    name: str, site: str, units: list[Unit], s: torch.Tensor, alpha: float, config: dict[str, Any]
) -> AddSteerer:
    """The steerer adding ``alpha * beta_i * s_i`` to each of ``units``."""
    vectors: dict[int, torch.Tensor] = {}
    for u in units:
        v = vectors.setdefault(u.layer, torch.zeros(s.shape[-1]))
        v[u.index] = float(alpha) * u.beta * float(s[u.layer, u.index])
    return AddSteerer(name, site, vectors, config, n_steered=len(units))


def build(
    model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0, scale: str = "std"
) -> AddSteerer:
    """``au-add`` on the top-``k`` AUs of ``site`` (``head``): ``x_i += alpha * beta_i * s_i``."""
    s = _scale(evidence, site, scale)
    config = {"site": site, "k": k, "alpha": alpha, "scale": scale}
    name = "au-add" if scale == "std" else f"au-add-{scale}"
    return _shifts(name, site, top_units(evidence, site, k), s, alpha, config)


def build_diff(model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 1.0) -> AddSteerer:
    """``au-add`` with ``s_i = |mean(pos - neg)|``."""
    return build(model, evidence, site, k, alpha, scale="diff")


def build_attr(model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 2.0) -> AddSteerer:
    """``au-add-attr``: the top-``k`` AUs by ``|a_i s_i|`` (additive attribution times std), shifted by
    ``alpha * beta_i * s_i``."""
    s = _scale(evidence, site, "std")
    weighted = attribution.scores(model, evidence, site, probe="add") * s
    units = top_attributed({site: weighted}, k)
    return _shifts("au-add-attr", site, units, s, alpha, {"site": site, "k": k, "alpha": alpha})


def _method(name: str, build: Callable[..., AddSteerer], alphas: tuple[float, ...], backward: bool = False) -> Method:
    """An au-add variant: ``k`` over 8-512 head AUs times ``alphas``; the frontier at 32 AUs over ``alphas``."""
    grid = tuple({"site": "head", "k": k, "alpha": a} for k in (8, 32, 128, 512) for a in alphas)
    fold = "as a bias: W_O v added to o_proj's bias"
    frontier = Frontier({"site": "head", "k": 32}, alphas)
    return Method(
        name, ("head",), grid, build, fold, adds_at="head", strength="alpha", frontier=frontier, backward=backward
    )


METHOD = _method("au-add", build, (2.0, 5.0, 10.0, 20.0))
DIFF = _method("au-add-diff", build_diff, (1.0, 2.0, 4.0, 8.0))
#: alpha in standard deviations as au-add's, smaller: the score is first order and its top AUs move the margin most
#: per step. It reads the head activations (for s_i) and runs the pairs backward (for the selection).
ATTR = _method("au-add-attr", build_attr, (1.0, 2.0, 5.0, 10.0), backward=True)
