"""Layer reuse: evaluate many steering configurations without recomputing the layers they do not change.

Steering acts from some layer on (the first layer whose weights are folded or that carries a hook); every
layer below it computes, for a given input, exactly what the unsteered model computes. A sweep, a
comparison or a tuning run evaluates the same items under many configurations, so :class:`LayerCache`
keeps the hidden state entering some layers for each input batch and, inside :meth:`LayerCache.reuse`,
starts the forward pass there instead of at the embeddings. On the Qwen2.5-Coder-1.5B, whose selected
AUs sit in layers 20-27 of 28, an evaluation then runs a quarter of the decoder layers.

How it stays exact:

- the cache is keyed by the batch's ``input_ids``, ``attention_mask`` and ``position_ids`` (bytes), so a
  different prompt, padding or batch composition is a miss and is computed in full;
- on entering :meth:`~LayerCache.reuse`, each decoder layer's weights (and the input embeddings) are
  checked against checksums taken when the cache was made (the model unsteered then): the first layer
  that differs, or that carries a forward hook (checked again at every call), is the first *changed*
  layer ``F``; only states entering layers ``<= F`` are replayed or stored, so the replayed state is the
  one the layers below would compute. On the same batches the results are bit for bit those of a full
  forward pass (tests/test_reuse.py);
- only forward passes without a KV cache take part (``use_cache=False``: the scorers' passes); generation
  and any pass that asks for hidden states or attentions run in full.

What is stored: the state entering ``F`` and every ``every``-th layer below it, per batch, on the model's
device, up to ``max_bytes`` (then nothing more is stored and one warning says so). For the 1.5B in bf16
that is 3 KiB per token and layer: a 100-item COPA val split (~90 tokens per item) at 8 layers is ~220 MiB.

Example:
    >>> from austeer.evaluation.evaluate import evaluate
    >>> from austeer.core.momentum import Unit
    >>> from austeer.core.spec import SteerSpec
    >>> from austeer.core.steer import folded
    >>> from austeer.tasks import get_task
    >>> copa = get_task("copa")
    >>> cache = LayerCache(model)
    >>> with cache.reuse():
    ...     base = evaluate(model, tok, copa, "val", limit=4)
    >>> spec = SteerSpec(units=[Unit("head", 26, 5, 1.0)], alpha=8.0)
    >>> with folded(model, spec), cache.reuse():
    ...     steered = evaluate(model, tok, copa, "val", limit=4)
    >>> cache.stats["skipped"] > 0
    True
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from austeer.core.sites import decoder_layers
from austeer.errors import UserError

#: default bound on the stored hidden states, in bytes
MAX_BYTES = 2 * 2**30

_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _checksum(module: nn.Module) -> tuple[int, ...]:
    """One integer per parameter: the wrapping sum of its bytes read as 64-bit (or narrower) integers. A
    changed value changes it, short of a collision; ~4 ms per 55M bf16 values on one core."""
    out = []
    for p in module.parameters():
        raw = p.detach().contiguous().view(-1).view(torch.uint8)
        width = next(w for w in (8, 4, 2, 1) if raw.numel() % w == 0)
        if raw.device.type == "cpu":  # numpy: one thread, no wait for busy torch threads on a loaded CPU
            out.append(int(raw.numpy().view(f"<i{width}").sum(dtype=f"<i{width}")))
        else:
            out.append(int(raw.view(_INT[width]).sum(dtype=_INT[width])))
    return tuple(out)


def _hooked(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _key(input_ids: torch.Tensor, kwargs: dict[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in (input_ids, kwargs.get("attention_mask"), kwargs.get("position_ids")):
        if isinstance(t, torch.Tensor):
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(b"-")
    return h.hexdigest()


class _Call:
    """What one forward pass of the model does: replay the state entering ``start`` and store ``stores``."""

    def __init__(self, key: str, start: int, replay: torch.Tensor | None, stores: set[int]) -> None:
        self.key, self.start, self.replay, self.stores = key, start, replay, stores


class LayerCache:
    """Hidden states entering decoder layers, per input batch, for :meth:`reuse` (see the module docstring).

    Make it while ``model`` is unsteered: the checksums it takes then define "unchanged".
    ``stats``: ``run`` and ``skipped`` decoder-layer calls, ``bytes`` stored.
    """

    def __init__(self, model: nn.Module, every: int = 4, max_bytes: int = MAX_BYTES) -> None:
        if every < 1:
            raise UserError(f"every must be >= 1, got {every}")
        self.model, self.every, self.max_bytes = model, every, max_bytes
        self.layers = decoder_layers(model)
        embed = model.get_input_embeddings()  # type: ignore[operator]
        self.embed: nn.Module | None = embed if isinstance(embed, nn.Module) else None
        self._clean_embed = _checksum(self.embed) if self.embed is not None else ()
        self._clean = [_checksum(layer) for layer in self.layers]
        self._states: dict[str, dict[int, torch.Tensor]] = {}
        self._tuple = False  # whether a decoder layer returns a tuple (older transformers)
        self._first_changed = 0
        self._call: _Call | None = None
        self._warned = False
        self.stats = {"run": 0, "skipped": 0, "bytes": 0}

    def first_changed(self) -> int:
        """The first decoder layer whose weights differ from the unsteered model's or that carries a hook
        (``len(layers)`` when none does, -1 when the input embeddings changed)."""
        if self.embed is not None and (_hooked(self.embed) or _checksum(self.embed) != self._clean_embed):
            return -1
        for i, layer in enumerate(self.layers):
            if _hooked(layer) or _checksum(layer) != self._clean[i]:
                return i
        return len(self.layers)

    @contextmanager
    def reuse(self) -> Iterator[LayerCache]:
        """Inside the block, forward passes of the model (``use_cache=False``) replay and store hidden states
        below the first changed layer, found on entering: enter it *after* steering is in place."""
        self._first_changed = self.first_changed()
        handles = [
            self.model.register_forward_pre_hook(self._begin, with_kwargs=True),
            self.model.register_forward_hook(self._end, always_call=True),
        ]
        saved = [layer.__dict__.get("forward") for layer in self.layers]
        try:
            for i, layer in enumerate(self.layers):
                layer.forward = self._wrap(i, layer.forward)  # instance attribute: module names stay as they are
            yield self
        finally:
            for layer, before in zip(self.layers, saved):
                if before is None:
                    layer.__dict__.pop("forward", None)
                else:
                    layer.forward = before
            for h in handles:
                h.remove()
            self._call = None

    # the forward pass ------------------------------------------------------------------------------

    def _begin(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._call = None
        ids = kwargs.get("input_ids", args[0] if args else None)
        plain = (
            isinstance(ids, torch.Tensor)
            and kwargs.get("use_cache") is False
            and kwargs.get("past_key_values") is None
            and kwargs.get("inputs_embeds") is None
            and not kwargs.get("output_hidden_states")
            and not kwargs.get("output_attentions")
        )
        if not plain or self._first_changed < 1:
            return
        assert isinstance(ids, torch.Tensor)
        first = self._first_changed
        for i in range(first):  # a hook added since entering moves the first changed layer down
            if _hooked(self.layers[i]):
                first = i
                break
        key = _key(ids, kwargs)
        have = self._states.get(key, {})
        start = max((layer for layer in have if layer <= first), default=0)
        stores = {layer for layer in range(start + 1, first + 1) if layer % self.every == 0 or layer == first}
        self._call = _Call(key, start, have.get(start), stores - set(have))

    def _end(self, *_: Any) -> None:
        self._call = None

    def _wrap(self, i: int, forward: Any) -> Any:
        def run(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            call = self._call
            if call is None:
                return forward(hidden_states, *args, **kwargs)
            if i < call.start and call.replay is not None:
                self.stats["skipped"] += 1
                state = call.replay.clone()
                return (state,) if self._tuple else state
            out = forward(hidden_states, *args, **kwargs)
            self.stats["run"] += 1
            self._tuple = isinstance(out, tuple)
            if i + 1 in call.stores:
                self._store(call.key, i + 1, out[0] if self._tuple else out)
            return out

        return run

    def _store(self, key: str, layer: int, state: torch.Tensor) -> None:
        size = state.numel() * state.element_size()
        if self.stats["bytes"] + size > self.max_bytes:
            if not self._warned:
                warnings.warn(
                    f"layer reuse: the stored hidden states reached {self.max_bytes / 2**20:.0f} MiB; "
                    "later batches are computed in full",
                    stacklevel=2,
                )
                self._warned = True
            return
        self._states.setdefault(key, {})[layer] = state.detach().clone()
        self.stats["bytes"] += size


def reusing(cache: LayerCache | None) -> AbstractContextManager[Any]:
    """``cache.reuse()``, or nothing when ``cache`` is None."""
    return nullcontext() if cache is None else cache.reuse()
