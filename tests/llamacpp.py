"""llama.cpp for the tests: its C API (``llama.h``) called with ctypes from the prebuilt CPU build that the
``xllamacpp`` wheel ships (``pip install -e .[llamacpp]``; ``scripts/setup.sh`` installs it). That wheel's one
extension module links llama.cpp statically and exports its whole C API (``llama_decode``,
``llama_adapter_lora_init``, ``llama_set_adapter_cvec``, ...); ``xllamacpp.Server`` is llama.cpp's own server
(``tools/server``) in-process, listening on a local HTTP port.

Only what the tests call is declared, with the signatures of that build (``xllamacpp==2026.10.11549``, pinned
in pyproject). ``llama_model_params`` and ``llama_context_params`` are llama.cpp's defaults, passed back as the
library filled them (an opaque 1 KiB block, larger than either struct); the number of threads is set with
``llama_set_n_threads``. The defaults here: a 512-token context, batches of 512, the CPU.
"""

from __future__ import annotations

import ctypes as C
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

#: set by scripts/test.sh: llama.cpp is installed, so a test that needs it fails rather than skips without it
REQUIRED = os.environ.get("AUSTEER_LLAMACPP") == "1"


class _Batch(C.Structure):
    _fields_ = [
        ("n_tokens", C.c_int32),
        ("token", C.POINTER(C.c_int32)),
        ("embd", C.POINTER(C.c_float)),
        ("pos", C.POINTER(C.c_int32)),
        ("n_seq_id", C.POINTER(C.c_int32)),
        ("seq_id", C.POINTER(C.POINTER(C.c_int32))),
        ("logits", C.POINTER(C.c_int8)),
    ]


class _Params(C.Structure):
    _fields_ = [("raw", C.c_uint8 * 1024)]


_LOG = C.CFUNCTYPE(None, C.c_int, C.c_char_p, C.c_void_p)
_quiet = _LOG(lambda level, text, data: None)  # kept alive here: llama.cpp holds the pointer
P = C.c_void_p
_SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "llama_log_set": ([_LOG, P], None),
    "llama_backend_init": ([], None),
    "llama_model_default_params": ([], _Params),
    "llama_context_default_params": ([], _Params),
    "llama_model_load_from_file": ([C.c_char_p, _Params], P),
    "llama_init_from_model": ([P, _Params], P),
    "llama_free": ([P], None),
    "llama_model_free": ([P], None),
    "llama_model_get_vocab": ([P], P),
    "llama_vocab_n_tokens": ([P], C.c_int32),
    "llama_model_n_embd": ([P], C.c_int32),
    "llama_n_ctx": ([P], C.c_uint32),
    "llama_set_n_threads": ([P, C.c_int32, C.c_int32], None),
    "llama_get_memory": ([P], P),
    "llama_memory_clear": ([P, C.c_bool], None),
    "llama_batch_init": ([C.c_int32, C.c_int32, C.c_int32], _Batch),
    "llama_batch_free": ([_Batch], None),
    "llama_decode": ([P, _Batch], C.c_int32),
    "llama_get_logits_ith": ([P, C.c_int32], C.POINTER(C.c_float)),
    "llama_tokenize": ([P, C.c_char_p, C.c_int32, C.POINTER(C.c_int32), C.c_int32, C.c_bool, C.c_bool], C.c_int32),
    "llama_adapter_lora_init": ([P, C.c_char_p], P),
    "llama_set_adapters_lora": ([P, C.POINTER(P), C.c_size_t, C.POINTER(C.c_float)], C.c_int32),
    "llama_set_adapter_cvec": ([P, C.POINTER(C.c_float), C.c_size_t, C.c_int32, C.c_int32, C.c_int32], C.c_int32),
}
_lib: C.CDLL | None = None


def xllamacpp() -> Any:
    """The ``xllamacpp`` module; the test is skipped without it, or fails when ``AUSTEER_LLAMACPP=1``."""
    try:
        import xllamacpp as module
    except ImportError as e:
        if REQUIRED:
            pytest.fail(f"AUSTEER_LLAMACPP=1 but llama.cpp is not importable ({e}); run scripts/setup.sh")
        pytest.skip("llama.cpp (xllamacpp) is not installed: pip install -e .[llamacpp]")
    return module


def lib() -> C.CDLL:
    """llama.cpp's C API, loaded once (logging off)."""
    global _lib
    if _lib is None:
        found = C.CDLL(xllamacpp().xllamacpp.__file__)
        for name, (args, res) in _SIGNATURES.items():
            fn = getattr(found, name)
            fn.argtypes, fn.restype = args, res
        found.llama_log_set(_quiet, None)
        found.llama_backend_init()
        _lib = found
    return _lib


class Llama:
    """A llama.cpp model and context (one sequence, every position's logits kept, one thread: ggml's spinning
    threads are ~20x slower on a busy 2-core machine, and the tests are small)."""

    def __init__(self, path: Path | str) -> None:
        self.lib = lib()
        self.model = self.lib.llama_model_load_from_file(str(path).encode(), self.lib.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.ctx = self.lib.llama_init_from_model(self.model, self.lib.llama_context_default_params())
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {path}")
        self.lib.llama_set_n_threads(self.ctx, 1, 1)
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(self.lib.llama_model_n_embd(self.model))
        self.n_past = 0

    def __del__(self) -> None:
        if getattr(self, "ctx", None):
            self.lib.llama_free(self.ctx)
        if getattr(self, "model", None):
            self.lib.llama_model_free(self.model)  # frees its LoRA adapters too

    def reset(self) -> None:
        """Forget the sequence (clear the KV cache)."""
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def eval(self, ids: list[int]) -> np.ndarray:
        """Append ``ids`` to the sequence; their logits, ``[len(ids), n_vocab]`` float32."""
        n = len(ids)
        assert self.n_past + n <= self.lib.llama_n_ctx(self.ctx), "past llama.cpp's context"
        batch = self.lib.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, token in enumerate(ids):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, self.n_past + i, 1, 1
                batch.seq_id[i][0] = 0
            if self.lib.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        finally:
            self.lib.llama_batch_free(batch)
        self.n_past += n
        rows = [np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, i), (self.n_vocab,)) for i in range(n)]
        return np.stack(rows).astype(np.float32, copy=True)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's tokenizer: no BOS added, special tokens parsed (as the tests feed HF's ids)."""
        raw = text.encode()
        out = (C.c_int32 * (len(raw) + 8))()
        n = self.lib.llama_tokenize(self.vocab, raw, len(raw), out, len(out), False, True)
        assert n >= 0
        return list(out[:n])

    def lora(self, path: Path | str) -> int:
        """Load a LoRA adapter GGUF for this model (llama.cpp checks its architecture, names and shapes)."""
        adapter = self.lib.llama_adapter_lora_init(self.model, str(path).encode())
        if not adapter:
            raise RuntimeError(f"llama.cpp refused the LoRA adapter {path}")
        return int(adapter)

    def set_loras(self, scales: dict[int, float]) -> None:
        """Apply these adapters at these scales (``{}``: none), as ``llama-cli --lora-scaled`` does."""
        n = len(scales)
        adapters, values = (P * max(n, 1))(*scales), (C.c_float * max(n, 1))(*scales.values())
        assert self.lib.llama_set_adapters_lora(self.ctx, adapters, n, values) == 0

    def set_cvec(self, data: np.ndarray, il_start: int, il_end: int) -> None:
        """A control vector laid out as llama.cpp's loader does (``direction.N`` at ``(N - 1) * n_embd``)."""
        self.cvec = np.ascontiguousarray(data, dtype=np.float32)  # llama.cpp copies it; kept for safety
        ptr = self.cvec.ctypes.data_as(C.POINTER(C.c_float))
        assert self.lib.llama_set_adapter_cvec(self.ctx, ptr, len(self.cvec), self.n_embd, il_start, il_end) == 0


def llama_logits(llm: Llama, ids: list[int]) -> torch.Tensor:
    """Every position's logits of ``ids`` as a fresh sequence."""
    llm.reset()
    return torch.from_numpy(llm.eval(ids))


def llama_greedy(llm: Llama, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids`` (a fresh sequence)."""
    llm.reset()
    logits, out = llm.eval(ids), []
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        logits = llm.eval([out[-1]])
    return out


def split_calls(got: torch.Tensor, want: torch.Tensor) -> list[float]:
    """The reference's top-2 logit margins at the positions (rows) where ``got``'s argmax is not ``want``'s:
    near-ties that llama.cpp's quantised kernels may decide either way."""
    top = torch.topk(want, 2, dim=-1).values
    differ = got.argmax(-1) != want.argmax(-1)
    return [float(m) for m in (top[:, 0] - top[:, 1])[differ]]
