"""The one interface every steering method shares, and the two shapes of steering behind it.

A :class:`Method` turns contrastive evidence (last-token activations of the pairs, gathered once by
:func:`gather`) and a few hyperparameters into a :class:`Steerer`. A steerer says how many activations
it touches (``n_steered``) and steers a model inside ``with steerer.hooks(model):`` or, where the maths
allows, ``with steerer.fold(model):`` (weights changed in place and restored when the block ends).

Two shapes cover every method:

- :class:`GainSteerer`: a per-dimension gain ``x <- (1 + gamma) * x`` (AUSteer, SADI, block, random, fixed),
  held as :class:`~austeer.core.steer.Gain` s, so hooks and exact folding are the core's
  :func:`~austeer.core.steer.apply_gains` / :func:`~austeer.core.steer.folded_gains` (``Unit.beta`` stays a score).
- :class:`AddSteerer`: a constant vector added at every position (CAA on the residual stream, ITI on
  head outputs, the answer-bias calibration on the logits). An addition is not a gain; it folds into a
  *bias*: ``W (x + v) = W x + W v`` for an addition to the input of a linear map, and an addition to a
  decoder layer's output equals an addition to the bias of the MLP's last linear map (``down_proj``)
  in families whose MLP output goes straight into the residual stream.

Example:
    >>> s = GainSteerer("demo", [Gain("head", 3, 7, 0.5)], {"k": 1})
    >>> s.n_steered, s.gains
    (1, [Gain(site='head', layer=3, index=7, gamma=0.5)])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from austeer.core.fit import read
from austeer.core.momentum import SignCounts
from austeer.core.pairs import Pair
from austeer.core.sites import decoder_layers, family, family_of, fold_module, site_module
from austeer.core.steer import Gain, apply_gains, folded_gains
from austeer.errors import UserError


class CannotFold(UserError):
    """This steering cannot be written into the weights; the message says why."""


class Steerer(Protocol):
    """What every method produces. ``system`` is the system turn the steered model is evaluated with (None for
    none; a prompting baseline sets it, see :mod:`austeer.methods.prompt`)."""

    name: str
    config: dict[str, Any]
    system: str | None

    @property
    def n_steered(self) -> int: ...

    def hooks(self, model: nn.Module) -> Any:  # a context manager
        ...

    def fold(self, model: nn.Module) -> Any:  # a context manager, or raises CannotFold
        ...


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
    )
    evidence._counts.update(got.counts)  # streamed in the same pass: AUSteer's statistic, as fit computes it
    return evidence


def _first_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if ids else -1


@dataclass
class GainSteerer:
    """``x_u <- (1 + gamma_u) x_u`` for each :class:`~austeer.core.steer.Gain` ``(site, layer, index, gamma)``;
    hooks and exact fold."""

    name: str
    gains: list[Gain]
    config: dict[str, Any]
    system: str | None = None
    positions: str = "all"  # or "last": the last position of each pass only (hooks only)

    @property
    def n_steered(self) -> int:
        return len(self.gains)

    def hooks(self, model: nn.Module) -> Any:
        return apply_gains(model, self.gains, self.positions)

    def fold(self, model: nn.Module) -> Any:
        if self.positions != "all":
            raise CannotFold(f"{self.name} steers the {self.positions} position only; folded weights steer every one")
        return folded_gains(model, self.gains)


@dataclass
class AddSteerer:
    """``x <- x + v`` at every position, at ``site`` (``"head"``: o_proj input; ``"residual"``: layer output;
    ``"logits"``: the LM head output), one vector per layer (the key is ignored for ``"logits"``)."""

    name: str
    site: str
    vectors: dict[int, torch.Tensor]
    config: dict[str, Any]
    n_steered: int = 0
    system: str | None = None

    def _module(self, model: nn.Module, layer: int) -> nn.Module:
        if self.site == "logits":
            head = model.get_output_embeddings()  # type: ignore[operator]
            if not isinstance(head, nn.Module):
                raise UserError(f"{type(model).__name__} has no output embeddings to offset")
            return head
        if self.site == "residual":
            return decoder_layers(model)[layer]
        return site_module(model, self.site, layer)

    @contextmanager
    def hooks(self, model: nn.Module) -> Iterator[None]:
        handles = []
        try:
            for layer, vec in self.vectors.items():
                mod = self._module(model, layer)
                p = next(mod.parameters())
                v = vec.to(device=p.device, dtype=p.dtype)
                if self.site == "head":
                    handles.append(mod.register_forward_pre_hook(_add_input(v)))
                else:
                    handles.append(mod.register_forward_hook(_add_output(v)))
            yield
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def fold(self, model: nn.Module) -> Iterator[None]:
        saved: list[tuple[nn.Module, torch.Tensor | None]] = []
        try:
            for layer, bias in self._biases(model).items():
                mod = bias_module(model, self.site, layer)
                old = mod.bias if isinstance(mod.bias, torch.Tensor) else None
                saved.append((mod, None if old is None else old.detach().clone()))
                with torch.no_grad():
                    if old is None:
                        mod.bias = nn.Parameter(bias, requires_grad=False)
                    else:
                        old.add_(bias.to(old.dtype))
            yield
        finally:
            with torch.no_grad():
                for mod, old in reversed(saved):
                    if old is None:
                        setattr(mod, "bias", None)  # noqa: B010 (drops the parameter added by the fold)
                    else:
                        getattr(mod, "bias").copy_(old)  # noqa: B009

    @torch.no_grad()
    def _biases(self, model: nn.Module) -> dict[int, torch.Tensor]:
        """The bias change each addition becomes (raises :class:`CannotFold` where there is none)."""
        out = {}
        for layer, vec in self.vectors.items():
            mod = bias_module(model, self.site, layer)
            p = next(mod.parameters())
            v = vec.to(device=p.device, dtype=p.dtype)
            # input side: the linear map of v (W v), computed by the module itself (Linear or Conv1D alike)
            out[layer] = mod(v[None])[0] - mod(torch.zeros_like(v)[None])[0] if self.site == "head" else v
        return out


def bias_module(model: nn.Module, site: str, layer: int) -> nn.Module:
    """The linear map whose bias an addition at ``site`` folds into (see the module docstring)."""
    if site == "logits":
        head = model.get_output_embeddings()  # type: ignore[operator]
        if not isinstance(head, nn.Linear):
            raise CannotFold(f"the output embedding of {type(model).__name__} is not a linear map")
        return head
    if site == "head":
        return fold_module(model, "head", layer)[0]
    if site == "residual":
        fam = family_of(model)
        if family(model).post_mlp_norm:
            raise CannotFold(
                f"in {fam} the MLP output is normalised before the residual add, so an addition to the layer "
                "output is not a bias of any linear map; use hooks"
            )
        return fold_module(model, "ffn", layer)[0]
    raise CannotFold(f"no bias to fold an addition at site {site!r} into")


def _add_input(v: torch.Tensor) -> Callable[..., Any]:
    def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] + v.to(args[0].device), *args[1:])

    return hook


def _add_output(v: torch.Tensor) -> Callable[..., Any]:
    def hook(_m: nn.Module, _a: tuple[Any, ...], out: Any) -> Any:
        x = out[0] if isinstance(out, tuple) else out
        y = x + v.to(x.device)
        return (y, *out[1:]) if isinstance(out, tuple) else y

    return hook


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
