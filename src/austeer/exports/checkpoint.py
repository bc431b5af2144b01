"""A steered model saved as an ordinary Hugging Face checkpoint: the gains folded into the weights.

Example:
    >>> import tempfile, austeer
    >>> spec = austeer.SteerSpec([austeer.Unit("head", 0, 3, 1.0)], alpha=2.0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = export(model, tok, spec, f"{d}/steered")
    ...     sorted(p.name for p in out.iterdir() if p.suffix == ".json")[:2]
    ['austeer_steer.json', 'config.json']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from austeer.core.spec import SteerSpec
from austeer.core.steer import folded
from austeer.models.loading import save_checkpoint


def export(
    model: nn.Module, tokenizer: Any, spec: SteerSpec, out: str | Path, alpha: float | None = None, force: bool = False
) -> Path:
    """Save the folded model as an ordinary checkpoint (``AutoModelForCausalLM.from_pretrained(out)``).

    An existing ``out`` is replaced only when it is an export austeer wrote, unless ``force``.
    """
    meta = spec.to_json()
    meta["alpha"] = spec.alpha if alpha is None else alpha
    extra = {"austeer_steer.json": json.dumps(meta, indent=2) + "\n"}
    with folded(model, spec, alpha):
        return save_checkpoint(model, tokenizer, out, extra_files=extra, kind="export", force=force)
