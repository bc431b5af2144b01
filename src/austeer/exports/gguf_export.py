"""The folded model as a GGUF file that llama.cpp (and Ollama) load unchanged.

A model loaded from a GGUF (an embedded model, or a local ``.gguf`` file: :func:`austeer.models.loading.gguf_source`
finds the file) is exported *from that file*: every tensor the fold does not touch is copied with its
quantisation type and bytes unchanged, every metadata key (tokenizer, chat template, hyperparameters) is
carried over, and only the folded tensors (``blk.{i}.attn_output.weight`` for ``head``,
``blk.{i}.ffn_down.weight`` (+ ``.bias``) for ``ffn`` / ``neuron``) are written anew: dequantised, scaled
by the gains :func:`austeer.core.steer.fold` uses (:func:`austeer.core.steer.gain_tensors`), and stored as F32
(default: the folded HF model's weights exactly), F16 or BF16. The GGUF names come from the ``gguf``
package's own tensor-name tables.

Layout: GGUF lists a matrix's shape innermost first (``ne0`` = input width), so its rows, as numpy reads
them, are the HF ``[out, in]`` rows; ``head`` / ``neuron`` gains scale columns, ``ffn`` gains rows. llama.cpp
permutes only the Q and K projections at conversion, never ``attn_output`` / ``ffn_down``.

Example:
    >>> import tempfile, gguf
    >>> from pathlib import Path
    >>> from austeer.models.loading import load_model
    >>> from austeer.core.momentum import Unit
    >>> from austeer.core.spec import SteerSpec
    >>> model, tok = load_model()
    >>> spec = SteerSpec(units=[Unit("head", 3, 5, 1.0), Unit("ffn", 7, 2, -0.5)], alpha=2.0)
    >>> out = export_gguf(model, spec, Path(tempfile.mkdtemp()) / "steered.gguf")
    >>> [(t.name, t.tensor_type.name) for t in gguf.GGUFReader(out).tensors if t.tensor_type.name == "F32"
    ...  and t.name.endswith(("attn_output.weight", "ffn_down.weight"))]
    [('blk.3.attn_output.weight', 'F32'), ('blk.7.ffn_down.weight', 'F32')]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import nn

from austeer.core.sites import decoder_layers, family, fold_module, weight_of
from austeer.core.spec import SteerSpec
from austeer.core.steer import alpha_where, check_folded, gain_tensors, spec_gains
from austeer.errors import UserError
from austeer.exports.gguf_meta import (
    FOLDED_TYPES,
    STEER_KEY,
    TORCH_TYPES,
    gguf_name,
    is_austeer_gguf,
    steer_meta,
    stored,
)
from austeer.exports.gguf_write import export_hf_gguf
from austeer.io import atomic_write_file


def _arch(reader: gguf.GGUFReader, path: Path) -> tuple[str, gguf.MODEL_ARCH]:
    field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    name = str(field.contents()) if field is not None else ""
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(name)
    if arch is None:
        raise UserError(f"{path}: general.architecture is {name!r}, which this gguf package does not know")
    return name, arch


def _dequantised(tensor: Any) -> torch.Tensor:
    """A GGUF tensor as float32, numpy row-major (``[out, in]`` for a matrix)."""
    array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape))


def _check_same(weight: torch.Tensor, fold_transposed: bool, found: torch.Tensor, where: str) -> None:
    """The GGUF tensor must be the model's weight (before folding): same shape, values up to the model's dtype."""
    mine = weight.detach().float().cpu()
    mine = mine.T if fold_transposed else mine
    if tuple(mine.shape) != tuple(found.shape):
        raise UserError(f"{where}: shape {tuple(found.shape)} in the GGUF, {tuple(mine.shape)} in the model")
    scale = float(found.abs().max()) or 1.0
    if float((mine - found).abs().max()) > 1e-2 * scale:
        raise UserError(f"{where}: the GGUF's values are not the model's; is it the file the model was loaded from?")


@torch.no_grad()
def folded_tensors(
    model: nn.Module,
    spec: SteerSpec,
    reader: gguf.GGUFReader,
    alpha: float | None = None,
    path: Path = Path("?"),
    dtype: str = "f32",
) -> dict[str, torch.Tensor]:
    """``{GGUF name: folded float32 tensor}``: each tensor the fold touches, dequantised and scaled exactly as
    :func:`austeer.core.steer.fold` scales the model's weight (same gains, same float32 products, same order).

    Every folded value must be finite in float32 and in the type it is stored as (``dtype``), else a
    :class:`~austeer.core.spec.SpecError` naming the value, the type and its limit."""
    _, arch = _arch(reader, path)
    layers = family(model).layers
    name_map = gguf.get_tensor_name_map(arch, len(decoder_layers(model)))
    by_name = {t.name: t for t in reader.tensors}
    out: dict[str, torch.Tensor] = {}
    where, kinds = alpha_where(spec, alpha), dict.fromkeys([torch.float32, TORCH_TYPES[dtype]])
    for (site, layer), (index, gain) in gain_tensors(model, spec_gains(model, spec, alpha)).items():
        module, how = fold_module(model, site, layer)
        for suffix in ("weight", "bias") if how.axis == "out" else ("weight",):
            name = gguf_name(name_map, f"{layers}.{layer}.{how.module}.{suffix}")
            if name not in by_name:
                if suffix == "bias":
                    continue  # no bias in this model
                raise UserError(f"{path}: no tensor {name!r} (site {site}, layer {layer})")
            if name not in out:
                out[name] = _dequantised(by_name[name])
                theirs = weight_of(module) if suffix == "weight" else getattr(module, "bias", None)
                if isinstance(theirs, torch.Tensor):
                    _check_same(theirs, how.transposed and suffix == "weight", out[name], f"{path}: {name}")
            w = out[name]
            columns = suffix == "weight" and how.axis == "in"  # columns of [out, in]; else rows (or the bias)
            at: tuple[Any, ...] = (slice(None), index) if columns else (index,)
            shape = (-1,) if suffix == "bias" else (1, -1) if columns else (-1, 1)
            product = w[at] * gain.view(shape)
            for kind in kinds:  # every folded tensor (the bias too) is stored as ``dtype``
                check_folded(product, kind, shape, index, gain, (site, layer), where, name)
            w[at] = product
    return out


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> None:
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue  # virtual fields, and the one the writer writes itself
        if field.name == gguf.Keys.General.ALIGNMENT:
            writer.add_custom_alignment(int(field.contents()))
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)


def export_gguf(
    model: nn.Module,
    spec: SteerSpec,
    out: str | Path,
    alpha: float | None = None,
    source: str | Path | None = None,
    dtype: str = "f32",
    force: bool = False,
    tokenizer: Any = None,
) -> Path:
    """Write the folded model as a GGUF file, built from the GGUF ``source`` the model was loaded from
    (default: found by :func:`austeer.models.loading.gguf_source`). ``dtype``: how the folded tensors are stored
    (``f32``, ``f16`` or ``bf16``); every other tensor keeps its type and bytes.

    A model with no source GGUF (loaded from a Hugging Face checkpoint) is written whole from its weights
    and ``tokenizer`` by :func:`austeer.exports.gguf_write.export_hf_gguf` (llama and qwen2 families; ``dtype``
    then applies to every matrix).

    An existing ``out`` is replaced only when austeer wrote it (it carries :data:`STEER_KEY`), unless
    ``force``; the source file itself is never replaced.
    """
    from austeer.models.loading import gguf_source

    if dtype not in FOLDED_TYPES:
        raise UserError(f"unknown dtype {dtype!r} for the folded tensors; expected one of {', '.join(FOLDED_TYPES)}")
    src = Path(source) if source is not None else gguf_source(model)
    if src is None and tokenizer is not None:
        return export_hf_gguf(model, tokenizer, spec, out, alpha=alpha, dtype=dtype, force=force)
    if src is None:
        raise UserError(
            "this model was not loaded from a GGUF file, so there is no GGUF to copy the untouched tensors from; "
            "pass tokenizer= to write the GGUF from the weights (llama and qwen2 families), or source= the .gguf "
            "it came from"
        )
    out = Path(out)
    if out.exists() and out.resolve() == src.resolve():
        raise UserError(f"{out}: is the source GGUF; write the export to another file")
    reader = gguf.GGUFReader(src)
    arch_name, _ = _arch(reader, src)
    new = {name: stored(t, dtype) for name, t in folded_tensors(model, spec, reader, alpha, src, dtype).items()}
    meta = steer_meta(spec, alpha, src.name)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, arch_name, endianess=reader.endianess)
        _copy_metadata(reader, writer)
        writer.add_string(STEER_KEY, json.dumps(meta, sort_keys=True))
        for t in reader.tensors:
            data, qtype = new.get(t.name, (t.data, t.tensor_type))
            writer.add_tensor_info(t.name, data.shape, data.dtype, data.nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            data = new[t.name][0] if t.name in new else t.data
            writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        writer.close()

    return atomic_write_file(out, write, owned=is_austeer_gguf, force=force)
