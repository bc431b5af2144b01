"""Fit: pairs -> last-token activations -> streamed sign counts -> global top-k -> :class:`SteerSpec`.

Pairs are sorted by length (less padding), run in batches holding both texts of each pair (by default
the prompt they share once, the two answers from its KV cache), and the momenta ``positive - negative``
are taken in float32 and folded into :class:`SignCounts` batch by batch:
memory does not grow with the number of pairs.

Example:
    >>> from austeer import fit
    >>> from austeer.core.pairs import Pair
    >>> pairs = [Pair("Say something about the weather.", "What a lovely sunny day!", "What an awful gloomy day.")] * 4
    >>> spec = fit(model, tok, pairs, site="head", k=8, alpha=5.0, progress=False)
    >>> spec.k, abs(spec.units[0].beta)
    (8, 1.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from austeer.core.collect import pair_batches
from austeer.core.momentum import SignCounts, Unit, select, tied_at_cut
from austeer.core.pairs import Pair
from austeer.core.sites import check_site, decoder_layers, site_width
from austeer.core.spec import SELECTIONS, SteerSpec, fingerprint
from austeer.errors import UserError


@dataclass
class Reading:
    """What one pass over the pairs gives (:func:`read`): the sign counts of every site, streamed batch by batch,
    and, when kept, the last-token activations of both texts of every pair (``[N, L, W]``, in the pairs' order)."""

    counts: dict[str, SignCounts]
    pos: dict[str, torch.Tensor] = field(default_factory=dict)
    neg: dict[str, torch.Tensor] = field(default_factory=dict)


def read(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    sites: Sequence[str],
    batch_size: int = 16,
    keep: bool = False,
    max_length: int | None = None,
    progress: bool = True,
    padding_side: str = "left",
    share_prefix: bool = True,
    rank: int = 0,
    world: int = 1,
    desc: str = "scoring AUs",
) -> Reading:
    """The one collector: every pair read once (``batch_size`` pairs = 2x texts per forward), the momenta of
    every site folded into :class:`SignCounts` as they come, and with ``keep`` the activations kept too (what
    the baselines build from: :func:`austeer.methods.base.gather`). See :func:`score` for ``share_prefix``,
    ``rank`` and ``world``."""
    for site in sites:
        check_site(site)
    n_layers = len(decoder_layers(model))
    counts = {s: SignCounts.zeros(n_layers, site_width(model, s)) for s in sites}
    out = Reading(counts)
    batches = pair_batches(
        model,
        tokenizer,
        pairs,
        sites,
        batch_size,
        share_prefix=share_prefix,
        max_length=max_length,
        padding_side=padding_side,
        rank=rank,
        world=world,
    )
    total = (len(pairs) if sites else 0) if world == 1 else None  # a shard's size shows once its batches are planned
    label = desc if world == 1 else f"{desc} (rank {rank})"
    with tqdm(total=total, desc=label, unit="pair", disable=not progress) as bar:
        for rows, pos, neg in batches:  # length-sorted batches; kept activations go back to the pairs' order
            for site in sites:  # activations arrive in float32: half-precision differences would zero many momenta
                counts[site].update(pos[site] - neg[site])
                if keep:
                    if site not in out.pos:
                        out.pos[site] = pos[site].new_empty((len(pairs), *pos[site].shape[1:]))
                        out.neg[site] = neg[site].new_empty((len(pairs), *neg[site].shape[1:]))
                    idx = torch.tensor(list(rows))
                    out.pos[site][idx] = pos[site]
                    out.neg[site][idx] = neg[site]
            bar.update(len(rows))
    return out


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
    """Sign counts of every AU of ``sites`` over ``pairs`` (``batch_size`` pairs = 2x texts per forward; :func:`read`
    without keeping the activations: memory does not grow with the number of pairs).

    ``share_prefix=True`` (the default) runs the prompt shared by the two texts of a pair once and both
    answers from its KV cache (:func:`austeer.core.collect.shared_prefix_activations`): about half the compute when
    answers are short. The counts equal those of ``share_prefix=False`` (every text run whole) up to the sign of
    momenta within float rounding of zero (in float32, a handful of ~35k AU counts on COPA:
    ``benchmarks/dtype_selection.py``, docs/BENCHMARKS.md).

    ``rank``/``world``: score only batches ``rank, rank + world, ...`` of :func:`batch_plan` (one shard of
    a multi-process run; the shards' counts add up to the one-process counts exactly).
    """
    return read(
        model, tokenizer, pairs, sites, batch_size, max_length=max_length, progress=progress,
        padding_side=padding_side, share_prefix=share_prefix, rank=rank, world=world,
    ).counts  # fmt: skip


class EvidenceWarning(UserWarning):
    """The pairs cannot support the selection: no AU separates them, or the top-k cut is a tie."""


def check_evidence(counts: dict[str, SignCounts], k: int, n_pairs: int) -> None:
    """Warn (:class:`EvidenceWarning`) when the scores cannot decide the top ``k``.

    - every beta is 0: no AU moves consistently between positive and negative answers (identical
      texts after truncation, a ``max_length`` that cuts off the answers);
    - the ``k``-th and ``k+1``-th AUs tie on ``|beta|`` and on the z-score, so site, layer and index
      order choose the units (a single pair: every AU that moves at all has ``|beta| = 1``).

    Example:
        >>> import torch, warnings
        >>> c = SignCounts.zeros(1, 4)
        >>> c.update(torch.zeros(3, 1, 4))
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     check_evidence({"head": c}, 2, 3)
        >>> print(w[0].message)
        every beta is 0 over 3 pairs: no AU separates positive from negative answers, the 2 selected AUs steer nothing
    """
    if all(int(c.consistency().max()) == 0 for c in counts.values()):
        warnings.warn(
            f"every beta is 0 over {n_pairs} pairs: no AU separates positive from negative answers, "
            f"the {k} selected AUs steer nothing",
            EvidenceWarning,
            stacklevel=3,
        )
        return
    tied = tied_at_cut(counts, k)
    if tied:
        warnings.warn(
            f"the top-{k} cut falls among {tied} AUs that tie on |beta| and z-score over {n_pairs} pairs: "
            "site, layer and index order choose between them, not the pairs; use more pairs or another k",
            EvidenceWarning,
            stacklevel=3,
        )


def spec_from_counts(
    model: nn.Module,
    counts: dict[str, SignCounts],
    k: int,
    alpha: float,
    n_pairs: int,
    model_id: str = "",
    positions: str = "all",
) -> SteerSpec:
    """The spec of the global top ``k`` AUs of ``counts`` for ``model`` (warns when the evidence is too thin),
    steering at ``positions`` (see :data:`austeer.core.spec.POSITIONS`)."""
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    check_evidence(counts, k, n_pairs)
    return _spec(model, select(counts, k), alpha, n_pairs, list(counts), model_id, positions, scores=counts)


def _spec(
    model: nn.Module,
    units: list[Unit],
    alpha: float,
    n_pairs: int,
    sites: list[str],
    model_id: str,
    positions: str,
    **more: Any,
) -> SteerSpec:
    """The spec of ``units`` for ``model`` (its id defaults to the model's own name); ``more``: other fields."""
    return SteerSpec(
        units=units,
        alpha=float(alpha),
        model_id=model_id or str(getattr(getattr(model, "config", None), "_name_or_path", "")),
        fingerprint=fingerprint(model),
        n_pairs=n_pairs,
        sites=sites,
        positions=positions,
        **more,
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
    positions: str = "all",
    selection: str = "sign",
) -> SteerSpec:
    """Score the AUs of ``site`` (one or several) on ``pairs`` and keep the global top ``k``.

    ``share_prefix``: see :func:`score` (default: prompt run once per pair, answers from its KV cache;
    ``False`` runs both texts whole).
    ``scorer``: the function that computes the counts, with :func:`score`'s arguments
    (:func:`austeer.core.distributed.score_distributed` spreads them over a process group).
    ``positions``: where the gains act: ``"all"`` (the paper's rule: every token, foldable) or ``"last"``
    (the last position of each pass: the answer position, each generated token; hooks only). The
    selection is the same; see :data:`austeer.core.spec.POSITIONS`.
    ``selection``: how the AUs are chosen: ``"sign"`` (the paper's sign consistency, the default) or
    ``"attribution"`` (the derivative of the pairs' answer margin with respect to each AU's gain, one backward
    pass per 4 pairs, :mod:`austeer.core.attribution`; a first-order score, so use a small ``alpha``, 0.25-2). On
    Qwen2.5-Coder-1.5B, COPA, 8 attributed head AUs at alpha 1 gave 0.840 against AUSteer's 0.823 (32 AUs,
    alpha 10) on the same 400 test items (docs/COMPARISON.md). It runs 4 pairs per pass on one process
    (``share_prefix`` and ``max_length`` apply; ``batch_size`` and ``scorer`` apply to the sign counts only).
    """
    if not pairs:
        raise UserError("fit needs at least one pair")
    for name, value in (("k", k), ("batch_size", batch_size), ("max_length", max_length)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    sites = [site] if isinstance(site, str) else list(site)
    if selection not in SELECTIONS:
        raise UserError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if selection == "attribution":
        from austeer.core.attribution import margin_attribution, top_attributed

        for s in sites:
            check_site(s)
        scores = {
            s: margin_attribution(
                model, tokenizer, pairs, s, progress=progress, share_prefix=share_prefix, max_length=max_length
            )
            for s in sites
        }
        units = top_attributed(scores, k)
        return _spec(model, units, alpha, len(pairs), sites, model_id, positions, selection="attribution")
    counts = scorer(model, tokenizer, pairs, sites, batch_size, max_length, progress, share_prefix=share_prefix)
    return spec_from_counts(model, counts, k, alpha, len(pairs), model_id, positions)
