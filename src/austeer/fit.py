"""Fit: pairs -> last-token activations -> streamed sign counts -> global top-k -> :class:`SteerSpec`.

Pairs are sorted by length (less padding), run in batches holding both texts of each pair (by default
the prompt they share once, the two answers from its KV cache), and the momenta ``positive - negative``
are taken in float32 and folded into :class:`SignCounts` batch by batch:
memory does not grow with the number of pairs.

Example:
    >>> from austeer import fit
    >>> from austeer.models import load_model
    >>> from austeer.pairs import Pair
    >>> model, tok = load_model()
    >>> pairs = [Pair("Say something about the weather.", "What a lovely sunny day!", "What an awful gloomy day.")] * 4
    >>> spec = fit(model, tok, pairs, site="head", k=8, alpha=5.0, progress=False)
    >>> spec.k, abs(spec.units[0].beta)
    (8, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from austeer.collect import batch_plan, pair_activations, pair_momenta
from austeer.models import fingerprint
from austeer.momentum import SignCounts, select
from austeer.pairs import Pair, pair_texts
from austeer.sites import check_site, decoder_layers, site_width
from austeer.spec import SteerSpec


def score(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    sites: Sequence[str],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    padding_side: str = "left",
    share_prefix: bool = True,
    rank: int = 0,
    world: int = 1,
) -> dict[str, SignCounts]:
    """Sign counts of every AU of ``sites`` over ``pairs`` (``batch_size`` pairs = 2x texts per forward).

    ``share_prefix=True`` (the default) runs the prompt shared by the two texts of a pair once and both
    answers from its KV cache (:func:`austeer.collect.pair_momenta`): about half the compute when answers
    are short. The counts equal those of ``share_prefix=False`` (every text run whole) up to the sign of
    momenta within float rounding of zero (in float32, a handful of ~35k AU counts on COPA:
    ``benchmarks/dtype_selection.py``, docs/BENCHMARKS.md).

    ``rank``/``world``: score only batches ``rank, rank + world, ...`` of :func:`batch_plan` (one shard of
    a multi-process run; the shards' counts add up to the one-process counts exactly).
    """
    for site in sites:
        check_site(site)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
    n_layers = len(decoder_layers(model))
    counts = {s: SignCounts.zeros(n_layers, site_width(model, s)) for s in sites}
    mine = batch_plan(tokenizer, pairs, batch_size)[rank::world]
    desc = "scoring AUs" if world == 1 else f"scoring AUs (rank {rank})"
    bar = tqdm(total=sum(map(len, mine)), desc=desc, unit="pair", disable=not progress)
    try:
        if share_prefix:
            for rows in mine:
                chunk = [pair_texts(tokenizer, pairs[i]) for i in rows]
                momenta = pair_momenta(model, tokenizer, chunk, sites, max_length)
                for site in sites:
                    counts[site].update(momenta[site])
                bar.update(len(rows))
        else:
            for batch, pos, neg in pair_activations(model, tokenizer, pairs, sites, mine, max_length, padding_side):
                for site in sites:  # subtract in float32: half-precision differences zero many momenta
                    counts[site].update(pos[site].to(torch.float32) - neg[site].to(torch.float32))
                bar.update(len(batch))
    finally:
        bar.close()
    return counts


def spec_from_counts(
    model: nn.Module, counts: dict[str, SignCounts], k: int, alpha: float, n_pairs: int, model_id: str = ""
) -> SteerSpec:
    """The spec of the global top ``k`` AUs of ``counts`` for ``model``."""
    return SteerSpec(
        units=select(counts, k),
        alpha=float(alpha),
        model_id=model_id or str(getattr(getattr(model, "config", None), "_name_or_path", "")),
        fingerprint=fingerprint(model),
        n_pairs=n_pairs,
        sites=list(counts),
        scores=counts,
    )


def fit(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    site: str | Sequence[str] = "head",
    k: int = 32,
    alpha: float = 5.0,
    batch_size: int = 16,
    max_length: int | None = None,
    model_id: str = "",
    progress: bool = True,
    share_prefix: bool = True,
    scorer: Callable[..., dict[str, SignCounts]] = score,
) -> SteerSpec:
    """Score the AUs of ``site`` (one or several) on ``pairs`` and keep the global top ``k``.

    ``share_prefix``: see :func:`score` (default: prompt run once per pair, answers from its KV cache;
    ``False`` runs both texts whole).
    ``scorer``: the function that computes the counts, with :func:`score`'s arguments
    (:func:`austeer.distributed.score_distributed` spreads them over a process group).
    """
    if not pairs:
        raise ValueError("fit needs at least one pair")
    sites = [site] if isinstance(site, str) else list(site)
    counts = scorer(model, tokenizer, pairs, sites, batch_size, max_length, progress, share_prefix=share_prefix)
    return spec_from_counts(model, counts, k, alpha, len(pairs), model_id)
