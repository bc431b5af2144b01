"""What every GGUF austeer writes shares: the storage types of written tensors, the ``austeer.core.steer`` key
that marks the file as austeer's (and records its steering), and HF -> GGUF tensor names.

Both writers use it: :mod:`austeer.exports.gguf_export` (copy a source GGUF, rewrite the folded tensors) and
:mod:`austeer.exports.gguf_write` (write a whole GGUF from an HF checkpoint).

Example:
    >>> m = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30)
    >>> gguf_name(m, "model.layers.4.mlp.down_proj.weight")
    'blk.4.ffn_down.weight'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from austeer.core.spec import SteerSpec
from austeer.errors import UserError

#: how the folded tensors are stored
FOLDED_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
}
#: the torch dtype whose range each stored type has (a folded value must be finite in it)
TORCH_TYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
#: the metadata key every GGUF austeer writes carries (its steering, as JSON): the file's ownership mark
STEER_KEY = "austeer.core.steer"


def is_austeer_gguf(path: Path) -> bool:
    """Whether ``path`` is a GGUF file austeer wrote (it holds :data:`STEER_KEY`)."""
    try:
        return STEER_KEY in gguf.GGUFReader(path).fields
    except Exception:  # not a GGUF at all: not ours
        return False


def gguf_name(name_map: gguf.TensorNameMap, hf_name: str) -> str:
    """The GGUF tensor name of an HF parameter name, from the ``gguf`` package's tables."""
    stem, _, suffix = hf_name.rpartition(".")
    name = name_map.get_name(stem)
    if name is None:
        raise UserError(f"the gguf package's name table has no GGUF name for {hf_name!r}")
    return f"{name}.{suffix}"


def stored(tensor: torch.Tensor, kind: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """``tensor`` as the array and type a GGUF stores for ``kind`` (``f32``, ``f16`` or ``bf16``)."""
    qtype = FOLDED_TYPES[kind]
    array = tensor.numpy()
    if qtype == gguf.GGMLQuantizationType.F32:
        return array, qtype
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), qtype
    return gguf.quants.quantize(array, qtype), qtype


def steer_meta(spec: SteerSpec, alpha: float | None, source: str) -> dict[str, Any]:
    """What an exported GGUF records under :data:`STEER_KEY`: the spec, the alpha folded in, the source's name."""
    return {**spec.to_json(), "alpha": spec.alpha if alpha is None else alpha, "source": source}
