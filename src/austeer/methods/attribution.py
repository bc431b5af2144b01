"""Attribution selection behind the comparison's interface: the AUs whose gain moves the pairs' answer margin
most, to first order (:mod:`austeer.core.attribution`), with AUSteer's graded gain form.

A selection rule to compare with AUSteer's sign consistency (issue 14, item 3): instead of counting how
often an AU is larger for the positive answer, ask the model how much a gain on the AU would change what
the steering is for. The top-``k`` AUs by ``|a_u|`` get the gain ``1 + alpha * a_u / max|a|`` (the largest
gets ``alpha``), signed to raise the margin; the same units as ``fit(selection="attribution")``. Foldable
exactly (a gain).

Example:
    >>> from austeer.methods import METHODS, gather
    >>> from austeer.core.pairs import Pair
    >>> ev = gather(model, tok, [Pair("Is the sky blue?", "Yes", "No")] * 2, ["head"], progress=False)
    >>> s = METHODS["attribution"].build(model, ev, k=4, alpha=2.0)
    >>> s.n_steered, max(abs(g.gamma) for g in s.gains)
    (4, 2.0)
"""

from __future__ import annotations

import torch
from torch import nn

from austeer.core.attribution import margin_attribution, top_attributed
from austeer.errors import UserError
from austeer.methods.au import scaled
from austeer.methods.base import Evidence, Frontier, GainSteerer, Method


def scores(model: nn.Module, evidence: Evidence, site: str, probe: str = "gain") -> torch.Tensor:
    """The attribution of every AU of ``site`` on the evidence's pairs (with respect to a gain, or with
    ``probe="add"`` an addition), computed once per evidence, site and probe."""
    if evidence.tokenizer is None or not evidence.pairs:
        raise UserError("attribution needs the evidence's pairs and tokenizer (gather them with gather())")
    tok, pairs = evidence.tokenizer, evidence.pairs
    return evidence.memo(
        f"attribution:{site}" + ("" if probe == "gain" else f":{probe}"),
        lambda: margin_attribution(model, tok, pairs, site, share_prefix=evidence.share_prefix, probe=probe),
    )


def build(model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0) -> GainSteerer:
    """Top-``k`` AUs of ``site`` by ``|attribution|``, gain ``1 + alpha * a_u / max|a|``."""
    units = top_attributed({site: scores(model, evidence, site)}, k)
    return GainSteerer("attribution", scaled(units, alpha), {"site": site, "k": k, "alpha": alpha})


#: k from 2 to 100 and small gains only: the score is a first-order effect, and its top AUs (high-leverage units,
#: many in the first layers) break the model at AUSteer's gains (on the 1.5B, COPA val 0.64 -> 0.53 with 2 AUs at
#: alpha 4, docs/COMPARISON.md)
GRID = tuple({"site": "head", "k": k, "alpha": a} for k in (2, 8, 32, 100) for a in (0.25, 0.5, 1.0, 2.0))

METHOD = Method(
    "attribution",
    (),  # it reads no activations: it runs the pairs itself, forward and backward
    GRID,
    build,
    "exact: gains folded into W_O columns",
    strength="alpha",
    frontier=Frontier({"site": "head", "k": 32}, (0.25, 0.5, 1.0, 2.0)),
    backward=True,
)
