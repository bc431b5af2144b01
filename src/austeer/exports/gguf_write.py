"""The folded model as a GGUF file when it came from a Hugging Face checkpoint (no GGUF behind it).

:mod:`austeer.exports.gguf_export` copies a source GGUF and rewrites only the folded tensors. A model loaded from
a checkpoint directory or the hub has no such file, so this module writes the whole GGUF itself, for the
``llama`` and ``qwen2`` families (any other raises one line naming them):

- **names** come from the ``gguf`` package's tables (``gguf.TensorNameMap`` for the HF names,
  ``gguf.MODEL_TENSORS`` for what the architecture may hold), the hyperparameters from ``gguf.GGUFWriter``'s
  helpers (context, embedding and feed-forward length, block count, head counts, RoPE base and dimension,
  RMS epsilon, vocabulary size);
- **tensors**: every parameter of the folded model (the same weights :func:`austeer.core.steer.folded` gives),
  matrices stored as F32 (default), F16 or BF16, vectors (norms, biases) always F32. A tied output
  projection is not written (llama.cpp reuses ``token_embd``);
- **RoPE layout**: llama.cpp's llama architecture rotates adjacent pairs of a head's dimensions, while HF
  llama rotates its first half against its second; so the rows of ``q_proj`` / ``k_proj`` (and their
  biases) are reordered within each head, as llama.cpp's own converter does (:func:`rope_permute`).
  qwen2 uses the NeoX layout in both, and keeps its rows (and its q/k/v biases) as they are;
- **tokenizer**: a byte-level BPE tokenizer becomes ``tokenizer.ggml.*`` with model ``gpt2``: every id's
  token (ids the tokenizer lacks up to the model's vocabulary size are ``[PAD{id}]``, type UNUSED), types
  (NORMAL; added tokens CONTROL when special or ``<|...|>``-shaped, else USER_DEFINED), merges, special ids,
  ``add_bos`` / ``add_eos`` and the chat template (``gguf.SpecialVocab`` reads them from the saved
  tokenizer). ``tokenizer.ggml.pre`` names llama.cpp's pre-tokenizer: it is recognised the way llama.cpp's
  converter does, by hashing the ids of a fixed probe text; a tokenizer whose hash is not one of
  :data:`PRE_TOKENIZERS` is refused rather than written with a guess.

Written atomically; an existing file is replaced only when austeer wrote it (``austeer.core.steer`` key).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import nn

from austeer.core.spec import SteerSpec
from austeer.core.steer import alpha_where, fold_gains, folded, spec_gains, unfold
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
from austeer.io import atomic_write_file

#: the HF families this writer handles, and their llama.cpp architecture
ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}

#: llama.cpp recognises a BPE pre-tokenizer by the SHA-256 of ``str(tokenizer.encode(PROBE))``; these are
#: the hashes (from llama.cpp's convert_hf_to_gguf.py) of the pre-tokenizers of the supported families
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5, Qwen2, Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 embedding
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
}
#: llama.cpp's probe text for the pre-tokenizer hash (whitespace runs, emoji, digits, Khmer, CJK, Cyrillic,
#: punctuation runs, English contractions)
PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 "
    "3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= \u043d\u0435\u0449\u043e \u043d\u0430 "
    "\u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 ''''''```````\"\"\"\"......!!!!!!?????? I've been "
    "'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
}


def arch_of(model: nn.Module) -> gguf.MODEL_ARCH:
    """The llama.cpp architecture of a supported HF model, or a one-line error naming the supported families."""
    kind = str(getattr(model.config, "model_type", ""))
    if kind not in ARCHS:
        raise UserError(
            f"writing a GGUF from a Hugging Face checkpoint supports the {' and '.join(ARCHS)} families; this model "
            f"is {kind!r} (export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py)"
        )
    return ARCHS[kind]


def rope_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's rows from HF's half-split RoPE layout to llama.cpp's interleaved one.

    Row ``j`` of a head (``j < d/2``) moves to ``2j`` and row ``d/2 + j`` to ``2j + 1``; works on a weight
    ``[n_head * d, in]`` or a bias ``[n_head * d]``.

    Example:
        >>> rope_permute(torch.arange(8.0), 2).tolist()
        [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    """
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rope_unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of :func:`rope_permute` (llama.cpp's rows back to HF's)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _hparams(config: Any) -> dict[str, Any]:
    """The hyperparameters llama.cpp needs, checked for what this writer can express."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise UserError(f"RoPE type {kind!r} is not supported by the GGUF writer (only plain RoPE)")
    if getattr(config, "use_sliding_window", False):
        raise UserError("sliding-window attention is not supported by the GGUF writer")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UserError(f"activation {config.hidden_act!r}: llama.cpp's llama and qwen2 use silu")
    n_head = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    return {
        "n_ctx": int(config.max_position_embeddings),
        "n_embd": int(config.hidden_size),
        "n_ff": int(config.intermediate_size),
        "n_layer": int(config.num_hidden_layers),
        "n_head": n_head,
        "n_head_kv": int(getattr(config, "num_key_value_heads", None) or n_head),
        "head_dim": head_dim,
        "rope_theta": float(theta if theta is not None else 10000.0),
        "rms_eps": float(config.rms_norm_eps),
        "vocab": int(config.vocab_size),
    }


def _add_hparams(writer: gguf.GGUFWriter, hp: dict[str, Any], name: str, dtype: str) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(hp["n_ctx"])
    writer.add_embedding_length(hp["n_embd"])
    writer.add_block_count(hp["n_layer"])
    writer.add_feed_forward_length(hp["n_ff"])
    writer.add_head_count(hp["n_head"])
    writer.add_head_count_kv(hp["n_head_kv"])
    if hp["head_dim"] * hp["n_head"] != hp["n_embd"]:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    writer.add_rope_dimension_count(hp["head_dim"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_vocab_size(hp["vocab"])
    writer.add_file_type(_FILE_TYPES[dtype])


def pre_tokenizer(tokenizer: Any) -> str:
    """llama.cpp's name for ``tokenizer``'s BPE pre-tokenizer (see :data:`PRE_TOKENIZERS`)."""
    digest = hashlib.sha256(str(tokenizer.encode(PROBE)).encode()).hexdigest()
    if digest not in PRE_TOKENIZERS:
        raise UserError(
            f"the tokenizer's pre-tokenizer (probe hash {digest[:12]}...) is not one the GGUF writer knows "
            f"({', '.join(sorted(set(PRE_TOKENIZERS.values())))}); llama.cpp would not tokenize like it"
        )
    return PRE_TOKENIZERS[digest]


def _looks_special(token: str) -> bool:
    return token.startswith("<|") and token.endswith("|>")


@dataclass
class Vocab:
    """What ``tokenizer.ggml.*`` holds for a byte-level BPE tokenizer (:func:`gguf_vocab`)."""

    pre: str
    tokens: list[str]
    types: list[int]
    special: gguf.SpecialVocab  # merges, special ids, add_bos / add_eos, chat template
    space_prefix: bool  # the byte-level pre-tokenizer puts a space before the text

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        writer.add_add_space_prefix(self.space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


def gguf_vocab(tokenizer: Any, config: Any, n_vocab: int) -> Vocab:
    """The GGUF vocabulary of a byte-level BPE ``tokenizer`` for a model of ``n_vocab`` embeddings (refused,
    with the reason, when it is not one llama.cpp would tokenize the same way)."""
    if not callable(getattr(tokenizer, "save_pretrained", None)) or not hasattr(tokenizer, "get_vocab"):
        raise UserError("the tokenizer is not a Hugging Face tokenizer; the GGUF needs its vocabulary")
    vocab: dict[str, int] = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())}, the model only {n_vocab} embeddings")
    pre = pre_tokenizer(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        config.to_json_file(str(Path(tmp) / "config.json"))
        tok_json = Path(tmp) / "tokenizer.json"
        saved = json.loads(tok_json.read_text(encoding="utf-8")) if tok_json.is_file() else {}
        pre_tok = json.dumps(saved.get("pre_tokenizer"))
        if saved.get("model", {}).get("type") != "BPE" or '"ByteLevel"' not in pre_tok:
            raise UserError("the GGUF writer writes byte-level BPE tokenizers (tokenizer.json) only")
        space_prefix = '"add_prefix_space": true' in pre_tok
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=n_vocab)
    added = tokenizer.added_tokens_decoder  # {id: AddedToken}
    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        if i not in added:
            types.append(gguf.TokenType.NORMAL)
        elif added[i].special or _looks_special(token):
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.USER_DEFINED)
    # what the HF tokenizer really does with plain text, which llama.cpp must repeat
    ids = tokenizer("a").input_ids
    for kind, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id)):
        at = 0 if kind == "bos" else -1
        special.add_special_token[kind] = tid is not None and len(ids) > 1 and ids[at] == tid
    return Vocab(pre, tokens, types, special, space_prefix)


def _plan(model: nn.Module) -> list[tuple[str, str, nn.Parameter, int]]:
    """``(GGUF name, HF name, parameter, heads to RoPE-permute by or 0)`` for every parameter of ``model``,
    in the model's order; a tied output projection appears once, as ``token_embd`` (llama.cpp reuses it)."""
    arch = arch_of(model)
    hp = _hparams(model.config)
    name_map = gguf.get_tensor_name_map(arch, hp["n_layer"])
    kinds = [gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]]
    allowed = {k.format(bid=i) for k in kinds for i in range(hp["n_layer"])}
    plan = []
    for hf_name, param in model.named_parameters():  # tied parameters once, under their first name
        name = gguf_name(name_map, hf_name)
        if name.rsplit(".", 1)[0] not in allowed:
            raise UserError(f"{hf_name} -> {name}: not a tensor of llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]}")
        heads = 0
        if arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            heads = hp["n_head"]
        elif arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = hp["n_head_kv"]
        plan.append((name, hf_name, param, heads))
    return plan


def gguf_tensors(model: nn.Module) -> Iterator[tuple[str, str, torch.Tensor]]:
    """``(GGUF name, HF name, float32 tensor as llama.cpp wants it)`` for every parameter of ``model`` (its
    current weights: call it inside :func:`austeer.core.steer.folded` for the folded ones)."""
    for name, hf_name, param, heads in _plan(model):
        w = param.detach().to("cpu", torch.float32)
        yield name, hf_name, (rope_permute(w, heads) if heads else w).contiguous()


def _kind(shape: torch.Size, dtype: str) -> str:
    """How a tensor is stored: matrices as ``dtype``, vectors (norms, biases) always as f32."""
    return dtype if len(shape) >= 2 else "f32"


def export_hf_gguf(
    model: nn.Module,
    tokenizer: Any,
    spec: SteerSpec,
    out: str | Path,
    alpha: float | None = None,
    dtype: str = "f32",
    force: bool = False,
) -> Path:
    """Write the folded ``model`` (a llama or qwen2 HF model) and its ``tokenizer`` as one GGUF file.

    ``dtype``: how matrices are stored (``f32``, ``f16``, ``bf16``; vectors are always F32). An existing
    ``out`` is replaced only when austeer wrote it, unless ``force``.
    """
    if dtype not in FOLDED_TYPES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of {', '.join(FOLDED_TYPES)}")
    arch = arch_of(model)
    hp = _hparams(model.config)
    source = str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "") or "model")
    meta = steer_meta(spec, alpha, Path(source).name)
    plan = _plan(model)  # checked before anything is written
    # every folded value finite in the model's dtype and the storage type: checked before anything is written
    unfold(model, fold_gains(model, spec_gains(model, spec, alpha), alpha_where(spec, alpha), TORCH_TYPES[dtype]))
    vocab = gguf_vocab(tokenizer, model.config, hp["vocab"])

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        _add_hparams(writer, hp, meta["source"], dtype)
        vocab.add_to(writer)
        writer.add_string(STEER_KEY, json.dumps(meta, sort_keys=True))
        for name, _, param, _ in plan:
            qtype = FOLDED_TYPES[_kind(param.shape, dtype)]
            nbytes = param.numel() * (4 if qtype == gguf.GGMLQuantizationType.F32 else 2)
            writer.add_tensor_info(name, tuple(param.shape), np.dtype(np.float32), nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with folded(model, spec, alpha):
            for _, _, w in gguf_tensors(model):
                writer.write_tensor_data(stored(w, _kind(w.shape, dtype))[0])
        writer.close()

    return atomic_write_file(Path(out), write, owned=is_austeer_gguf, force=force)
