"""Batched, padding-aware capture of site activations at the last real token of each text.

Texts are tokenized with truncation on the *left* (the answer, whose last token is the one read,
is never cut) to ``max_length`` tokens, by default the model's context (:func:`context_length`), with
a warning when a text is cut; padded on either side, and run through the model's backbone (no LM head) under
``torch.inference_mode``. Hooks keep only the last real token of each row, in float32.

Example:
    >>> from austeer.core.collect import last_token_activations
    >>> acts = last_token_activations(model, tok, ["Hello there", "Hi"], ["head"])
    >>> tuple(acts["head"].shape)   # [texts, layers, width]
    (2, 30, 576)
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from austeer.core.pairs import Pair, has_chat_template, pair_texts
from austeer.core.sites import decoder_layers, site_def, site_module, site_width
from austeer.errors import UserError


def context_length(model: nn.Module) -> int | None:
    """The most positions ``model`` was trained on (``max_position_embeddings`` of its config), or None.

    Example:
        >>> context_length(model)
        8192
    """
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def token_limit(model: nn.Module, max_length: int | None, reserve: int = 0) -> int | None:
    """``max_length`` if given, else the model's context less ``reserve`` tokens (kept for generation).

    Example:
        >>> token_limit(model, None, reserve=192), token_limit(model, 64)
        (8000, 64)
    """
    if max_length is not None:
        return max_length
    context = context_length(model)
    return None if context is None else max(1, context - reserve)


def _warn_truncated(max_length: int | None) -> None:
    warnings.warn(
        f"a text longer than {max_length} tokens was truncated on the left to its last {max_length} "
        "(max_length / --max-length; the default is the model's context)",
        UserWarning,
        stacklevel=3,
    )


def _tokenize(tokenizer: Any, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    kwargs = {"padding": False, "truncation": False, "max_length": None, "verbose": False}
    enc = tokenizer(list(texts), add_special_tokens=add_special_tokens, **kwargs)
    return [list(row) for row in enc["input_ids"]]


def _left_truncated_ids(tokenizer: Any, texts: Sequence[str], max_length: int | None) -> tuple[list[list[int]], bool]:
    """Token ids of ``texts`` (special tokens only when there is no chat template) with the longer ones cut on
    the left to ``max_length`` as ``truncation_side="left"`` cuts them (the special tokens the tokenizer adds
    are kept), without setting anything on the tokenizer; and whether any text was cut."""
    add = not has_chat_template(tokenizer)
    ids = _tokenize(tokenizer, texts, add)
    if max_length is None:
        return ids, False
    cut = False
    for r, text in enumerate(texts):
        if len(ids[r]) > max_length:
            ids[r] = _cut_left(tokenizer, text, ids[r], max_length, add)
            cut = True
    return ids, cut


def _cut_left(tokenizer: Any, text: str, full: list[int], max_length: int, add: bool) -> list[int]:
    """The last tokens of ``text`` that fit in ``max_length`` with the tokenizer's added special tokens around them."""
    if not add:
        return full[-max_length:]
    bare = _tokenize(tokenizer, [text], False)[0]
    n_added = len(full) - len(bare)
    start = next((p for p in range(n_added + 1) if full[p : p + len(bare)] == bare), None)
    if start is None or n_added < 0:  # the added tokens are not around the text: cut the whole row
        return full[-max_length:]
    keep = max(0, max_length - n_added)
    return full[:start] + bare[len(bare) - keep :] + full[start + len(bare) :]


def _pad(tokenizer: Any, rows: Sequence[Sequence[int]], padding_side: str) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``rows`` padded to the longest with the tokenizer's pad token."""
    if padding_side not in ("left", "right"):
        raise UserError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max((len(r) for r in rows), default=0)
    pad = tokenizer.pad_token_id
    if pad is None and any(len(r) < width for r in rows):
        raise UserError("the tokenizer has no pad token: set tokenizer.pad_token (e.g. to its eos token)")
    ids = torch.full((len(rows), width), 0 if pad is None else int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[i, cols] = torch.tensor(row, dtype=torch.long)
        mask[i, cols] = 1
    return {"input_ids": ids, "attention_mask": mask}


def encode(
    tokenizer: Any, texts: Sequence[str], max_length: int | None = None, padding_side: str = "left"
) -> dict[str, torch.Tensor]:
    """Tokenize a batch: special tokens only when there is no chat template (the template has its own).

    Texts longer than ``max_length`` tokens are cut on the left, with a :class:`UserWarning`; rows are
    padded on ``padding_side``. The tokenizer's own settings (``padding_side``, ``truncation_side``) are
    neither read nor changed.

    Example:
        >>> encode(tok, ["one two three four"], max_length=2)["input_ids"].shape[1]
        2
    """
    ids, cut = _left_truncated_ids(tokenizer, texts, max_length)
    if cut:
        _warn_truncated(max_length)
    return _pad(tokenizer, ids, padding_side)


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding alike."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).to(torch.int64).argmax(1)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def capture(
    model: nn.Module, sites: Sequence[str], rows: dict[str, torch.Tensor]
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Hooks that store ``x[rows, last]`` (float32, CPU) of every layer of ``sites``; always removed.

    ``rows`` is filled by the caller before each forward with ``{"last": positions}``.
    """
    n_layers = len(decoder_layers(model))
    store: dict[str, list[torch.Tensor]] = {s: [torch.empty(0)] * n_layers for s in sites}
    handles = []

    def make(site: str, layer: int, io: str) -> Any:
        def grab(x: torch.Tensor) -> None:
            last = rows["last"].to(x.device)
            picked = x[torch.arange(x.shape[0], device=x.device), last]
            store[site][layer] = picked.detach().to("cpu", torch.float32)

        if io == "input":
            return lambda _m, args: grab(args[0])
        return lambda _m, _a, out: grab(out[0] if isinstance(out, tuple) else out)

    try:
        for site in sites:
            io = site_def(model, site).io
            for layer in range(n_layers):
                mod = site_module(model, site, layer)
                hook = make(site, layer, io)
                handles.append(
                    mod.register_forward_pre_hook(hook) if io == "input" else mod.register_forward_hook(hook)
                )
        yield store
    finally:
        for h in handles:
            h.remove()


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (saves the vocabulary projection when only reading sites)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) and base is not model else model


def last_token_activations(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    sites: Sequence[str],
    max_length: int | None = None,
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """One batch: ``{site: [len(texts), n_layers, width]}`` float32 activations at the last token.

    ``max_length`` defaults to the model's context; longer texts are cut on the left, with a warning.
    """
    enc = encode(tokenizer, texts, token_limit(model, max_length), padding_side)
    device = model_device(model)
    rows = {"last": last_positions(enc["attention_mask"])}
    with capture(model, sites, rows) as store, torch.inference_mode():
        backbone(model)(
            input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device), use_cache=False
        )
    out = {}
    for site in sites:
        out[site] = torch.stack(store[site], dim=1)
        expected = (len(texts), len(store[site]), site_width(model, site))
        if tuple(out[site].shape) != expected:
            raise RuntimeError(f"site {site!r}: captured shape {tuple(out[site].shape)}, expected {expected}")
    return out


def batch_plan(tokenizer: Any, pairs: Sequence[Pair], batch_size: int) -> list[list[int]]:
    """Pair indices of each forward batch: pairs sorted by length (longest first), cut into ``batch_size`` chunks."""
    return plan_batches([pair_texts(tokenizer, p) for p in pairs], batch_size)


def plan_batches(texts: Sequence[tuple[str, str]], batch_size: int) -> list[list[int]]:
    """:func:`batch_plan` of pairs already formatted (``(positive, negative)`` texts)."""
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(texts)), key=lambda i: -max(len(texts[i][0]), len(texts[i][1])))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


PairBatch = tuple[list[int], dict[str, torch.Tensor], dict[str, torch.Tensor]]


def pair_batches(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    sites: Sequence[str],
    batch_size: int = 16,
    *,
    share_prefix: bool = True,
    max_length: int | None = None,
    padding_side: str = "left",
    rank: int = 0,
    world: int = 1,
) -> Iterator[PairBatch]:
    """The one loop over pairs that discovery reads: per batch, ``(indices, positive, negative)``.

    ``positive[site]`` and ``negative[site]`` are ``[len(indices), n_layers, width]`` float32 activations at
    the last token, in the order of ``indices``. Pairs are formatted once (chat template), sorted by length
    (:func:`plan_batches`) and run ``batch_size`` pairs at a time; with ``share_prefix`` the prompt the two
    texts share runs once and both answers continue from its KV cache (:func:`shared_prefix_activations`),
    otherwise both texts run whole (padded on ``padding_side``). ``rank``/``world`` keep batches
    ``rank, rank + world, ...`` (one shard of a multi-process run). With no site nothing runs. Scoring
    (:func:`austeer.core.fit.score`) and the baselines' evidence (:func:`austeer.methods.base.gather`) both
    consume this iterator.

    Example:
        >>> from austeer.core.pairs import Pair
        >>> batches = pair_batches(model, tok, [Pair("Hi?", "Yes", "No")], ["head"])
        >>> [(rows, tuple(pos["head"].shape)) for rows, pos, _ in batches]
        [([0], (1, 30, 576))]
    """
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"need 0 <= rank < world, got rank {rank}, world {world}")
    if not sites:
        return
    texts = [pair_texts(tokenizer, p) for p in pairs]
    for rows in plan_batches(texts, batch_size)[rank::world]:
        chunk = [texts[i] for i in rows]
        if share_prefix:
            pos, neg = shared_prefix_activations(model, tokenizer, chunk, sites, max_length)
        else:
            flat = [p for p, _ in chunk] + [n for _, n in chunk]
            acts = last_token_activations(model, tokenizer, flat, sites, max_length, padding_side)
            pos = {s: acts[s][: len(chunk)] for s in sites}
            neg = {s: acts[s][len(chunk) :] for s in sites}
        yield rows, pos, neg


def _token_ids(tokenizer: Any, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
    """Unpadded token ids, truncated on the left like :func:`encode`."""
    ids, cut = _left_truncated_ids(tokenizer, texts, max_length)
    if cut:
        _warn_truncated(max_length)
    return ids


def shared_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token lists share, keeping at least one token of each (the answers differ
    after it).

    Example:
        >>> shared_prefix_length([1, 2, 3, 4], [1, 2, 5]), shared_prefix_length([1, 2], [1, 2])
        (2, 1)
    """
    n, most = 0, min(len(a), len(b)) - 1
    while n < most and a[n] == b[n]:
        n += 1
    return n


@dataclass(frozen=True)
class PrefixSplit:
    """A batch of pairs cut where their two texts part: each pair's shared prompt once, left padded
    (``prefix_ids``/``prefix_mask``, ``[b, P]``), and both answers' remaining tokens, right padded, rows ``pos0,
    neg0, pos1, ...`` (``suffix_ids``/``suffix_mask``, ``[2b, S]``), each starting at position ``start`` (``[2b]``).
    """

    prefix_ids: torch.Tensor
    prefix_mask: torch.Tensor
    suffix_ids: torch.Tensor
    suffix_mask: torch.Tensor
    start: torch.Tensor


def split_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int | None) -> PrefixSplit | None:
    """The pairs' texts tokenized (truncated on the left like :func:`encode`) and cut after the prefix each pair's
    two texts share (:func:`shared_prefix_length`); ``None`` where a pair shares no first token.

    Example:
        >>> split = split_pairs(tok, [("Say yes: yes", "Say yes: no")], 64)
        >>> tuple(split.prefix_ids.shape)[0], tuple(split.suffix_ids.shape)[0], split.suffix_mask.sum(1).tolist()
        (1, 2, [1, 1])
    """
    ids = _token_ids(tokenizer, [t for pair in pairs for t in pair], max_length)
    pos, neg = ids[0::2], ids[1::2]
    cut = [shared_prefix_length(p_ids, n_ids) for p_ids, n_ids in zip(pos, neg)]
    if not pairs or min(cut) < 1:
        return None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    b, width = len(pairs), max(cut)
    pre_ids = torch.full((b, width), pad, dtype=torch.long)
    pre_mask = torch.zeros((b, width), dtype=torch.long)
    for j, (p_ids, n) in enumerate(zip(pos, cut)):
        pre_ids[j, width - n :] = torch.tensor(p_ids[:n])
        pre_mask[j, width - n :] = 1
    suffixes = [s for j in range(b) for s in (pos[j][cut[j] :], neg[j][cut[j] :])]
    s_width = max(len(s) for s in suffixes)
    suf_ids = torch.full((2 * b, s_width), pad, dtype=torch.long)
    suf_mask = torch.zeros((2 * b, s_width), dtype=torch.long)
    for i, s in enumerate(suffixes):
        suf_ids[i, : len(s)] = torch.tensor(s)
        suf_mask[i, : len(s)] = 1
    return PrefixSplit(pre_ids, pre_mask, suf_ids, suf_mask, torch.tensor(cut).repeat_interleave(2))


def prefix_pass(net: nn.Module, split: PrefixSplit) -> tuple[torch.Tensor, Any]:
    """Run the shared prompts once: ``(last hidden states [b, P, H], the KV cache)``, the cache repeated so
    that row ``2j`` and ``2j + 1`` (both answers of pair ``j``) continue from prompt ``j``. Runs under whatever
    grad mode and hooks the caller set."""
    device = model_device(net)
    out = net(
        input_ids=split.prefix_ids.to(device),
        attention_mask=split.prefix_mask.to(device),
        position_ids=(split.prefix_mask.cumsum(1) - 1).clamp(min=0).to(device),
        use_cache=True,
    )
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None:
        raise RuntimeError(f"{type(net).__name__} returned no KV cache; run the texts whole (share_prefix=False)")
    cache.batch_repeat_interleave(2)
    return out.last_hidden_state, cache


def suffix_pass(net: nn.Module, split: PrefixSplit, cache: Any) -> torch.Tensor:
    """Continue both answers of every pair from ``cache`` (:func:`prefix_pass`): last hidden states ``[2b, S, H]``
    (rows ``pos0, neg0, pos1, ...``; positions after each answer's end are padding)."""
    device = model_device(net)
    # transformers >= 5.x names the argument ``cache`` (``past_key_values`` is deprecated)
    cache_arg = "cache" if "cache" in inspect.signature(net.forward).parameters else "past_key_values"
    width = split.suffix_ids.shape[1]
    return net(
        input_ids=split.suffix_ids.to(device),
        attention_mask=torch.cat([split.prefix_mask.repeat_interleave(2, dim=0), split.suffix_mask], 1).to(device),
        position_ids=(split.start[:, None] + torch.arange(width)[None]).to(device),
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state


def shared_prefix_activations(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    sites: Sequence[str],
    max_length: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(positive, negative)``, each ``{site: [len(pairs), n_layers, width]}`` float32 last-token activations.

    The two texts of a pair share their prompt. The common token prefix is run once (left padded, KV
    cache kept), then both answers continue from the cache (right padded), so the prompt costs one
    forward instead of two (:func:`split_pairs`, :func:`prefix_pass`, :func:`suffix_pass`). The activations
    equal those of :func:`last_token_activations` on the full texts up to float rounding (positions are taken
    from the attention mask).

    Example:
        >>> pos, neg = shared_prefix_activations(model, tok, [("Say yes: yes", "Say yes: no")], ["head"])
        >>> tuple((pos["head"] - neg["head"]).shape)   # the momenta
        (1, 30, 576)
    """
    max_length = token_limit(model, max_length)
    split = split_pairs(tokenizer, pairs, max_length)
    if split is None:  # a pair without a shared first token: run the full texts
        full = last_token_activations(model, tokenizer, [t for pair in pairs for t in pair], sites, max_length)
        return {s: a[0::2] for s, a in full.items()}, {s: a[1::2] for s, a in full.items()}
    net = backbone(model)
    rows = {"last": split.suffix_mask.sum(1) - 1}
    with torch.inference_mode():
        _, cache = prefix_pass(net, split)
        with capture(model, sites, rows) as store:
            suffix_pass(net, split, cache)
    pos_out, neg_out = {}, {}
    for site in sites:
        got = torch.stack(store[site], dim=1)
        expected = (len(split.suffix_ids), len(store[site]), site_width(model, site))
        if tuple(got.shape) != expected:
            raise RuntimeError(f"site {site!r}: captured shape {tuple(got.shape)}, expected {expected}")
        pos_out[site], neg_out[site] = got[0::2], got[1::2]
    return pos_out, neg_out
