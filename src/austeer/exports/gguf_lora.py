"""A spec as a llama.cpp LoRA adapter GGUF (``austeer export --format gguf-lora``).

The file is laid out as llama.cpp's own ``convert_lora_to_gguf.py`` writes an adapter, and as its loader
(``src/llama-adapter.cpp``) checks one:

- metadata: ``general.architecture`` (the base model's: llama.cpp refuses an adapter of another architecture),
  ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` (float32, here the rank ``R``:
  llama.cpp scales by ``alpha / R``, so the scale is the user's ``--lora-scaled`` value), and
  ``austeer.core.steer`` (the spec and alpha, as every GGUF austeer writes; the ownership mark);
- tensors: for each steered map, ``<base name>.lora_a`` and ``<base name>.lora_b`` with the base names of
  austeer's own GGUF writers (``blk.N.attn_output.weight``, ``blk.N.ffn_down.weight``: the ``gguf``
  package's name tables). They hold :func:`austeer.exports.lora.lora_factors`' ``A`` (numpy ``[R, in]``, GGUF
  ``ne = [in, R]``) and ``B`` (numpy ``[out, R]``, ``ne = [R, out]``): llama.cpp requires
  ``a.ne[0] == base.ne[0]``, ``b.ne[1] == base.ne[1]`` and ``a.ne[1] == b.ne[0]``, and computes
  ``B (A x)``. Stored as F32 (default), F16 or BF16.

The architecture and names are those of the base GGUF: the file a model was loaded from (an embedded model,
a local ``.gguf``), whose tensors are checked to be there with matching shapes, or, for a model from a
Hugging Face checkpoint, the one :mod:`austeer.exports.gguf_write` writes (llama and qwen2 families).

Example:
    >>> import tempfile, gguf
    >>> from austeer.core.momentum import Unit
    >>> from austeer.core.spec import fingerprint
    >>> spec = SteerSpec([Unit("head", 3, 5, 1.0)], alpha=2.0, fingerprint=fingerprint(model))
    >>> out = export_gguf_lora(model, spec, tempfile.mkdtemp() + "/pos.gguf")
    >>> [(t.name, [int(n) for n in t.shape]) for t in gguf.GGUFReader(out).tensors]
    [('blk.3.attn_output.weight.lora_a', [576, 1]), ('blk.3.attn_output.weight.lora_b', [1, 576])]
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import gguf
import torch
from torch import nn

from austeer.core.sites import decoder_layers
from austeer.core.spec import SteerSpec
from austeer.errors import UserError
from austeer.exports.gguf_export import _arch
from austeer.exports.gguf_meta import FOLDED_TYPES, STEER_KEY, gguf_name, is_austeer_gguf, steer_meta, stored
from austeer.exports.gguf_write import arch_of
from austeer.exports.lora import lora_factors
from austeer.io import atomic_write_file, check_file_output


@functools.lru_cache(maxsize=4)
def _gguf_layout(path: Path, stamp: tuple[int, int]) -> tuple[str, dict[str, list[int]]]:
    """A GGUF file's architecture and ``{tensor name: shape ne}``, read once per file version (``stamp``:
    size and mtime; a 100 MB model's reader spends seconds on its tokenizer fields)."""
    reader = gguf.GGUFReader(path)
    return _arch(reader, path)[0], {t.name: [int(n) for n in t.shape] for t in reader.tensors}


def base_arch(model: nn.Module, source: str | Path | None = None) -> tuple[str, dict[str, list[int]] | None]:
    """The llama.cpp architecture name of ``model``'s base GGUF and, when there is such a file (``source``, or
    the one :func:`austeer.models.loading.gguf_source` finds), its ``{tensor name: shape ne}``."""
    from austeer.models.loading import gguf_source

    src = Path(source) if source is not None else gguf_source(model)
    if src is not None:
        stat = src.stat()
        return _gguf_layout(src.resolve(), (stat.st_size, stat.st_mtime_ns))
    try:
        return gguf.MODEL_ARCH_NAMES[arch_of(model)], None
    except ValueError:
        kind = getattr(getattr(model, "config", None), "model_type", "?")
        raise UserError(
            f"an adapter GGUF names its base model's llama.cpp architecture and tensors; austeer knows them for a "
            f"model loaded from a GGUF (pass source=, --source-gguf) and for the llama and qwen2 families, not "
            f"{kind!r}"
        ) from None


def gguf_lora_tensors(
    model: nn.Module, spec: SteerSpec, alpha: float | None = None, source: str | Path | None = None
) -> tuple[str, dict[str, torch.Tensor]]:
    """The base architecture and ``{GGUF name: float32 tensor}``: ``<base>.lora_a`` (``[R, in]``) and
    ``<base>.lora_b`` (``[out, R]``) for every steered map, checked against the base GGUF when there is one."""
    arch_name, base = base_arch(model, source)
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch_name]
    name_map = gguf.get_tensor_name_map(arch, len(decoder_layers(model)))
    out: dict[str, torch.Tensor] = {}
    for path, (a, b) in lora_factors(model, spec, alpha).items():
        name = gguf_name(name_map, f"{path}.weight")
        if base is not None:
            ne = base.get(name)
            if ne is None:
                raise UserError(f"the base GGUF has no tensor {name!r} for {path}; is it this model's file?")
            if ne[:2] != [a.shape[1], b.shape[0]]:
                raise UserError(f"{name}: shape {ne} in the base GGUF, [{a.shape[1]}, {b.shape[0]}] in the model")
        out[f"{name}.lora_a"], out[f"{name}.lora_b"] = a, b
    return arch_name, out


def export_gguf_lora(
    model: nn.Module,
    spec: SteerSpec,
    out: str | Path,
    alpha: float | None = None,
    dtype: str = "f32",
    source: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write ``spec`` as a llama.cpp LoRA adapter GGUF (``llama-cli -m BASE.gguf --lora out``; see the module
    docstring). ``dtype``: ``f32``, ``f16`` or ``bf16``. An existing ``out`` is replaced only when austeer
    wrote it, unless ``force``."""
    if dtype not in FOLDED_TYPES:
        raise UserError(f"unknown LoRA dtype {dtype!r}; expected one of {', '.join(FOLDED_TYPES)}")
    check_file_output(out, "gguf-lora", force, owned=is_austeer_gguf)
    arch_name, tensors = gguf_lora_tensors(model, spec, alpha, source)
    rank = next(iter(tensors.values())).shape[0]
    meta = steer_meta(spec, alpha, spec.model_id or str(getattr(model, "name_or_path", "") or "model"))
    data = {name: stored(t.contiguous(), dtype) for name, t in tensors.items()}

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, arch_name)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
        writer.add_string(STEER_KEY, json.dumps(meta, sort_keys=True))
        for name, (array, qtype) in data.items():
            writer.add_tensor(name, array, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write_file(Path(out), write, owned=is_austeer_gguf, force=force)
