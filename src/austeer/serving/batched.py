"""Per-row steering: one batch, one forward pass, a different spec (or none) on every row.

The hooks of :func:`austeer.core.steer.apply` multiply a site by one gain vector ``[width]``. Here the gain
is a tensor ``[batch, 1, width]``: row ``r`` gets the gains of its own spec, and exact ones where it has
none, so an unsteered row computes ``x * 1.0 == x`` and a steered row ``x * g``, the same operations as
the single-spec hook. The sequence axis broadcasts, so the same hooks serve the prompt (prefill) and
every cached decoding step of ``model.generate`` (left padding, KV cache).

:func:`generate_rows` is the library entry point (greedy, like :func:`austeer.run.generate.generate`);
:func:`run_rows` is the engine behind the server: per-row token budgets, stop strings, temperature /
top-p sampling with a per-row seed, text deltas as they are produced, and cancellation. A temperature
below :data:`GREEDY_BELOW` is greedy, and a row whose logits stop being finite ends alone with
``finish_reason == "error"``: the other rows of its batch go on.

Example:
    >>> import torch
    >>> from austeer.core.momentum import Unit
    >>> from austeer.core.spec import SteerSpec
    >>> from austeer.serving.batched import RowSteer, row_gains
    >>> spec = SteerSpec(units=[Unit("head", 10, 5, 0.5)], alpha=2.0)
    >>> gains = row_gains(model, [None, RowSteer(spec), RowSteer(spec, alpha=-1.0)])
    >>> g = gains[("head", 10)]
    >>> tuple(g.shape), g[:, 0, 5].tolist(), bool((g[:, 0, :5] == 1).all())
    ((3, 1, 576), [1.0, 2.0, 0.5], True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from austeer.core.collect import encode, model_device
from austeer.core.pairs import format_prompt
from austeer.core.spec import SteerSpec
from austeer.core.steer import Steering, add_hooks, gain_vectors
from austeer.errors import UserError

GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily: ``logits / T`` would overflow to inf (NaN probabilities) long
before a temperature this small differs from the argmax (vLLM uses the same threshold)."""


def batch_note(dtype: torch.dtype) -> str | None:
    """Why a row's answer may depend on its batch in ``dtype`` (None in float32, where batched rows equal
    one-by-one generation: ``tests/test_batched.py``). In bfloat16 / float16 the padding of a mixed batch
    changes the attention's shapes and with them the rounding, enough to flip a greedy token
    (``benchmarks/batch_invariance.py``, docs/SERVING.md).

    Example:
        >>> batch_note(torch.float32) is None, batch_note(torch.bfloat16)[:39]
        (True, 'in bfloat16 a request may be answered d')
    """
    if dtype == torch.float32:
        return None
    name = str(dtype).removeprefix("torch.")
    return (
        f"in {name} a request may be answered differently when batched with prompts of other lengths than alone "
        "(padding changes the rounding); --dtype float32 for answers that do not depend on the batch"
    )


@dataclass(frozen=True)
class RowSteer:
    """The steering of one row: a spec and an optional alpha that overrides the spec's."""

    spec: SteerSpec
    alpha: float | None = None


def row_gains(model: nn.Module, steers: Sequence[RowSteer | None]) -> dict[tuple[str, int], torch.Tensor]:
    """``{(site, layer): gain [batch, 1, width]}`` over the union of the rows' steered sites and layers.

    Rows that do not steer a ``(site, layer)`` (or steer nothing) get exact ones there.
    """
    per_row = [gain_vectors(model, s.spec, s.alpha) if s is not None else {} for s in steers]
    keys = sorted({key for gains in per_row for key in gains})
    out: dict[tuple[str, int], torch.Tensor] = {}
    for key in keys:
        ref = next(g[key] for g in per_row if key in g)
        rows = [g[key] if key in g else torch.ones_like(ref) for g in per_row]
        out[key] = torch.stack(rows).unsqueeze(1)
    return out


@contextmanager
def apply_rows(model: nn.Module, steers: Sequence[RowSteer | None]) -> Iterator[Steering]:
    """Steer row ``r`` of every batch by ``steers[r]`` inside the block; the hooks are always removed.

    Every forward inside the block must have exactly ``len(steers)`` rows.
    """
    steering = add_hooks(model, row_gains(model, steers))
    try:
        yield steering
    finally:
        steering.remove()


@dataclass
class RowRequest:
    """One row of :func:`run_rows`: the text the model sees (already chat-formatted) and how to decode it."""

    text: str
    steer: RowSteer | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0  # below GREEDY_BELOW (0 included): greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class RowResult:
    """What one row produced: the text, why it ended (``stop``, ``length`` or ``error``) and token counts.

    ``error`` says what went wrong with this row alone (its logits stopped being finite); ``None`` otherwise.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass
class _Row:
    request: RowRequest
    prompt_tokens: int
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    error: str | None = None

    def fail(self, why: str) -> None:
        """End this row alone; the batch goes on for the others."""
        self.finish_reason, self.error = "error", why


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters may still turn into a stop string or an incomplete character."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class _Controller(StoppingCriteria):
    """Called by ``generate`` after every step: records each row's token, emits text, decides who is done."""

    def __init__(
        self,
        tokenizer: Any,
        rows: list[_Row],
        eos: set[int],
        on_delta: Callable[[int, str], None] | None,
        cancelled: Callable[[int], bool] | None,
    ) -> None:
        self.tokenizer, self.rows, self.eos = tokenizer, rows, eos
        self.on_delta, self.cancelled = on_delta, cancelled

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        done = []
        for r, row in enumerate(self.rows):
            if row.finish_reason is None:
                self._step(r, row, int(last[r]))
            done.append(row.finish_reason is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def _step(self, r: int, row: _Row, token: int) -> None:
        req = row.request
        if token in self.eos:
            row.finish_reason = "stop"
        else:
            row.ids.append(token)
            row.text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
            hits = [i for i in (row.text.find(s) for s in req.stop if s) if i >= 0]
            if hits:
                row.text = row.text[: min(hits)]
                row.finish_reason = "stop"
            elif len(row.ids) >= req.max_new_tokens:
                row.finish_reason = "length"
            elif self.cancelled is not None and self.cancelled(r):
                row.finish_reason = "cancelled"
        end = len(row.text) if row.finish_reason is not None else len(row.text) - _held_back(row.text, req.stop)
        if end > row.emitted and self.on_delta is not None:
            self.on_delta(r, row.text[row.emitted : end])
        row.emitted = max(row.emitted, end)


class _RowSampling(LogitsProcessor):
    """Leave only the chosen token of each row: the argmax (greedy rows) or a draw with the row's own seed.

    A live row whose logits hold a NaN or +inf (or are all -inf) is failed here, alone.
    """

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = scores.argmax(-1)
        broken = (scores.isnan() | scores.isposinf()).any(-1) | scores.isneginf().all(-1)
        for r in broken.nonzero().flatten().tolist():
            if self.rows[r].finish_reason is None:
                self.rows[r].fail("its logits became non-finite (NaN or inf)")
        for r, row in enumerate(self.rows):
            req = row.request
            if req.temperature >= GREEDY_BELOW and row.finish_reason is None:
                probs = torch.softmax(scores[r].float() / req.temperature, -1)
                if req.top_p < 1.0:
                    sorted_p, order = probs.sort(descending=True)
                    keep = sorted_p.cumsum(-1) - sorted_p < req.top_p
                    keep[0] = True  # the most likely token always: a top_p below float32's range (1e-300) is 0 here
                    probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
                try:
                    chosen[r] = torch.multinomial(probs.cpu(), 1, generator=row.generator).to(chosen.device)[0]
                except RuntimeError as exc:  # e.g. an underflow to all-zero probabilities: this row only
                    row.fail(f"sampling failed: {exc}")
        out = torch.full_like(scores, -math.inf)
        out.scatter_(1, chosen[:, None], 0.0)
        return out  # type: ignore[return-value]


@torch.inference_mode()
def run_rows(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[RowRequest],
    on_delta: Callable[[int, str], None] | None = None,
    cancelled: Callable[[int], bool] | None = None,
) -> list[RowResult]:
    """Generate every request in ONE batched ``model.generate`` call with per-row steering.

    ``on_delta(row, text)`` receives each row's new text as soon as it is final (text that could still
    become a stop string is held back); ``cancelled(row)`` is polled every step and ends that row.

    Example:
        >>> from austeer.serving.batched import RowRequest, run_rows
        >>> from austeer.core.pairs import format_prompt
        >>> text = format_prompt(tok, "What is the capital of France?")
        >>> [(r.text, r.finish_reason) for r in run_rows(model, tok, [RowRequest(text, max_new_tokens=4)])]
        [('The capital of France', 'length')]
    """
    if not requests:
        return []
    for req in requests:
        if req.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {req.max_new_tokens}")
        if not (req.temperature >= 0 and math.isfinite(req.temperature)):
            raise UserError(f"temperature must be a finite number >= 0, got {req.temperature}")
        if not 0 < req.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {req.top_p}")
    enc = encode(tokenizer, [r.text for r in requests], None, padding_side="left")
    counts = enc["attention_mask"].sum(1).tolist()
    rows = [_Row(req, int(n)) for req, n in zip(requests, counts)]
    for row in rows:
        if row.request.temperature >= GREEDY_BELOW:
            row.generator = torch.Generator()
            if row.request.seed is not None:
                row.generator.manual_seed(row.request.seed)
            else:
                row.generator.seed()
    eos = tokenizer.eos_token_id
    eos_set = set(eos) if isinstance(eos, list) else ({int(eos)} if eos is not None else set())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_set), 0)
    device = model_device(model)
    controller = _Controller(tokenizer, rows, eos_set, on_delta, cancelled)
    steers = [r.steer for r in requests]
    with apply_rows(model, steers) if any(s is not None for s in steers) else _no_hooks():
        model.generate(  # type: ignore[operator]
            input_ids=enc["input_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
            max_new_tokens=max(r.max_new_tokens for r in requests),
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            pad_token_id=pad,
            eos_token_id=eos,
            logits_processor=LogitsProcessorList([_RowSampling(rows)]),
            stopping_criteria=StoppingCriteriaList([controller]),
        )
    results = []
    for row in rows:
        reason = row.finish_reason or "length"
        reason = "stop" if reason == "cancelled" else reason
        results.append(RowResult(row.text, reason, row.prompt_tokens, len(row.ids), row.error))
    return results


@contextmanager
def _no_hooks() -> Iterator[None]:
    yield


def generate_rows(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    steers: Sequence[RowSteer | SteerSpec | None],
    max_new_tokens: int = 64,
    chat: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts`` in one batch, row ``r`` steered by ``steers[r]`` (or not at all).

    Example:
        >>> from austeer.serving.batched import generate_rows
        >>> generate_rows(model, tok, ["What is the capital of France?"], [None], max_new_tokens=8)
        ['The capital of France is Paris.']
    """
    if len(prompts) != len(steers):
        raise UserError(f"got {len(prompts)} prompts but {len(steers)} steers (one per row, None for none)")
    rows = [s if s is None or isinstance(s, RowSteer) else RowSteer(s) for s in steers]
    texts = [format_prompt(tokenizer, p) if chat else p for p in prompts]
    reqs = [RowRequest(t, s, max_new_tokens) for t, s in zip(texts, rows)]
    return [r.text for r in run_rows(model, tokenizer, reqs)]
