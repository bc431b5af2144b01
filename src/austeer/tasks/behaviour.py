"""Behaviour tasks (detox, sentiment): pairs built from the model's own sampled continuations.

For each pair prompt the model samples ``n_samples`` continuations (temperature 1, fixed seed); an offline
judge scores them and the task picks a positive and a negative continuation (or drops the prompt). The
pairs are cached as JSONL under ``<austeer cache>/tasks/`` keyed by the task, the model (name and
fingerprint) and every sampling setting, so a sweep or a rerun never samples twice.

Evaluation (:func:`score_behaviour`): greedy continuations of the held-out prompts, the share judged as
wanted (the task's metric), the judge's mean score, and ``cont_ppl``, the perplexity of the continuations
given their prompts under ``ref_model`` (pass the unsteered model) or, without one, under the evaluated
model itself.

Example:
    >>> from austeer.tasks import get_task
    >>> t = get_task("sentiment")
    >>> t.metrics(["What a wonderful, happy day!", "This is awful and sad."])["positive_rate"]
    0.5
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from austeer.core.pairs import Pair, format_prompt, read_pairs, write_pairs
from austeer.errors import UserError
from austeer.io import atomic_write_text, json_sha256
from austeer.run.generate import generate, seeded
from austeer.run.likelihood import continuation_nll
from austeer.tasks.base import MAX_PAIRS, Item, ScoreOptions, Task


def score_behaviour(
    model: nn.Module,
    tokenizer: Any,
    task: BehaviourTask,
    items: Sequence[Item],
    batch_size: int = 16,
    max_new_tokens: int = 32,
    ref_model: nn.Module | None = None,
    samples: list[dict[str, Any]] | None = None,
    system: str | None = None,
) -> dict[str, float]:
    """Greedy continuations, judged by the task, with their perplexity under ``ref_model`` (or ``model``).

    ``cont_ppl`` conditions on the prompt without ``system``, so it compares the continuations of a prompted
    and an unprompted model on the same prefixes.

    Example:
        >>> from austeer.tasks import get_task
        >>> task = get_task("sentiment")
        >>> m = score_behaviour(model, tok, task, task.items("val", 2), max_new_tokens=4)
        >>> sorted(m)
        ['cont_ppl', 'empty_rate', 'mean_compound', 'positive_rate']
    """
    prompts = [it.prompt for it in items]
    gen = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, system=system)
    outs = [o.strip() for o in gen]
    metrics = task.metrics(outs)
    judge = ref_model if ref_model is not None else model
    nll, n = continuation_nll(
        judge, tokenizer, [format_prompt(tokenizer, p) for p in prompts], outs, max(1, batch_size // 2)
    )
    metrics["cont_ppl"] = math.exp(nll / n) if n else float("nan")
    metrics["empty_rate"] = sum(not o for o in outs) / max(1, len(outs))
    if samples is not None:
        scores = task.judge(outs)
        samples.extend(
            {"id": it.id, "output": o, "score": s, "correct": task.wanted(s)} for it, o, s in zip(items, outs, scores)
        )
    return metrics


class BehaviourTask(Task):
    """A generation task judged by an offline classifier; subclasses define the judge and the choice."""

    kind = "behaviour"
    max_new_tokens = 32
    n_samples = 4
    temperature = 1.0
    seed = 0

    def pair_items(self) -> list[Item]:
        raise NotImplementedError

    def judge(self, texts: Sequence[str]) -> list[float]:
        """One score per continuation (the task's own scale)."""
        raise NotImplementedError

    def wanted(self, score: float) -> bool:
        raise NotImplementedError

    def choose(self, samples: Sequence[str], scores: Sequence[float]) -> tuple[str, str] | None:
        """``(positive, negative)`` continuation for one prompt, or None to drop the prompt."""
        raise NotImplementedError

    #: name of the judge's mean score in the metrics
    mean_name = "mean_score"

    def metrics(self, texts: Sequence[str]) -> dict[str, float]:
        """The task's metric (share of wanted continuations) and the judge's mean score."""
        scores = self.judge(texts)
        n = max(1, len(scores))
        return {self.metric: sum(self.wanted(s) for s in scores) / n, self.mean_name: sum(scores) / n}

    def score(self, model: nn.Module, tokenizer: Any, items: Sequence[Item], opts: ScoreOptions) -> dict[str, float]:
        """:func:`score_behaviour` with the task's decoding budget unless ``max_new_tokens`` is given."""
        budget = opts.max_new_tokens or self.max_new_tokens
        return score_behaviour(
            model, tokenizer, self, items, opts.batch_size, budget, opts.ref_model, opts.samples, opts.system
        )

    def sizes(self) -> dict[str, int]:
        return {"pairs": len(self.pair_items()), **super().sizes()}

    # ---- pairs from sampled continuations ------------------------------------------------------------

    def settings(self, n_prompts: int) -> dict[str, Any]:
        return {
            "task": self.name,
            "n_prompts": n_prompts,
            "n_samples": self.n_samples,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    def cache_path(self, model: Any, n_prompts: int) -> Path:
        from austeer.core.spec import fingerprint
        from austeer.models.loading import cache_dir

        key = {
            **self.settings(n_prompts),
            "model": str(getattr(model.config, "_name_or_path", "")),
            "fingerprint": fingerprint(model)["digest"],
        }
        digest = json_sha256(key)[:16]
        return cache_dir() / "tasks" / f"{self.name}-{digest}.jsonl"

    def pairs(self, model: Any = None, tokenizer: Any = None, limit: int | None = None) -> list[Pair]:
        """Sample continuations of the first ``limit`` pair prompts (all by default), judge them, build pairs.

        Needs the (unsteered) model. The result is cached; a second call with the same model and
        settings reads the cache.
        """
        if model is None or tokenizer is None:
            raise UserError(f"task {self.name!r} builds its pairs from the model's own samples: pass model, tokenizer")
        prompts = self.pair_items()[: min(limit or MAX_PAIRS, MAX_PAIRS)]
        path = self.cache_path(model, len(prompts))
        if path.exists():
            return read_pairs(path)
        pairs, stats = self._sample_pairs(model, tokenizer, prompts)
        if not pairs:
            raise UserError(
                f"task {self.name!r}: none of {len(prompts)} prompts gave a usable pair "
                f"({self.n_samples} samples each); try more prompts or samples"
            )
        write_pairs(pairs, path)
        atomic_write_text(path.with_suffix(".json"), json.dumps({**self.settings(len(prompts)), **stats}, indent=2))
        return pairs

    def _sample_pairs(self, model: Any, tokenizer: Any, prompts: Sequence[Item]) -> tuple[list[Pair], dict[str, Any]]:
        texts = [it.prompt for it in prompts for _ in range(self.n_samples)]
        samples: list[str] = []
        chunk = 32
        with seeded(self.seed):  # one seed for the whole run; the caller's RNG state is restored after
            for start in tqdm(range(0, len(texts), chunk), desc=f"{self.name}: sampling pairs", unit="batch"):
                samples += generate(
                    model,
                    tokenizer,
                    texts[start : start + chunk],
                    max_new_tokens=self.max_new_tokens,
                    batch_size=chunk,
                    do_sample=True,
                    temperature=self.temperature,
                )
        scores = self.judge(samples)
        pairs = []
        for i, it in enumerate(prompts):
            s = slice(i * self.n_samples, (i + 1) * self.n_samples)
            chosen = self.choose([x.strip() for x in samples[s]], scores[s])
            if chosen is not None and chosen[0] and chosen[1] and chosen[0] != chosen[1]:
                pairs.append(Pair(it.prompt, chosen[0], chosen[1]))
        n = max(1, len(scores))
        stats = {
            "n_sampled": len(samples),
            "n_pairs": len(pairs),
            "sample_wanted_rate": sum(self.wanted(x) for x in scores) / n,
            f"sample_{self.mean_name}": sum(scores) / n,
        }
        return pairs, stats
