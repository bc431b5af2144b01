"""Where each steering site lives, per model family: one declarative table.

A *site* is a tensor inside every decoder layer whose single dimensions are atomic units (AUs):

========  ==========================================  =============================
site      tensor                                      fold target
========  ==========================================  =============================
head      input of the attention output projection    column ``i`` of ``W_O``
ffn       output of the MLP block                     row ``i`` of ``W_down`` (+bias)
neuron    input of the MLP down projection            column ``i`` of ``W_down``
residual  output of the decoder layer                 none (hook only)
========  ==========================================  =============================

Adding a family is one entry in :data:`FAMILIES` (plus a test in ``tests/test_families.py``).

Example:
    >>> from austeer.core.sites import FAMILIES
    >>> FAMILIES["llama"].sites["head"].module
    'self_attn.o_proj'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from austeer.errors import UserError

SITES = ("head", "ffn", "neuron", "residual")
Site = Literal["head", "ffn", "neuron", "residual"]


@dataclass(frozen=True)
class Fold:
    """How a gain on a site folds into a weight.

    ``module`` is the linear map (relative to the decoder layer); ``axis`` is ``"in"`` when the AU is an
    input dimension of that map (scale a column of ``W``), ``"out"`` when it is an output dimension (scale
    a row of ``W`` and the bias entry). ``transposed`` marks GPT-2's ``Conv1D``, whose weight is stored
    as ``[in, out]`` instead of ``[out, in]``.
    """

    module: str
    axis: Literal["in", "out"]
    transposed: bool = False


@dataclass(frozen=True)
class SiteDef:
    """One site: the module to hook (relative to the decoder layer), and whether its input or output."""

    module: str  # "" means the decoder layer itself
    io: Literal["input", "output"]
    fold: Fold | None


@dataclass(frozen=True)
class Family:
    """Every fact austeer uses about one model family, as paths from the model (``layers``, ``final_norm``)
    or from a decoder layer (the sites' modules).

    ``gguf_arch`` is llama.cpp's name for the architecture (``general.architecture``); ``post_mlp_norm``
    marks families whose MLP output is normalised before the residual add, so that an addition to a
    layer's output is not a bias of ``down_proj``.
    """

    layers: str
    sites: dict[str, SiteDef]
    final_norm: str
    gguf_arch: str
    post_mlp_norm: bool = False


def _layout(
    layers: str,
    o_proj: str,
    mlp: str,
    down: str,
    final_norm: str,
    gguf_arch: str,
    transposed: bool = False,
    post_mlp_norm: bool = False,
) -> Family:
    return Family(
        layers=layers,
        sites={
            "head": SiteDef(o_proj, "input", Fold(o_proj, "in", transposed)),
            "ffn": SiteDef(mlp, "output", Fold(down, "out", transposed)),
            "neuron": SiteDef(down, "input", Fold(down, "in", transposed)),
            "residual": SiteDef("", "output", None),
        },
        final_norm=final_norm,
        gguf_arch=gguf_arch,
        post_mlp_norm=post_mlp_norm,
    )


def _llama_like(gguf_arch: str, post_mlp_norm: bool = False) -> Family:
    return _layout(
        "model.layers", "self_attn.o_proj", "mlp", "mlp.down_proj", "model.norm", gguf_arch, post_mlp_norm=post_mlp_norm
    )


#: model_type (``config.model_type``) -> every family fact. Llama-style families share one layout.
FAMILIES: dict[str, Family] = {
    "llama": _llama_like("llama"),
    "mistral": _llama_like("llama"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3"),
    "gemma": _llama_like("gemma"),
    "gemma2": _llama_like("gemma2", post_mlp_norm=True),
    "gemma3_text": _llama_like("gemma3", post_mlp_norm=True),
    "phi3": _llama_like("phi3"),
    "olmo": _llama_like("olmo"),
    "olmo2": _llama_like("olmo2", post_mlp_norm=True),
    "gpt2": _layout("transformer.h", "attn.c_proj", "mlp", "mlp.c_proj", "transformer.ln_f", "gpt2", transposed=True),
    "gpt_neox": _layout(
        "gpt_neox.layers", "attention.dense", "mlp", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", "gptneox"
    ),
}


class UnsupportedModelError(UserError):
    """The model's family has no entry in :data:`FAMILIES`."""


def family_of(model: nn.Module) -> str:
    """The ``model_type`` of a Hugging Face model (``"llama"``, ``"gpt2"``, ...)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str):
        raise UnsupportedModelError(f"{type(model).__name__} has no config.model_type; is it a Hugging Face model?")
    return model_type


def family(model: nn.Module) -> Family:
    """The layout table entry for ``model``, or a clear error saying how to add one."""
    name = family_of(model)
    if name not in FAMILIES:
        raise UnsupportedModelError(
            f"model family {name!r} ({type(model).__name__}) is not supported; supported: "
            f"{', '.join(sorted(FAMILIES))}. To add it, put one entry in austeer.core.sites.FAMILIES naming its "
            "decoder-layer list and the modules of its attention output projection, MLP and MLP down "
            "projection (see the module docstring), and a tiny-model test in tests/test_families.py."
        )
    return FAMILIES[name]


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of ``model``, in order."""
    return list(_get(model, family(model).layers))  # type: ignore[call-overload]


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied before the unembedding (``model.model.norm`` for Llama-style families).

    Example:
        >>> type(final_norm(model)).__name__
        'LlamaRMSNorm'
    """
    return _get(model, family(model).final_norm)


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in [p for p in path.split(".") if p]:
        if not hasattr(module, part):
            raise UnsupportedModelError(
                f"{type(root).__name__} has no submodule {path!r} (missing {part!r}); "
                f"the layout of family {family_of(root) if hasattr(root, 'config') else '?'} does not fit"
            )
        module = getattr(module, part)
    return module


def _config(model: nn.Module) -> Any:
    return getattr(model, "config")  # noqa: B009


def weight_of(module: nn.Module) -> torch.Tensor:
    """The weight tensor of a linear (or norm) ``module``, what a fold writes into; a module without one is
    :class:`UnsupportedModelError`."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise UnsupportedModelError(f"{type(module).__name__} has no weight tensor to fold into")
    return weight


def check_site(site: str) -> None:
    if site not in SITES:
        raise UserError(f"unknown site {site!r}; expected one of {', '.join(SITES)}")


def site_def(model: nn.Module, site: str) -> SiteDef:
    check_site(site)
    return family(model).sites[site]


def site_module(model: nn.Module, site: str, layer: int) -> nn.Module:
    """The module whose input or output is ``site`` in decoder layer ``layer``."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise UserError(f"layer {layer} out of range: the model has {len(layers)} decoder layers")
    return _get(layers[layer], site_def(model, site).module)


def fold_module(model: nn.Module, site: str, layer: int) -> tuple[nn.Module, Fold]:
    """The linear map that a gain on ``site`` folds into, or an error for hook-only sites."""
    sd = site_def(model, site)
    if sd.fold is None:
        raise UserError(
            f"site {site!r} cannot be folded into weights (it is not the input or output of one linear map); "
            "use hook steering (austeer.apply) for it"
        )
    return _get(decoder_layers(model)[layer], sd.fold.module), sd.fold


def site_width(model: nn.Module, site: str) -> int:
    """Number of AUs of ``site`` in one layer."""
    if site == "residual":
        return int(_config(model).hidden_size)
    mod, fold = fold_module(model, site, 0)
    rows, cols = weight_of(mod).shape
    out_dim, in_dim = (cols, rows) if fold.transposed else (rows, cols)
    return int(in_dim if fold.axis == "in" else out_dim)


def head_dim(model: nn.Module) -> int:
    """Width of one attention head in the ``head`` site (``dim // head_dim`` is the head number)."""
    return site_width(model, "head") // int(_config(model).num_attention_heads)
