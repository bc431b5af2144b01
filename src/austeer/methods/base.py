"""The one interface every steering method shares: evidence in, a steerer out.

A :class:`Method` turns contrastive evidence (last-token activations of the pairs, gathered once by
:func:`gather`) and a few hyperparameters into a :class:`~austeer.core.interventions.Steerer`. A steerer says how
many activations it touches (``n_steered``) and steers a model inside ``with steerer.hooks(model):`` or, where the
maths allows, ``with steerer.fold(model):`` (weights changed in place and restored when the block ends). The
steerers are the core's one intervention model (:mod:`austeer.core.interventions`), re-exported here:

- :class:`GainSteerer`: a per-dimension gain (AUSteer, SADI, block, random, fixed);
- :class:`AddSteerer`: a constant vector added at every position, folded as a bias (CAA, ITI, au-add, calibration).

Example (see :func:`gather`):
    >>> from austeer.methods import METHODS
    >>> METHODS["caa"].build(model, gather(model, tok, [Pair("Hi?", "Great!", "Awful.")], ["residual"], progress=False),
    ...                      layer=0.5, multiplier=1.0).site
    'residual'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from austeer.core.fit import read
from austeer.core.interventions import AddSteerer, CannotFold, GainSteerer, Steerer, bias_module
from austeer.core.momentum import SignCounts
from austeer.core.pairs import Pair
from austeer.errors import UserError

__all__ = [
    "AddSteerer", "CannotFold", "Evidence", "Frontier", "GainSteerer", "Method", "Steerer", "bias_module", "gather",
]  # fmt: skip


@dataclass
class Evidence:
    """Last-token activations of the pairs at each site: ``pos[site]``/``neg[site]`` are ``[N, L, W]``, with the
    pairs they were read from (and the tokenizer that read them, for selection rules that run them again).

    ``system`` is the system turn the pairs were read with (when they share one); the prompted methods
    (:mod:`austeer.methods.prompt`) evaluate their steerers with it.
    """

    pos: dict[str, torch.Tensor]
    neg: dict[str, torch.Tensor]
    pairs: list[Pair] = field(default_factory=list, repr=False)  # the pairs read (selection rules rerun them)
    answer_tokens: list[tuple[int, int]] = field(default_factory=list)  # first token ids of both answers
    system: str | None = None
    tokenizer: Any = field(default=None, repr=False, compare=False)  # the tokenizer they were read with
    share_prefix: bool = False  # whether they were read with each pair's shared prompt run once (reruns do the same)
    _counts: dict[str, SignCounts] = field(default_factory=dict, init=False, repr=False, compare=False)
    _memo: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def answers(self) -> list[tuple[str, str]]:
        """``(positive, negative)`` answer texts of the pairs."""
        return [(p.positive, p.negative) for p in self.pairs]

    @property
    def prompts(self) -> list[str]:
        """The pairs' prompts (user turns)."""
        return [p.prompt for p in self.pairs]

    @property
    def n_pairs(self) -> int:
        return len(self.pairs) if self.pairs else int(next(iter(self.pos.values())).shape[0])

    def counts(self, site: str) -> SignCounts:
        """Sign counts of the momenta ``pos - neg`` (the AUSteer statistic) at ``site``, computed once per site
        (every configuration and dose of a run ranks the same counts)."""
        if site not in self._counts:
            _, n_layers, width = self.pos[site].shape
            c = SignCounts.zeros(n_layers, width)
            c.update(self.pos[site] - self.neg[site])
            self._counts[site] = c
        return self._counts[site]

    def memo(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` the first time ``key`` is asked for, the kept result after (a score every
        configuration of a run ranks, e.g. :func:`austeer.methods.attribution.scores`)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def mean_diff(self, site: str) -> torch.Tensor:
        """``mean_j(pos_j - neg_j)``, ``[L, W]`` float32."""
        return (self.pos[site] - self.neg[site]).double().mean(0).float()

    def level(self, site: str) -> torch.Tensor:
        """The mean activation over both texts of every pair, ``[L, W]`` float32 (its sign: which way a gain
        above 1 moves an AU)."""
        return (self.pos[site].double() + self.neg[site].double()).mean(0).float()


def gather(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    sites: Sequence[str],
    batch_size: int = 16,
    max_length: int | None = None,
    progress: bool = True,
    share_prefix: bool = False,
) -> Evidence:
    """Read every site at the last token of both texts of every pair, in batches (one pass for all methods);
    with no site, nothing is run (the evidence then holds the pairs' texts only).

    The pairs are read by the one collector, :func:`austeer.core.fit.read`, with the activations kept
    (AUSteer's sign counts come from the same pass). ``share_prefix=False`` (here the default) runs both texts
    whole, as every comparison in docs/ was computed; ``True`` runs the shared prompt once (about 2x faster on
    long prompts; activations equal up to float rounding).

    Example:
        >>> ev = gather(model, tok, [Pair("Hi?", "Great!", "Awful.")] * 2, ["residual"], progress=False)
        >>> tuple(ev.pos["residual"].shape), ev.n_pairs
        ((2, 30, 576), 2)
    """
    if not pairs:
        raise UserError("gather needs at least one pair")
    got = read(
        model, tokenizer, pairs, sites, batch_size, keep=True, max_length=max_length, progress=progress,
        share_prefix=share_prefix, desc="reading pairs",
    )  # fmt: skip
    systems = {p.system for p in pairs}
    evidence = Evidence(
        got.pos,
        got.neg,
        list(pairs),
        [(_first_token(tokenizer, p.positive), _first_token(tokenizer, p.negative)) for p in pairs],
        systems.pop() if len(systems) == 1 else None,
        tokenizer,
        share_prefix,
    )
    evidence._counts.update(got.counts)  # streamed in the same pass: AUSteer's statistic, as fit computes it
    return evidence


def _first_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if ids else -1


@dataclass(frozen=True)
class Frontier:
    """A method's point on the effect/damage frontier: a fixed ``config`` swept over ``strengths`` (values of the
    method's :attr:`Method.strength` key)."""

    config: dict[str, Any]
    strengths: tuple[float, ...]


@dataclass(frozen=True)
class Method:
    """A steering method: the sites it reads, its validation grid, how to build a steerer, and how it describes
    itself (how it folds, its strength, what a table shows), so that the comparison needs no method names.

    ``build(model, evidence, **config)`` returns one :class:`Steerer`, or several (``random`` averages
    seeds: the comparison evaluates each and reports the mean). A ``prompted`` method is built from
    evidence read with the task's instruction in the system turn (:attr:`~austeer.tasks.base.Task.instruction`)
    and evaluated with it.

    - ``foldable``: how it folds, in words (the ``fold`` of a comparison result).
    - ``adds_at``: the site where an additive method adds its vector (:class:`AddSteerer`); its fold is a bias
      there, which some models lack (see :func:`bias_module` and :meth:`fold_note`). ``None`` for gains and prompts.
    - ``strength``: the grid key that sets its strength (the frontier sweeps it); ``None`` when it has none.
    - ``also_shown``: configuration keys a table shows besides the grid's own (:attr:`shown`).
    - ``frontier``: its configuration and strengths on the frontier, if it has one there.
    - ``default``: whether ``austeer compare`` runs it when no methods are named.
    - ``kind``: the only task kind it applies to (``None``: every kind).
    - ``pairs_grid``: the grid ``austeer tune`` tries on a pairs file where it differs from ``grid`` (held-out
      margins move less than a task's accuracy, so some methods need more strength there).
    - ``backward``: whether building it runs a backward pass through the model on every pair (hours on long
      prompts on a CPU): a run that may take its methods in any order takes it last.

    Example:
        >>> m = Method("demo", ("head",), ({"k": 2, "alpha": 1.0},), lambda *a, **kw: None, "exact", strength="alpha")
        >>> sorted(m.params), m.shown
        (['alpha', 'k'], ('k', 'alpha'))
        >>> m.fold_note(None)
        'exact'
    """

    name: str
    sites: tuple[str, ...]
    grid: tuple[dict[str, Any], ...]
    build: Callable[..., Any]
    foldable: str
    prompted: bool = False
    adds_at: str | None = None
    strength: str | None = None
    also_shown: tuple[str, ...] = ()
    frontier: Frontier | None = None
    default: bool = False
    kind: str | None = None
    pairs_grid: tuple[dict[str, Any], ...] | None = None
    backward: bool = False

    @property
    def params(self) -> frozenset[str]:
        """The keys of its grid: what :attr:`build` takes (a steerer's config may hold more, e.g. CAA's layer index)."""
        return frozenset(k for config in self.grid for k in config)

    @property
    def shown(self) -> tuple[str, ...]:
        """The configuration keys a comparison table shows: the grid's keys, then :attr:`also_shown`."""
        return tuple(dict.fromkeys([k for config in self.grid for k in config] + list(self.also_shown)))

    def fold_note(self, model: nn.Module) -> str:
        """How its steering folds into ``model``'s weights, in words: :attr:`foldable`, or ``hooks only (why)``
        where the model has no bias for its addition. A cheap check: nothing is folded to find out.

        Example:
            >>> from austeer.methods import METHODS
            >>> print(METHODS["caa"].fold_note(model))
            as a bias: v added to down_proj's bias of that layer
        """
        if self.adds_at is not None:
            try:
                bias_module(model, self.adds_at, 0)  # the family (or the LM head) decides, not the layer
            except CannotFold as exc:
                return f"hooks only ({exc})"
        return self.foldable

    def fit(self, model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], **config: Any) -> Steerer | list[Steerer]:
        """Gather the evidence on ``pairs`` and build one steerer with ``config``."""
        return self.build(model, gather(model, tokenizer, pairs, self.sites, progress=False), **config)
