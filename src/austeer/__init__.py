"""austeer: fine-grained activation steering (AUSteer) on stock Hugging Face models.

The flow: pairs -> :func:`fit` (score every atomic unit by sign-consistent activation momentum,
keep the global top-k) -> :class:`SteerSpec` -> :func:`apply` (hooks) | :func:`fold` (weights) |
:func:`export` (checkpoint) | :func:`export_gguf` (llama.cpp) | :func:`export_lora` (a LoRA adapter for vLLM, PEFT).

Example (the other docstring examples use ``model, tok`` as loaded here):
    >>> import austeer
    >>> model, tok = austeer.load_model()
    >>> pairs = [austeer.Pair("How was the film?", "It was wonderful.", "It was dreadful.")] * 4
    >>> spec = austeer.fit(model, tok, pairs, site="head", k=4, alpha=5.0, progress=False)
    >>> with austeer.apply(model, spec):
    ...     _ = model(**tok("Hi", return_tensors="pt"))
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from austeer.core.fit import fit, score
from austeer.core.momentum import SignCounts, Unit, select
from austeer.core.pairs import Pair, read_pairs
from austeer.core.spec import SteerSpec, load
from austeer.core.steer import apply, fold, folded, unfold
from austeer.exports.checkpoint import export
from austeer.exports.lora import export_lora
from austeer.models.loading import DEFAULT_MODEL, load_model, save_checkpoint

if TYPE_CHECKING:
    from austeer.exports.gguf_export import export_gguf
    from austeer.exports.gguf_lora import export_gguf_lora
    from austeer.exports.gguf_write import export_hf_gguf

__version__ = "0.1.0"

#: names imported on first use: the GGUF writers need the ``gguf`` package, which ``import austeer`` does not
_LAZY = {
    "export_gguf": "austeer.exports.gguf_export",
    "export_gguf_lora": "austeer.exports.gguf_lora",
    "export_hf_gguf": "austeer.exports.gguf_write",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from austeer.extras import GGUF, require

        require(*GGUF, f"austeer.{name}")
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'austeer' has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "Pair",
    "SignCounts",
    "SteerSpec",
    "Unit",
    "__version__",
    "apply",
    "export",
    "export_gguf",
    "export_gguf_lora",
    "export_hf_gguf",
    "export_lora",
    "fit",
    "fold",
    "folded",
    "load",
    "load_model",
    "read_pairs",
    "save_checkpoint",
    "score",
    "select",
    "unfold",
]
