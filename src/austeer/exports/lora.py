"""A folded AUSteer spec as a LoRA adapter, which engines apply per request (vLLM, PEFT, llama.cpp).

A gain ``x_i <- (1 + g_i) x_i`` on AUs that feed one linear map ``y = W x`` (``g_i = alpha * beta_i``) changes
it by an exact low-rank update ``W' = W + B A`` of rank ``r`` = the number of AUs of that map:

- **input** AUs (``head``: the columns of ``o_proj``; ``neuron``: the columns of ``down_proj``):
  ``A`` (``r x in``) is one-hot rows at the indices ``I``, ``B`` (``out x r``) is ``W[:, I] * g_I``;
- **output** AUs (``ffn``: the rows of ``down_proj``): ``A = W[I, :]``, ``B`` one-hot columns times ``g_I``.
  Exact only where the map has no bias (the hooks scale ``W x + b``, a LoRA only ``W x``): refused otherwise;
- both on one map (``ffn`` and ``neuron`` in one layer), ``(1 + D_o) W (1 + D_i) = W + W D_i + D_o W (1 + D_i)``:
  the two factor pairs side by side, rank ``r_in + r_out``.

The module names come from :data:`austeer.core.sites.FAMILIES`; every adapter has one rank ``R`` (the largest over
its maps: vLLM needs one), the smaller ones padded with zero rows of ``A`` and zero columns of ``B``, and
``lora_alpha = R`` so the LoRA scaling ``lora_alpha / r`` is 1. An engine's per-request adapter scale ``s``
then gives the gain ``1 + s * g`` (the spec at ``alpha * s``; a map steered at both its inputs and its
outputs gets the cross term ``D_o W D_i`` at ``s`` rather than ``s^2``). ``residual`` (no linear map) and
``positions: last`` (every position is steered by a LoRA) cannot be written as a LoRA and are refused.

:func:`export_lora` writes a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)
that ``peft.PeftModel.from_pretrained`` and vLLM load as they are; :mod:`austeer.exports.gguf_lora` writes the same
factors as a llama.cpp adapter GGUF.

Example:
    >>> from austeer.core.momentum import Unit
    >>> from austeer.core.spec import fingerprint
    >>> spec = SteerSpec([Unit("head", 3, 5, 1.0), Unit("head", 3, 9, -0.5), Unit("neuron", 7, 2, 0.5)],
    ...                  alpha=2.0, fingerprint=fingerprint(model))
    >>> {name: (tuple(a.shape), tuple(b.shape)) for name, (a, b) in lora_factors(model, spec).items()}
    {'model.layers.3.self_attn.o_proj': ((2, 576), (576, 2)), 'model.layers.7.mlp.down_proj': ((2, 1536), (576, 2))}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from austeer.core.sites import family, fold_module, weight_of
from austeer.core.spec import SpecError, SteerSpec
from austeer.core.steer import _grouped, spec_gains
from austeer.errors import UserError
from austeer.io import atomic_write_dir

#: how the factors are stored
LORA_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
#: the values vLLM accepts for ``--max-lora-rank`` (vllm/config/lora.py, ``MaxLoRARanks``; recent versions also
#: accept 1, older ones stop at 64 or 256): 8 is the smallest every version takes
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
#: the kind of output in the directory marker (:mod:`austeer.io`)
KIND = "lora"

#: ``{full module path: (A, B)}``
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


def check_lora_spec(spec: SteerSpec) -> None:
    """Refuse, with one line, a spec no LoRA can express; needs no model (call it before loading one).

    Example:
        >>> from austeer.core.momentum import Unit
        >>> check_lora_spec(SteerSpec([Unit("residual", 3, 5, 1.0)], alpha=2.0))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        austeer.core.spec.SpecError: spec: units[0].site: 'residual' scales the decoder layer's output, ...
    """
    if not spec.units:
        raise SpecError("spec: units: empty; a LoRA adapter needs at least one steered unit")
    if spec.positions != "all":
        raise SpecError(
            f"spec: positions: {spec.positions!r} steers the last position only, a LoRA adapter every position; "
            "steer this spec with hooks (austeer generate, austeer serve)"
        )
    for i, u in enumerate(spec.units):
        if u.site == "residual":
            raise SpecError(
                f"spec: units[{i}].site: 'residual' scales the decoder layer's output, which no linear map "
                "produces alone, so it cannot be a LoRA adapter; export it with --format hf or gguf"
            )


@dataclass
class _Map:
    """The gains on one linear map: ``(index, gamma)`` on its inputs and on its outputs."""

    module: nn.Module
    transposed: bool
    ins: list[tuple[int, float]] = field(default_factory=list)
    outs: list[tuple[int, float]] = field(default_factory=list)


def _maps(model: nn.Module, spec: SteerSpec, alpha: float | None) -> dict[str, _Map]:
    """``{full module path: its gains}``, checked: the spec fits the model, no biased map is scaled at its output."""
    check_lora_spec(spec)
    layers = family(model).layers
    maps: dict[str, _Map] = {}
    for (site, layer), items in _grouped(model, spec_gains(model, spec, alpha)).items():
        module, how = fold_module(model, site, layer)
        path = f"{layers}.{layer}.{how.module}"
        if how.axis == "out" and getattr(module, "bias", None) is not None:
            raise SpecError(
                f"spec: site {site!r}, layer {layer}: {path} has a bias, so scaling its output (W x + b) is not a "
                "LoRA update of W; export this spec with --format hf or gguf"
            )
        entry = maps.setdefault(path, _Map(module, how.transposed))
        (entry.ins if how.axis == "in" else entry.outs).extend(items)
    return maps


def _factors(m: _Map) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` in float32 with ``W + B A`` the folded weight (``W`` as ``[out, in]``)."""
    w = weight_of(m.module).detach().to("cpu", torch.float32)
    w = w.T if m.transposed else w
    n_out, n_in = w.shape
    a_parts, b_parts = [], []
    if m.ins:
        idx = torch.tensor([i for i, _ in m.ins])
        gamma = torch.tensor([g for _, g in m.ins], dtype=torch.float32)
        a = torch.zeros(len(idx), n_in)
        a[torch.arange(len(idx)), idx] = 1.0
        a_parts.append(a)
        b_parts.append(w[:, idx] * gamma)
        w = w.clone()
        w[:, idx] = w[:, idx] * (1.0 + gamma)  # the output gains act on the input-scaled map
    if m.outs:
        idx = torch.tensor([i for i, _ in m.outs])
        gamma = torch.tensor([g for _, g in m.outs], dtype=torch.float32)
        b = torch.zeros(n_out, len(idx))
        b[idx, torch.arange(len(idx))] = gamma
        a_parts.append(w[idx, :])
        b_parts.append(b)
    return torch.cat(a_parts), torch.cat(b_parts, dim=1)


def lora_factors(model: nn.Module, spec: SteerSpec, alpha: float | None = None) -> Factors:
    """``{full module path: (A, B)}``: float32 factors of every steered map, ``A`` ``[R, in]`` and ``B``
    ``[out, R]`` (PEFT's and llama.cpp's orientation), all padded to the one rank ``R`` with zeros.

    ``W + B A`` is the weight :func:`austeer.core.steer.fold` makes (``W`` as ``[out, in]``; GPT-2's ``Conv1D``
    stores it transposed). Refuses (:class:`~austeer.core.spec.SpecError`) what :func:`check_lora_spec` refuses
    and an ``ffn`` gain on a map with a bias.
    """
    return _padded({path: _factors(m) for path, m in _maps(model, spec, alpha).items()})


def _padded(raw: Factors) -> Factors:
    """The factors padded to the largest rank (zero rows of ``A``, zero columns of ``B``), in layer order."""
    rank = max(a.shape[0] for a, _ in raw.values())
    out: Factors = {}
    for path in sorted(raw, key=_natural):
        a, b = raw[path]
        pad = rank - a.shape[0]
        out[path] = (torch.cat([a, a.new_zeros(pad, a.shape[1])]), torch.cat([b, b.new_zeros(b.shape[0], pad)], 1))
    return out


def _natural(path: str) -> tuple[object, ...]:
    """Sort key: ``model.layers.10`` after ``model.layers.9``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts for an adapter of ``rank`` (None: above vLLM's largest).

    Example:
        >>> vllm_max_lora_rank(5), vllm_max_lora_rank(17), vllm_max_lora_rank(600)
        (8, 32, None)
    """
    return next((r for r in VLLM_RANKS if r >= rank), None)


def adapter_config(targets: list[str], rank: int, transposed: bool, base: str) -> dict[str, object]:
    """The ``adapter_config.json`` of a PEFT LoRA adapter: ``lora_alpha = r`` (scaling 1), no dropout, no
    bias, the steered maps by their full module paths (so only they get adapters)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": rank,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": transposed,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def export_lora(
    model: nn.Module,
    spec: SteerSpec,
    out: str | Path,
    alpha: float | None = None,
    dtype: str = "f32",
    force: bool = False,
) -> Path:
    """Write ``spec`` as a PEFT LoRA adapter directory (``adapter_config.json``, ``adapter_model.safetensors``,
    and ``austeer_steer.json``: the spec and the alpha it was written at).

    ``peft.PeftModel.from_pretrained(model, out)`` and vLLM (``--enable-lora --lora-modules name=out``) load
    it unchanged; served on the same weights it computes the hooked function (see the module docstring).
    ``dtype``: how the factors are stored (``f32``, ``f16``, ``bf16``). An existing ``out`` is replaced only
    when it is an adapter austeer wrote, unless ``force``.

    Example:
        >>> import tempfile, json
        >>> from austeer.core.momentum import Unit
        >>> from austeer.core.spec import fingerprint
        >>> spec = SteerSpec([Unit("head", 3, 5, 1.0)], alpha=2.0, fingerprint=fingerprint(model))
        >>> out = export_lora(model, spec, tempfile.mkdtemp() + "/pos")
        >>> config = json.loads((out / "adapter_config.json").read_text())
        >>> config["r"], config["lora_alpha"], config["target_modules"]
        (1, 1, ['model.layers.3.self_attn.o_proj'])
    """
    if dtype not in LORA_DTYPES:
        raise UserError(f"unknown LoRA dtype {dtype!r}; expected one of {', '.join(LORA_DTYPES)}")
    maps = _maps(model, spec, alpha)
    transposed = {m.transposed for m in maps.values()}
    if len(transposed) > 1:
        raise UserError("the steered maps mix Conv1D and Linear layers; one PEFT adapter has one fan_in_fan_out")
    factors = _padded({path: _factors(m) for path, m in maps.items()})
    rank = next(iter(factors.values()))[0].shape[0]
    base = spec.model_id or str(getattr(model, "name_or_path", "") or "")
    config = adapter_config(list(factors), rank, transposed.pop(), base)
    tensors = {}
    for path, (a, b) in factors.items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = a.to(LORA_DTYPES[dtype]).contiguous()
        tensors[f"base_model.model.{path}.lora_B.weight"] = b.to(LORA_DTYPES[dtype]).contiguous()
    meta = {**spec.to_json(), "alpha": spec.alpha if alpha is None else alpha, "lora_dtype": dtype}

    def write(tmp: Path) -> None:
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "austeer_steer.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    return atomic_write_dir(Path(out), write, kind=KIND, force=force)
