"""Steer with a spec: hooks (dynamic) or exact weight folding (zero runtime cost), and export.

Every selected AU ``u`` gets the gain ``x_u <- (1 + alpha * beta_u) * x_u`` at every token position (or,
for a spec with ``positions="last"``, at the last position of each forward pass only: hooks alone can do
that, see :data:`austeer.core.spec.POSITIONS`).
A spec's units become :class:`Gain` s (``gamma = alpha * beta``); steering that has gains but no scores
(the baselines' SADI, block, ...) takes the same path with its own gains: :func:`apply_gains`,
:func:`folded_gains`, :func:`gains_vectors`.

- :func:`apply` is a context manager: forward hooks multiply each hooked tensor by a precomputed gain
  vector (ones everywhere but the selected dimensions), made once on the module's device and dtype.
  The hooks are removed when the block ends, also when it raises.
- :func:`fold` scales the weight slices instead (column ``i`` of ``W_O`` for ``head``, row ``i`` of
  ``W_down`` and its bias for ``ffn``, column ``i`` of ``W_down`` for ``neuron``), keeping the original
  slices, so :func:`unfold` restores every weight bit for bit.
- :func:`export` writes the folded model as an ordinary Hugging Face checkpoint.

Example:
    >>> from austeer import apply, fold, unfold
    >>> from austeer.core.momentum import Unit
    >>> from austeer.core.spec import SteerSpec
    >>> spec = SteerSpec(units=[Unit("head", 10, 5, 1.0)], alpha=2.0)
    >>> ids = tok("Hello", return_tensors="pt").input_ids
    >>> with apply(model, spec):
    ...     hooked = model(ids).logits
    >>> record = fold(model, spec)
    >>> folded = model(ids).logits
    >>> unfold(model, record)
    >>> bool((hooked - folded).abs().max() < 1e-3)
    True
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from austeer.core.sites import decoder_layers, fold_module, site_def, site_module, site_width, weight_of
from austeer.core.spec import (
    POSITIONS,
    SpecError,
    SteerSpec,
    check_gains_fit,
    check_in_range,
    first_overflow,
    overflow_text,
)
from austeer.errors import UserError


@dataclass(frozen=True)
class Gain:
    """``x <- (1 + gamma) * x`` on one AU ``(site, layer, index)``.

    Example:
        >>> Gain("head", 3, 7, 0.5).gamma
        0.5
    """

    site: str
    layer: int
    index: int
    gamma: float


def spec_gains(model: nn.Module, spec: SteerSpec, alpha: float | None = None, hooks: bool = False) -> list[Gain]:
    """The gains of ``spec`` (``gamma = alpha * beta``; ``alpha`` overrides the spec's), after checking that
    ``spec`` fits ``model``, ``alpha`` is finite and every gain ``1 + gamma`` is finite in float32 and in
    the dtype of the module it acts on (a :class:`SpecError` naming the value, the dtype and its limit).

    The one spec check of every path: hooks, fold, export and the per-row gains of ``batched``/``serve``.
    A spec whose gains act on the last position only (``positions="last"``) can be steered with hooks
    alone (``hooks=True``); every other path steers every position and refuses it.

    Example:
        >>> from austeer.core.momentum import Unit
        >>> spec_gains(model, SteerSpec([Unit("head", 3, 7, -0.5)], alpha=4.0))
        [Gain(site='head', layer=3, index=7, gamma=-2.0)]
    """
    from austeer.core.spec import fingerprint

    spec.check_fits(fingerprint(model))
    if spec.positions != "all" and not hooks:
        raise SpecError(
            f"spec: positions: {spec.positions!r} steers the last position of each pass only, which folded "
            "weights, exports and per-row serving cannot do (they steer every position); steer it with hooks"
        )
    out = [Gain(u.site, u.layer, u.index, gamma) for u, gamma in spec.gains(alpha)]
    where = (spec.path or "spec") if alpha is None else "spec"  # an override is not the file's fault
    dtypes = {_module_dtype(model, site, layer) for site, layer in {(u.site, u.layer) for u in spec.units}}
    for dtype in sorted(dtypes, key=str):
        check_gains_fit(spec.units, spec.alpha if alpha is None else alpha, dtype, where)
    return out


def _module_dtype(model: nn.Module, site: str, layer: int) -> torch.dtype:
    """The dtype the gains of ``(site, layer)`` are applied in (that of the hooked module's parameters)."""
    return _param_of(site_module(model, site, layer) if site != "residual" else decoder_layers(model)[layer]).dtype


def _grouped(model: nn.Module, gains: Sequence[Gain]) -> dict[tuple[str, int], list[tuple[int, float]]]:
    """Gains per ``(site, layer)``, after checking each is finite, lies inside ``model`` and is given once."""
    from austeer.core.spec import fingerprint

    check_in_range(gains, fingerprint(model), "gains")
    groups: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    seen: set[tuple[str, int, int]] = set()
    for i, g in enumerate(gains):
        if not math.isfinite(g.gamma):
            raise SpecError(f"gains: units[{i}].gamma: expected a finite number, found {g.gamma!r}")
        if (g.site, g.layer, g.index) in seen:
            raise SpecError(f"gains: units[{i}]: {g.site} layer {g.layer} index {g.index} is listed twice")
        seen.add((g.site, g.layer, g.index))
        groups[(g.site, g.layer)].append((g.index, float(g.gamma)))
    bad = first_overflow([1.0 + g.gamma for g in gains], torch.float32)  # the dtype every gain is made in
    if bad is not None:
        g = gains[bad]
        raise SpecError(
            f"gains: units[{bad}].gamma: the gain 1 + gamma of {g.site} layer {g.layer} index {g.index} is "
            f"{overflow_text(1.0 + g.gamma, torch.float32)}; steer with a smaller gain"
        )
    return groups


def _param_of(module: nn.Module) -> torch.Tensor:
    for p in module.parameters():
        return p
    raise UserError(f"{type(module).__name__} has no parameters to take a device and dtype from")


def gain_vectors(model: nn.Module, spec: SteerSpec, alpha: float | None = None) -> dict[tuple[str, int], torch.Tensor]:
    """``{(site, layer): gain}``: ``1 + alpha*beta`` at the selected indices, 1 elsewhere.

    Each vector lives on the device and in the dtype of the module it serves.
    """
    return gains_vectors(model, spec_gains(model, spec, alpha))


def gains_vectors(model: nn.Module, gains: Sequence[Gain]) -> dict[tuple[str, int], torch.Tensor]:
    """``{(site, layer): gain}``: ``1 + gamma`` at the given indices, 1 elsewhere (see :func:`gain_vectors`).

    Example:
        >>> v = gains_vectors(model, [Gain("head", 3, 7, 0.5)])
        >>> list(v), float(v[("head", 3)][7]), float(v[("head", 3)].sum()) == v[("head", 3)].numel() + 0.5
        ([('head', 3)], 1.5, True)
    """
    out = {}
    for (site, layer), items in _grouped(model, gains).items():
        g = torch.ones(site_width(model, site), dtype=torch.float32)
        for index, gamma in items:
            g[index] += gamma
        p = _param_of(site_module(model, site, layer) if site != "residual" else decoder_layers(model)[layer])
        cast = g.to(device=p.device, dtype=p.dtype)
        bad = (~torch.isfinite(cast)).nonzero()
        if len(bad):
            j = int(bad[0])
            raise SpecError(
                f"gains: the gain 1 + gamma of {site} layer {layer} index {j} is "
                f"{overflow_text(float(g[j]), p.dtype)}; steer with a smaller gain"
            )
        out[(site, layer)] = cast
    return out


@dataclass
class Steering:
    """Handle of active hooks; :meth:`remove` is idempotent."""

    handles: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()


def _scaled(x: torch.Tensor, gain: torch.Tensor, last: bool, shift: bool = False) -> torch.Tensor:
    """``x * gain`` (``shift``: ``x + gain``) at every position, or (``last``) at the last position of the
    sequence axis only."""
    g = gain if x.device == gain.device else gain.to(x.device)  # device_map="auto": inputs move late
    op = torch.add if shift else torch.mul
    if not last:
        return op(x, g)
    y = x.clone()
    y[..., -1, :] = op(x[..., -1, :], g)
    return y


def _input_hook(gain: torch.Tensor, last: bool = False, shift: bool = False) -> Any:
    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (_scaled(args[0], gain, last, shift), *args[1:])

    return hook


def _output_hook(gain: torch.Tensor, last: bool = False, shift: bool = False) -> Any:
    def hook(_module: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
        x = out[0] if isinstance(out, tuple) else out
        y = _scaled(x, gain, last, shift)
        return (y, *out[1:]) if isinstance(out, tuple) else y

    return hook


def add_hooks(
    model: nn.Module, gains: dict[tuple[str, int], torch.Tensor], positions: str = "all", shift: bool = False
) -> Steering:
    """Register one multiply-by-gain hook per ``(site, layer)``; returns the handle. With ``shift`` the vector
    is added instead (``x + v``: the additive probe of :func:`austeer.core.attribution.margin_attribution`).

    ``positions``: ``"all"`` or ``"last"`` (see :data:`austeer.core.spec.POSITIONS`)."""
    if positions not in POSITIONS:
        raise UserError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    last = positions == "last"
    steering = Steering()
    try:
        for (site, layer), gain in gains.items():
            module = site_module(model, site, layer)
            if site_def(model, site).io == "input":
                steering.handles.append(module.register_forward_pre_hook(_input_hook(gain, last, shift)))
            else:
                steering.handles.append(module.register_forward_hook(_output_hook(gain, last, shift)))
    except BaseException:
        steering.remove()
        raise
    return steering


@contextmanager
def apply(model: nn.Module, spec: SteerSpec, alpha: float | None = None) -> Iterator[Steering]:
    """Steer ``model`` with hooks inside the ``with`` block (``alpha`` overrides the spec's), at the spec's
    positions."""
    with apply_gains(model, spec_gains(model, spec, alpha, hooks=True), spec.positions) as steering:
        yield steering


@contextmanager
def apply_gains(model: nn.Module, gains: Sequence[Gain], positions: str = "all") -> Iterator[Steering]:
    """Steer ``model`` with hooks for ``gains`` inside the ``with`` block (see :func:`apply`), at every
    position or (``positions="last"``) at the last position of each pass."""
    steering = add_hooks(model, gains_vectors(model, gains), positions)
    try:
        yield steering
    finally:
        steering.remove()


@dataclass
class FoldRecord:
    """The original weight slices replaced by :func:`fold`, in the order they were changed."""

    saved: list[tuple[torch.Tensor, tuple[Any, ...], torch.Tensor]] = field(default_factory=list)


Slice = tuple[torch.Tensor, tuple[Any, ...], tuple[int, ...]]


def _slices(model: nn.Module, site: str, layer: int, index: torch.Tensor) -> list[Slice]:
    """``(tensor, where, gain_shape)`` for every tensor slice that carries the AUs ``index``."""
    module, how = fold_module(model, site, layer)
    weight = weight_of(module)
    # AU along the input axis of y = W x is a column of W ([out, in]); Conv1D stores W as [in, out].
    along_rows = (how.axis == "in") == how.transposed
    out: list[Slice] = [
        (weight, (index, slice(None)), (-1, 1)) if along_rows else (weight, (slice(None), index), (1, -1))
    ]
    bias = getattr(module, "bias", None)
    if how.axis == "out" and bias is not None:
        out.append((bias, (index,), (-1,)))
    return out


def gain_tensors(model: nn.Module, gains: Sequence[Gain]) -> dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]:
    """``{(site, layer): (index, gain)}``: the AU indices and the float32 gains :func:`fold` multiplies them by.

    The one source of the folded numbers, shared by :func:`fold_gains` and the GGUF export
    (:mod:`austeer.exports.gguf_export`), so both write the same bits.
    """
    out = {}
    for (site, layer), items in _grouped(model, gains).items():
        index = torch.tensor([i for i, _ in items], dtype=torch.long)
        gain = torch.tensor([1.0 + g for _, g in items], dtype=torch.float32)
        out[(site, layer)] = (index, gain)
    return out


def alpha_where(spec: SteerSpec, alpha: float | None) -> str:
    """How messages name ``spec``'s alpha: its file (its own alpha) or ``spec`` (an override)."""
    return f"{spec.path or 'spec'}: alpha" if alpha is None else "spec: alpha"


@torch.no_grad()
def fold(model: nn.Module, spec: SteerSpec, alpha: float | None = None) -> FoldRecord:
    """Multiply the weight slices of the selected AUs by their gains in place; returns what :func:`unfold` needs."""
    return fold_gains(model, spec_gains(model, spec, alpha), alpha_where(spec, alpha))


def check_folded(
    product: torch.Tensor,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    index: torch.Tensor,
    gain: torch.Tensor,
    at: tuple[str, int],
    where: str,
    name: str | Callable[[], str],
) -> None:
    """Raise :class:`SpecError` unless the folded slice ``product`` (float32) is finite in ``dtype``.

    ``shape``: how the gains were broadcast (``(-1, 1)`` rows, ``(1, -1)`` columns, ``(-1,)`` a bias);
    ``name``: the weight's name, or a function that finds it (called for the message only)."""
    bad = ~torch.isfinite(product.to(dtype))
    if not bool(bad.any()):
        return
    per_au = bad.any(1) if shape == (-1, 1) else bad.any(0) if shape == (1, -1) else bad
    j = int(per_au.nonzero()[0])
    column = product[:, j] if shape == (1, -1) else product[j]
    value = float(column.flatten()[~torch.isfinite(column.to(dtype)).flatten()][0])
    weight = name if isinstance(name, str) else name()
    raise SpecError(
        f"{where}: folding the gain {float(gain[j]):.4g} of {at[0]} layer {at[1]} index {int(index[j])} into "
        f"{weight} makes a weight {overflow_text(value, dtype)}; steer with a smaller alpha"
    )


def _name(model: nn.Module, tensor: torch.Tensor) -> str:
    return next((n for n, p in model.named_parameters() if p is tensor), "a weight")


@torch.no_grad()
def fold_gains(
    model: nn.Module, gains: Sequence[Gain], where: str = "gains", dtype: torch.dtype | None = None
) -> FoldRecord:
    """Fold ``gains`` into the weights in place (see :func:`fold`); returns what :func:`unfold` needs.

    Each folded slice ``W * (1 + gamma)`` (the product in float32, rounded to the tensor's dtype) must be
    finite in the tensor's dtype, and in ``dtype`` for matrices stored in another (a GGUF's f16 or bf16):
    else every weight is restored and :class:`SpecError` names the AU, the weight, the value and the limit.
    """
    record = FoldRecord()
    try:
        for (site, layer), (index, gain) in gain_tensors(model, gains).items():
            for tensor, at, shape in _slices(model, site, layer, index):
                idx = tuple(w.to(tensor.device) if isinstance(w, torch.Tensor) else w for w in at)
                original = tensor[idx].clone()
                product = original.float() * gain.to(tensor.device).view(shape)
                for check in (tensor.dtype, *([dtype] if dtype is not None and tensor.dim() >= 2 else [])):
                    name = partial(_name, model, tensor)
                    check_folded(product, check, shape, index, gain, (site, layer), where, name)
                record.saved.append((tensor, idx, original))
                tensor[idx] = product.to(tensor.dtype)
    except BaseException:
        unfold(model, record)
        raise
    return record


@torch.no_grad()
def unfold(model: nn.Module, record: FoldRecord) -> None:
    """Write back the original slices saved by :func:`fold` (bit for bit)."""
    while record.saved:
        tensor, idx, original = record.saved.pop()
        tensor[idx] = original


@contextmanager
def folded(model: nn.Module, spec: SteerSpec, alpha: float | None = None) -> Iterator[FoldRecord]:
    """Fold inside the ``with`` block; the weights are restored when it ends, also on error."""
    with folded_gains(model, spec_gains(model, spec, alpha), alpha_where(spec, alpha)) as record:
        yield record


@contextmanager
def folded_gains(model: nn.Module, gains: Sequence[Gain], where: str = "gains") -> Iterator[FoldRecord]:
    """Fold ``gains`` inside the ``with`` block (see :func:`folded`)."""
    record = fold_gains(model, gains, where)
    try:
        yield record
    finally:
        unfold(model, record)
