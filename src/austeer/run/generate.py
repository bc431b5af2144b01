"""Batched generation (left padding, KV cache), optionally steered by hooks or folded weights.

Example:
    >>> from austeer.run.generate import generate
    >>> generate(model, tok, ["What is the capital of France?"], max_new_tokens=8)
    ['The capital of France is Paris.']
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
from torch import nn

from austeer.core.collect import encode, model_device, token_limit
from austeer.core.pairs import format_prompt
from austeer.core.spec import SteerSpec
from austeer.core.steer import apply, folded
from austeer.errors import UserError

Mode = Literal["hook", "fold"]


@contextmanager
def steered(
    model: nn.Module, spec: SteerSpec | None, mode: Mode = "hook", alpha: float | None = None
) -> Iterator[None]:
    """Steer ``model`` inside the block with hooks or folded weights; nothing at all when ``spec`` is None."""
    if spec is None:
        with nullcontext():
            yield
        return
    if mode not in ("hook", "fold"):
        raise UserError(f"mode must be 'hook' or 'fold', got {mode!r}")
    ctx = apply(model, spec, alpha) if mode == "hook" else folded(model, spec, alpha)
    with ctx:
        yield


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """torch's global RNG seeded with ``seed`` inside the block and the caller's state restored after it
    (``model.generate`` samples from the global RNG and takes no generator); ``None``: nothing is touched.

    Example:
        >>> before = torch.random.get_rng_state()
        >>> with seeded(0):
        ...     a = torch.rand(2)
        >>> with seeded(0):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b), torch.equal(torch.random.get_rng_state(), before)
        (True, True)
    """
    if seed is None:
        yield
        return
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:  # seeded (and restored) only where CUDA is in use: no lazy seeding queued for later
            torch.cuda.manual_seed_all(seed)
        yield


@torch.inference_mode()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    chat: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int | None = None,
    max_length: int | None = None,
    system: str | None = None,
) -> list[str]:
    """Greedy (or sampled) continuations of ``prompts``; chat-formatted when the tokenizer has a template,
    with ``system`` in the system turn (see :func:`~austeer.core.pairs.format_prompt`).

    A prompt longer than ``max_length`` tokens (default: the model's context less ``max_new_tokens``)
    is cut on the left, with a warning. ``seed`` makes sampling repeatable without changing the caller's
    RNG state (see :func:`seeded`).
    """
    max_length = token_limit(model, max_length, reserve=max_new_tokens)
    texts = [format_prompt(tokenizer, p, system) if chat else p for p in prompts]
    device = model_device(model)
    kwargs: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    out: list[str] = []
    with seeded(seed):
        for start in range(0, len(texts), batch_size):
            enc = encode(tokenizer, texts[start : start + batch_size], max_length, padding_side="left")
            ids = model.generate(  # type: ignore[operator]
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **kwargs,
            )
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return out
