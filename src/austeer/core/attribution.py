"""Attribution scores: the derivative of the pairs' answer margin with respect to each AU's gain.

The selection :func:`austeer.fit` uses with ``selection="attribution"`` (and the ``attribution`` method of the
comparison). With the margin of a pair ``m = log p(positive answer | prompt) - log p(negative answer |
prompt)`` (summed over the answer's tokens) and the gain ``x_u <- (1 + gamma_u) x_u`` at every position, the
attribution of AU ``u`` is the derivative at no steering

    ``a_u = d m / d gamma_u = sum_t x_{u,t} * d m / d x_{u,t}``

(attribution patching's "activation times gradient", summed over the positions the gain acts on), averaged
over the pairs: one forward and one backward pass per batch, through a probe gain of 1 on every AU of the
site (its gradient *is* ``a``); the prompt a pair's two texts share runs once by default.

:func:`top_attributed` keeps the global top ``k`` by ``|a_u|`` with
``beta = a_u / max|a|`` (in ``[-1, 1]``, the sign that raises the margin), so the spec's gain
``1 + alpha * beta`` is graded as AUSteer's. It is a first-order score: use small ``alpha`` (0.25-2).

For an *addition* ``x_u <- x_u + c_u`` at every position (``au-add-attr``, :mod:`austeer.methods.au_add`) the
derivative is with respect to the constant, ``d m / d c_u = sum_t d m / d x_{u,t}`` (``probe="add"``: a probe
bias of 0 instead of a probe gain of 1), in margin per unit of the activation.

Example:
    >>> from austeer.core.pairs import Pair
    >>> a = margin_attribution(model, tok, [Pair("Is the sky blue?", "Yes", "No")], "head", progress=False)
    >>> units = top_attributed({"head": a}, 4)
    >>> len(units), max(abs(u.beta) for u in units)
    (4, 1.0)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from austeer.core.collect import (
    PrefixSplit,
    backbone,
    encode,
    model_device,
    plan_batches,
    prefix_pass,
    shared_prefix_length,
    split_pairs,
    suffix_pass,
    token_limit,
)
from austeer.core.momentum import Unit, top_k_mask
from austeer.core.pairs import Pair, pair_texts
from austeer.core.sites import SITES, decoder_layers, site_width
from austeer.core.steer import add_hooks
from austeer.errors import UserError

#: what the derivative is taken with respect to: each AU's gain, or a constant added to it at every position
PROBES = ("gain", "add")


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
        n = shared_prefix_length(a, b)
        for r, row in ((j, a), (j + 1, b)):
            target[r, mask.shape[1] - (len(row) - n) :] = True
    return target


def _whole_margins(
    net: nn.Module, head: nn.Module, tokenizer: Any, texts: list[str], limit: int | None
) -> torch.Tensor:
    """The answer tokens' log-probabilities of rows ``pos0, neg0, pos1, ...``, signed (``+`` for the positive
    answer), with every text run whole."""
    enc = encode(tokenizer, texts, limit, "left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    device = model_device(net)
    target = _answer_tokens(mask, ids)[:, 1:]  # the token at p is predicted at p - 1
    hidden = net(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=(mask.cumsum(1) - 1).clamp(min=0).to(device),
        use_cache=False,
    ).last_hidden_state
    sign = torch.tensor([1.0, -1.0]).repeat(len(texts) // 2)[:, None].expand_as(target)[target].to(device)
    logp = torch.log_softmax(head(hidden[:, :-1][target.to(device)]).float(), -1)
    return logp.gather(-1, ids[:, 1:][target].to(device)[:, None]).squeeze(-1) * sign


def _split_margins(net: nn.Module, head: nn.Module, split: PrefixSplit) -> torch.Tensor:
    """As :func:`_whole_margins`, with each pair's shared prompt run once and both answers continued from its
    KV cache (:func:`~austeer.core.collect.prefix_pass`): the gradient reaches the prompt's positions through
    the cache, so the derivative is the same up to float rounding, at about half the compute on long prompts."""
    prompt, cache = prefix_pass(net, split)
    answers = suffix_pass(net, split, cache)
    # an answer's first token is predicted at its prompt's last position, the rest at the answer's own positions
    before = torch.cat([prompt[:, -1:].repeat_interleave(2, dim=0), answers[:, :-1]], dim=1)
    target = split.suffix_mask.bool().to(before.device)
    sign = torch.tensor([1.0, -1.0], device=before.device).repeat(len(target) // 2)[:, None].expand_as(target)
    logp = torch.log_softmax(head(before[target]).float(), -1)
    return logp.gather(-1, split.suffix_ids.to(before.device)[target][:, None]).squeeze(-1) * sign[target]


def margin_attribution(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    site: str,
    batch_size: int = 4,
    progress: bool = True,
    share_prefix: bool = True,
    max_length: int | None = None,
    probe: str = "gain",
) -> torch.Tensor:
    """``[L, W]`` float32: the mean over ``pairs`` of ``d margin / d gamma_u`` for every AU of ``site`` (see
    the module docstring), or with ``probe="add"`` of ``d margin / d c_u`` (a constant added to the AU at every
    position). Runs ``batch_size`` pairs per forward and backward pass; with ``share_prefix`` the
    prompt a pair's two texts share runs once and both answers continue from its KV cache (about half the
    compute on long prompts; equal up to float rounding), otherwise both texts run whole. Texts longer than
    ``max_length`` tokens (default: the model's context) are cut on the left. No parameter gets a gradient and
    no hook outlives the call.

    Example:
        >>> a = margin_attribution(model, tok, [Pair("Is the sky blue?", "Yes", "No")], "head", progress=False)
        >>> b = margin_attribution(model, tok, [Pair("Is the sky blue?", "Yes", "No")], "head", progress=False,
        ...                        share_prefix=False)
        >>> tuple(a.shape), bool(torch.allclose(a, b, rtol=1e-3, atol=1e-5))
        ((30, 576), True)
    """
    if not pairs:
        raise UserError("margin_attribution needs at least one pair")
    if probe not in PROBES:
        raise UserError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")
    n_layers, width = len(decoder_layers(model)), site_width(model, site)
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Module):
        raise UserError(f"{type(model).__name__} has no output embeddings to score answers with")
    device, dtype = model_device(model), next(model.parameters()).dtype
    net, limit = backbone(model), token_limit(model, max_length)
    texts = [pair_texts(tokenizer, p) for p in pairs]
    total = torch.zeros(n_layers, width, dtype=torch.float64)
    batches = plan_batches(texts, batch_size)
    with _frozen(model):
        for rows in tqdm(batches, desc=f"attribution ({site})", unit="batch", disable=not progress):
            chunk = [texts[i] for i in rows]
            split = split_pairs(tokenizer, chunk, limit) if share_prefix else None
            probes = [torch.zeros(width, requires_grad=True) for _ in range(n_layers)]
            with torch.enable_grad():
                shift = probe == "add"
                at = {(site, layer): (p if shift else 1 + p).to(device, dtype) for layer, p in enumerate(probes)}
                steering = add_hooks(model, at, shift=shift)
                try:
                    if split is not None:
                        margins = _split_margins(net, head, split)
                    else:  # run whole, or a pair shares no first token
                        margins = _whole_margins(net, head, tokenizer, [t for pair in chunk for t in pair], limit)
                finally:
                    steering.remove()
                grads = torch.autograd.grad(margins.sum(), probes)
            total += torch.stack(grads).double()
    return (total / len(pairs)).float()


def top_attributed(scores: Mapping[str, torch.Tensor], k: int) -> list[Unit]:
    """The global top ``k`` AUs of ``scores`` (``{site: [L, W]}``) by ``|a|``, largest first (ties: site order,
    then layer, then index), with ``beta = a / max|a|`` over the kept ones.

    Example:
        >>> top_attributed({"head": torch.tensor([[0.1, -0.4], [0.2, 0.0]])}, 2)
        [Unit(site='head', layer=0, index=1, beta=-1.0), Unit(site='head', layer=1, index=0, beta=0.5)]
    """
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    sites = sorted(scores, key=SITES.index)
    flat = torch.cat([scores[s].double().flatten() for s in sites])  # site, then layer, then index order
    starts = np.cumsum([0] + [scores[s].numel() for s in sites])
    top = [i for _, i in top_k_mask(flat[None], k)]
    scale = max((abs(float(flat[i])) for i in top), default=0.0) or 1.0
    out = []
    for i in top:
        j = int(np.searchsorted(starts, i, side="right")) - 1
        layer, index = divmod(i - int(starts[j]), scores[sites[j]].shape[1])
        out.append(Unit(sites[j], layer, index, float(flat[i]) / scale))
    return out
