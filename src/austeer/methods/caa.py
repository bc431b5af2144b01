"""CAA (Rimsky et al. 2024): add ``c * v`` to the residual stream of one layer, ``v = mean_j(h(pos_j) - h(neg_j))``.

``h`` is the decoder layer's output at the last token of each text (the answer token). The vector is
added at *every* position (prompt and generated tokens alike), which is what makes it foldable: adding
``v`` to the output of decoder layer ``l`` is adding ``v`` to the bias of that layer's ``down_proj``
(created if the model has none), exactly, in families whose MLP output goes straight into the residual
stream (not Gemma2/Gemma3/OLMo2, which normalise it first: hooks only there). It steers ``d_model``
activations. The layer is given as a fraction of the depth so one grid fits every model.
:func:`to_control_vector` writes it as a llama.cpp control vector (``llama-cli --control-vector``).

Example:
    >>> layer_of(0.5, 30)
    14
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from austeer.errors import UserError
from austeer.methods.base import AddSteerer, Evidence, Frontier, Method


def layer_of(fraction: float, n_layers: int) -> int:
    """The layer at ``fraction`` of the depth: ``round(fraction * (n_layers - 1))``."""
    return min(n_layers - 1, max(0, round(fraction * (n_layers - 1))))


def layer_index(layer: float, n_layers: int) -> int:
    """The decoder layer ``layer`` names: a fraction of the depth in ``[0, 1)`` or a whole index >= 1.

    Example:
        >>> layer_index(0.5, 30), layer_index(29, 30)
        (14, 29)
        >>> layer_index(30, 30)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        austeer.errors.UserError: layer 30 is out of range: the model has 30 layers (valid 0..29, or a fraction ...
    """
    valid = f"the model has {n_layers} layers (valid 0..{n_layers - 1}, or a fraction of the depth in [0, 1))"
    if not 0 <= layer < n_layers or (layer >= 1 and layer != int(layer)):
        raise UserError(f"layer {layer:g} is out of range: {valid}")
    return int(layer) if layer >= 1 else layer_of(layer, n_layers)


def build(model: nn.Module, evidence: Evidence, layer: float = 0.5, multiplier: float = 1.0) -> AddSteerer:
    """CAA at ``layer`` (a fraction of the depth, or an int layer index when >= 1: :func:`layer_index`)."""
    n_layers = int(evidence.pos["residual"].shape[1])
    index = layer_index(layer, n_layers)
    v = evidence.mean_diff("residual")[index]
    config = {"layer": layer, "layer_index": index, "multiplier": multiplier}
    return AddSteerer("caa", "residual", {index: float(multiplier) * v}, config, n_steered=int(v.numel()))


def to_control_vector(steerer: AddSteerer, model: nn.Module, out: str | Path, force: bool = False) -> Path:
    """Write a CAA steerer as a llama.cpp control vector GGUF (see :mod:`austeer.exports.control_vector`); its layer
    must be >= 1 (llama.cpp cannot steer the output of layer 0)."""
    from austeer.exports.control_vector import to_control_vector as write

    return write(steerer, model, out, force=force)


GRID = tuple({"layer": f, "multiplier": m} for f in (0.33, 0.6) for m in (0.5, 1.0, 2.0, 4.0))

METHOD = Method(
    "caa",
    ("residual",),
    GRID,
    build,
    "as a bias: v added to down_proj's bias of that layer",
    adds_at="residual",
    strength="multiplier",
    also_shown=("layer_index",),
    frontier=Frontier({"layer": 0.33}, (0.5, 1.0, 2.0, 4.0)),
    default=True,
    # tune's multipliers reach 16: the held-out margins of a pairs file move less than a task's accuracy
    pairs_grid=tuple({"layer": f, "multiplier": m} for m in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0) for f in (0.33, 0.6)),
)
