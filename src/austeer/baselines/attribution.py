"""Attribution selection: the AUs whose gain moves the pairs' answer margin most, to first order.

A selection rule to compare with AUSteer's sign consistency (issue 14, item 3): instead of counting how
often an AU is larger for the positive answer, ask the model how much a gain on the AU would change what
the steering is for. With the margin of a pair ``m = log p(positive answer | prompt) - log p(negative
answer | prompt)`` (summed over the answer's tokens) and the gain ``x_u <- (1 + gamma_u) x_u`` at every
position, the attribution of AU ``u`` is the derivative at no steering

    ``a_u = d m / d gamma_u = sum_t x_{u,t} * d m / d x_{u,t}``

(attribution patching's "activation times gradient", summed over the positions the gain acts on), averaged
over the pairs: one forward and one backward pass per batch, computed with a probe gain of 1 on every AU of
the site (its gradient *is* ``a``). The top-``k`` AUs by ``|a_u|`` get the gain ``1 + alpha * a_u / max|a|``
(graded like AUSteer's ``beta``: the largest gets ``alpha``), so the gain's sign is the one that raises the
margin. Foldable exactly (a gain).

Example:
    >>> from austeer.baselines import METHODS, gather
    >>> from austeer.pairs import Pair
    >>> ev = gather(model, tok, [Pair("Is the sky blue?", "Yes", "No")] * 2, ["head"], progress=False)
    >>> s = METHODS["attribution"].build(model, ev, k=4, alpha=2.0)
    >>> s.n_steered, max(abs(g.gamma) for g in s.gains)
    (4, 2.0)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from austeer.baselines.base import Evidence, Frontier, GainSteerer, Method
from austeer.baselines.sadi import top_k_mask
from austeer.collect import backbone, encode, model_device, plan_batches, token_limit
from austeer.pairs import Pair, pair_texts
from austeer.sites import decoder_layers, site_width
from austeer.steer import Gain, add_hooks


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter needs a gradient inside the block; each one's ``requires_grad`` is restored after."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def _answer_tokens(mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[2b, T]`` bool: the answer tokens of rows ``pos0, neg0, pos1, ...`` (left padded): the tokens after the
    prefix the two texts of a pair share (at least the last token of each)."""
    target = torch.zeros_like(mask, dtype=torch.bool)
    for j in range(0, ids.shape[0], 2):
        a, b = (ids[r][mask[r].bool()].tolist() for r in (j, j + 1))
        n, most = 0, min(len(a), len(b)) - 1
        while n < most and a[n] == b[n]:
            n += 1
        for r, row in ((j, a), (j + 1, b)):
            target[r, mask.shape[1] - (len(row) - n) :] = True
    return target


def margin_attribution(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    site: str,
    batch_size: int = 4,
    progress: bool = True,
) -> torch.Tensor:
    """``[L, W]`` float32: the mean over ``pairs`` of ``d margin / d gamma_u`` for every AU of ``site`` (see
    the module docstring). Runs each pair's two texts whole, ``batch_size`` pairs per forward and backward
    pass; no parameter gets a gradient and no hook outlives the call.

    Example:
        >>> a = margin_attribution(model, tok, [Pair("Is the sky blue?", "Yes", "No")], "head", progress=False)
        >>> tuple(a.shape)
        (30, 576)
    """
    if not pairs:
        raise ValueError("margin_attribution needs at least one pair")
    n_layers, width = len(decoder_layers(model)), site_width(model, site)
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(model).__name__} has no output embeddings to score answers with")
    device, dtype = model_device(model), next(model.parameters()).dtype
    texts = [pair_texts(tokenizer, p) for p in pairs]
    total = torch.zeros(n_layers, width, dtype=torch.float64)
    batches = plan_batches(texts, batch_size)
    with _frozen(model):
        for rows in tqdm(batches, desc=f"attribution ({site})", unit="batch", disable=not progress):
            enc = encode(tokenizer, [t for i in rows for t in texts[i]], token_limit(model, None), "left")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            target = _answer_tokens(mask, ids)[:, 1:]  # the token at p is predicted at p - 1
            sign = torch.tensor([1.0, -1.0]).repeat(len(rows))[:, None].expand_as(target)[target].to(device)
            probes = [torch.zeros(width, requires_grad=True) for _ in range(n_layers)]
            with torch.enable_grad():
                gains = {(site, layer): (1 + p).to(device, dtype) for layer, p in enumerate(probes)}
                steering = add_hooks(model, gains)
                try:
                    hidden = backbone(model)(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        position_ids=(mask.cumsum(1) - 1).clamp(min=0).to(device),
                        use_cache=False,
                    ).last_hidden_state
                finally:
                    steering.remove()
                logp = torch.log_softmax(head(hidden[:, :-1][target.to(device)]).float(), -1)
                picked = logp.gather(-1, ids[:, 1:][target].to(device)[:, None]).squeeze(-1)
                grads = torch.autograd.grad((picked * sign).sum(), probes)
            total += torch.stack(grads).double()
    return (total / len(pairs)).float()


def scores(model: nn.Module, evidence: Evidence, site: str) -> torch.Tensor:
    """The attribution of every AU of ``site`` on the evidence's pairs, computed once per evidence and site."""
    if evidence.tokenizer is None or not evidence.pairs:
        raise ValueError("attribution needs the evidence's pairs and tokenizer (gather them with gather())")
    return evidence.memo(
        f"attribution:{site}", lambda: margin_attribution(model, evidence.tokenizer, evidence.pairs, site)
    )


def build(model: nn.Module, evidence: Evidence, site: str = "head", k: int = 32, alpha: float = 5.0) -> GainSteerer:
    """Top-``k`` AUs of ``site`` by ``|attribution|``, gain ``1 + alpha * a_u / max|a|``."""
    a = scores(model, evidence, site)
    top = top_k_mask(a, k)
    scale = max((abs(float(a[layer, i])) for layer, i in top), default=0.0) or 1.0
    gains = [Gain(site, layer, i, float(alpha) * float(a[layer, i]) / scale) for layer, i in top]
    return GainSteerer("attribution", gains, {"site": site, "k": k, "alpha": alpha})


#: k from 2 to 100 and small gains only: the score is a first-order effect, and its top AUs (high-leverage units,
#: many in the first layers) break the model at AUSteer's gains (on the 1.5B, COPA val 0.64 -> 0.53 with 2 AUs at
#: alpha 4, docs/COMPARISON.md)
GRID = tuple({"site": "head", "k": k, "alpha": a} for k in (2, 8, 32, 100) for a in (0.25, 0.5, 1.0, 2.0))

METHOD = Method(
    "attribution",
    ("head",),
    GRID,
    build,
    "exact: gains folded into W_O columns",
    strength="alpha",
    frontier=Frontier({"site": "head", "k": 32}, (0.25, 0.5, 1.0, 2.0)),
)
