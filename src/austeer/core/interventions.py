"""The one intervention model: every steering, AUSteer's and every baseline's, is a :class:`Steerer` of one of
two shapes, each with hooks and, where the maths allows, an exact fold into the weights (restored when the block
ends).

- :class:`GainSteerer`: a per-dimension gain ``x <- (1 + gamma) * x`` (AUSteer, SADI, block, random, fixed),
  held as :class:`~austeer.core.steer.Gain` s, so hooks and exact folding are
  :func:`~austeer.core.steer.apply_gains` / :func:`~austeer.core.steer.folded_gains` (what a
  :class:`~austeer.core.spec.SteerSpec` is steered with too).
- :class:`AddSteerer`: a constant vector added at every position (CAA on the residual stream, ITI and au-add on
  head outputs, the answer-bias calibration on the logits). An addition is not a gain; it folds into a
  *bias*: ``W (x + v) = W x + W v`` for an addition to the input of a linear map, and an addition to a
  decoder layer's output equals an addition to the bias of the MLP's last linear map (``down_proj``)
  in families whose MLP output goes straight into the residual stream (:func:`bias_module`).

Exports build on these: a gain spec as a checkpoint, GGUF or LoRA (:mod:`austeer.exports`), a residual addition as
a llama.cpp control vector (:mod:`austeer.exports.control_vector`).

Example:
    >>> s = GainSteerer("demo", [Gain("head", 3, 7, 0.5)], {"k": 1})
    >>> s.n_steered, s.gains
    (1, [Gain(site='head', layer=3, index=7, gamma=0.5)])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

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
