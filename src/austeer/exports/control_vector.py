"""Residual-stream additions (CAA) as a llama.cpp control vector: ``llama-cli --control-vector FILE``.

The format, as llama.cpp's loader (``common_control_vector_load``) and its graph read it: a GGUF with
``general.architecture = controlvector``, ``controlvector.model_hint`` (the model's architecture) and
``controlvector.layer_count``, and one F32 tensor ``direction.N`` of length ``n_embd`` per steered
layer. llama.cpp adds ``direction.N`` to the output of decoder layer ``N`` (0-based, the same numbering
as the HF ``model.layers[N]`` whose output austeer's ``residual`` site is), at every position.
``direction.0`` is rejected by the loader (the whole file is then skipped), so layer 0 cannot be
steered this way. ``layer_count`` is the number of direction tensors in the file (as repeng writes it;
llama.cpp does not read it).

Example:
    >>> import tempfile, torch, gguf
    >>> from pathlib import Path
    >>> p = write_control_vector({5: torch.ones(576)}, Path(tempfile.mkdtemp()) / "cv.gguf", "llama")
    >>> r = gguf.GGUFReader(p)
    >>> [(t.name, int(t.shape[0]), t.tensor_type.name) for t in r.tensors]
    [('direction.5', 576, 'F32')]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import nn

from austeer.core.sites import family
from austeer.errors import UserError
from austeer.io import atomic_write_file

ARCH = "controlvector"
#: marks a control vector written by austeer (for :func:`austeer.io.atomic_write_file`)
KIND_KEY = "austeer.kind"


def model_hint(model: nn.Module) -> str:
    """llama.cpp's name for the model's architecture: the source GGUF's ``general.architecture`` when the
    model came from one, else its HF ``model_type`` under llama.cpp's name."""
    from austeer.models.loading import gguf_source

    source = gguf_source(model)
    if source is not None:
        field = gguf.GGUFReader(source).get_field(gguf.Keys.General.ARCHITECTURE)
        if field is not None:
            return str(field.contents())
    return family(model).gguf_arch


def is_austeer_control_vector(path: Path) -> bool:
    """Whether ``path`` is a control vector austeer wrote (its ``general.architecture`` is austeer's)."""
    try:
        field = gguf.GGUFReader(path).get_field(KIND_KEY)
    except Exception:  # not a GGUF: not ours
        return False
    return field is not None and field.contents() == ARCH


def write_control_vector(
    vectors: dict[int, torch.Tensor], out: str | Path, hint: str, force: bool = False, meta: str | None = None
) -> Path:
    """Write ``{layer: vector}`` (added to the output of decoder layer ``layer``) as a control vector GGUF.

    An existing ``out`` is replaced only when austeer wrote it, unless ``force``.
    """
    if not vectors:
        raise UserError("no vectors to write")
    widths = {int(v.numel()) for v in vectors.values()}
    if len(widths) != 1:
        raise UserError(f"the vectors have different widths {sorted(widths)}; a control vector has one n_embd")
    for layer, v in vectors.items():
        if layer < 1:
            raise UserError(
                f"layer {layer}: llama.cpp control vectors cannot steer the output of layer 0 (direction.0 is "
                "rejected by its loader); choose a layer >= 1"
            )
        if not bool(torch.isfinite(v).all()):
            raise UserError(f"layer {layer}: the vector is not finite")

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_int32(f"{ARCH}.layer_count", len(vectors))
        writer.add_string(KIND_KEY, ARCH)
        if meta is not None:
            writer.add_string("austeer.core.steer", meta)
        for layer in sorted(vectors):
            writer.add_tensor(f"direction.{layer}", vectors[layer].detach().float().cpu().numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write_file(out, write, owned=is_austeer_control_vector, force=force)


def to_control_vector(steerer: Any, model: nn.Module, out: str | Path, force: bool = False) -> Path:
    """Write an additive residual-stream steerer (:class:`~austeer.core.interventions.AddSteerer` with site
    ``residual``, e.g. CAA) as a llama.cpp control vector for ``model``'s architecture."""
    import json

    site = getattr(steerer, "site", None)
    if site != "residual":
        raise UserError(
            f"{getattr(steerer, 'name', type(steerer).__name__)} steers site {site!r}; a llama.cpp control vector "
            "adds to the residual stream (the output of a layer), so only residual additions (CAA) fit"
        )
    meta = json.dumps({"method": steerer.name, **steerer.config}, sort_keys=True, default=str)
    return write_control_vector(dict(steerer.vectors), out, model_hint(model), force=force, meta=meta)
