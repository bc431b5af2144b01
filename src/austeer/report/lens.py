"""Logit lens of weight slices: which tokens an atomic unit (and the block it belongs to) promotes.

An AU writes a fixed direction ``d`` into the residual stream per unit of its activation
(METHOD.md section 1):

- ``head``: column ``i`` of ``W_O``; ``neuron``: column ``i`` of ``W_down`` (the fold is on the *input*
  side of a linear map, so the direction is that column);
- ``ffn`` and ``residual``: the AU *is* residual coordinate ``i``, so the direction is the one-hot ``e_i``.

The lens maps ``d`` to vocabulary logits with ``lm_head(norm(d) - norm(0))``: the model's own final norm
applied to the direction alone (for RMSNorm this is ``d * weight`` up to a positive scale; for
LayerNorm it also centres ``d``; subtracting ``norm(0)`` drops a LayerNorm bias), then the unembedding
(its bias ignored). Approximation: in the real model ``d`` is added to the rest of the residual stream
and the norm's per-token scale comes from that sum; the lens ignores the rest, which keeps the
*ranking* of tokens (the positive scale cancels) but not absolute logit values.

The *block* of an AU is its attention head (``head``) or its whole layer (the other sites). The block
direction is what a block-level mean-difference shift would write: ``sum_j mean_m_j * d_j`` over the
block's dimensions ``j`` with the stored mean momentum ``mean_m`` (falling back to the plain sum of
directions when no scores are available). The AU is compared with it after orienting its own
direction the same way (``sign(mean_m_i) * d_i``).

Example:
    >>> import torch
    >>> from austeer.report.lens import top_tokens
    >>> logits = torch.tensor([0.1, 3.0, -2.0, 0.5])
    >>> top_tokens(logits, 2, largest=True)
    [(1, 3.0), (3, 0.5)]
    >>> top_tokens(logits, 1, largest=False)
    [(2, -2.0)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from austeer.core.momentum import SignCounts, Unit
from austeer.core.sites import decoder_layers, final_norm, fold_module, head_dim, site_def, site_width, weight_of
from austeer.errors import UserError


@dataclass(frozen=True)
class Token:
    """One vocabulary token with its lens logit (``text`` is ``tokenizer.decode([id])``)."""

    id: int
    text: str
    logit: float


@dataclass(frozen=True)
class UnitLens:
    """Promoted and suppressed tokens of one AU and of the block it belongs to."""

    unit: Unit
    block: str  # e.g. "layer 16 head 1" or "layer 12 (all 576 dims)"
    promoted: list[Token]
    suppressed: list[Token]
    block_promoted: list[Token]
    block_suppressed: list[Token]
    cosine: float  # cosine of the AU's oriented logit vector with the block's
    overlap: int  # tokens shared between the AU's and the block's promoted lists


def unembedding(model: nn.Module) -> torch.Tensor:
    """The ``[vocab, d_model]`` output embedding weight."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if head is None:
        raise UserError(f"{type(model).__name__} has no output embeddings (lm_head)")
    return weight_of(head)


def block_of(model: nn.Module, unit: Unit) -> tuple[range, str]:
    """Indices of the block ``unit`` belongs to and a label: its head for ``head``, else its whole layer.

    Example:
        >>> block_of(model, Unit("head", 3, 70, 1.0))
        (range(64, 128), 'layer 3 head 1')
    """
    width = site_width(model, unit.site)
    if unit.site == "head":
        hd = head_dim(model)
        h = unit.index // hd
        return range(h * hd, (h + 1) * hd), f"layer {unit.layer} head {h}"
    return range(width), f"layer {unit.layer} (all {width} dims)"


@torch.no_grad()
def directions(model: nn.Module, site: str, layer: int) -> torch.Tensor:
    """``[width, d_model]`` float32: the residual direction written by each AU of ``site`` in ``layer``.

    Example:
        >>> directions(model, "ffn", 0)[:2, :3]
        tensor([[1., 0., 0.],
                [0., 1., 0.]])
    """
    sd = site_def(model, site)
    if sd.fold is None or sd.fold.axis == "out":
        n = site_width(model, site)
        if layer < 0 or layer >= len(decoder_layers(model)):
            raise UserError(f"layer {layer} out of range: the model has {len(decoder_layers(model))} layers")
        return torch.eye(n, dtype=torch.float32)
    mod, fold = fold_module(model, site, layer)
    w = weight_of(mod).detach().float().cpu()
    # W is [out, in] (nn.Linear) or [in, out] (GPT-2 Conv1D); the AU is input dimension i
    return w if fold.transposed else w.t()


@torch.no_grad()
def lens_logits(model: nn.Module, dirs: torch.Tensor) -> torch.Tensor:
    """``[n, vocab]`` float32 logits of ``n`` residual directions through the final norm and unembedding."""
    norm = final_norm(model)
    p = next(norm.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    x = dirs.to(device=device, dtype=dtype)
    normed = norm(x).float() - norm(torch.zeros_like(x[:1])).float()
    w = unembedding(model)
    return (normed.to(device=w.device, dtype=w.dtype) @ w.t()).float().cpu()


def top_tokens(logits: torch.Tensor, n: int, largest: bool = True) -> list[tuple[int, float]]:
    """``(token id, logit)`` of the ``n`` largest (or smallest) entries of a 1-D logit vector."""
    vals, ids = torch.topk(logits.float(), min(n, logits.numel()), largest=largest)
    return [(int(i), round(float(v), 4)) for i, v in zip(ids, vals)]


def _tokens(tokenizer: Any, pairs: list[tuple[int, float]]) -> list[Token]:
    return [Token(i, tokenizer.decode([i]), v) for i, v in pairs]


def unit_lens(
    model: nn.Module, tokenizer: Any, unit: Unit, counts: SignCounts | None = None, n_tokens: int = 8
) -> UnitLens:
    """Top promoted / suppressed tokens of ``unit`` (per unit of positive activation) and of its block.

    Example:
        >>> lens = unit_lens(model, tok, Unit("head", 16, 75, 1.0), n_tokens=3)
        >>> len(lens.promoted), lens.block
        (3, 'layer 16 head 1')
    """
    idx, label = block_of(model, unit)
    dirs = directions(model, unit.site, unit.layer)
    block = dirs[idx.start : idx.stop]
    if counts is not None:
        mean = counts.mean()[unit.layer].float()
        weights = mean[idx.start : idx.stop]
        sign = 1.0 if float(mean[unit.index]) >= 0 else -1.0
    else:
        weights = torch.ones(len(idx))
        sign = 1.0
    block_dir = (weights[:, None] * block).sum(0, keepdim=True)
    logits = lens_logits(model, torch.cat([dirs[unit.index : unit.index + 1], block_dir]))
    own, blk = logits[0], logits[1]
    cosine = float(torch.nn.functional.cosine_similarity(sign * own - (sign * own).mean(), blk - blk.mean(), dim=0))
    promoted = _tokens(tokenizer, top_tokens(own, n_tokens, True))
    block_promoted = _tokens(tokenizer, top_tokens(blk, n_tokens, True))
    oriented = promoted if sign > 0 else _tokens(tokenizer, top_tokens(own, n_tokens, False))
    return UnitLens(
        unit=unit,
        block=label,
        promoted=promoted,
        suppressed=_tokens(tokenizer, top_tokens(own, n_tokens, False)),
        block_promoted=block_promoted,
        block_suppressed=_tokens(tokenizer, top_tokens(blk, n_tokens, False)),
        cosine=round(cosine, 4),
        overlap=len({t.id for t in oriented} & {t.id for t in block_promoted}),
    )


def block_heterogeneity(model: nn.Module, unit: Unit) -> torch.Tensor:
    """Pairwise cosine similarities ``[b, b]`` of the lens logit vectors (centred) of all dims of ``unit``'s block.

    Low off-diagonal values mean the dimensions of one block push towards different tokens.

    Example:
        >>> sims = block_heterogeneity(model, Unit("head", 16, 75, 1.0))
        >>> sims.shape, round(float(sims[0, 0]), 3)
        (torch.Size([64, 64]), 1.0)
    """
    idx, _ = block_of(model, unit)
    dirs = directions(model, unit.site, unit.layer)[idx.start : idx.stop]
    logits = lens_logits(model, dirs)
    logits = logits - logits.mean(1, keepdim=True)
    logits = logits / logits.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return logits @ logits.t()
