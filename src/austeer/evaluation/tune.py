"""Choose site, k and alpha from the pairs alone: effect on held-out pairs against damage on neutral text.

A user with a pairs file has no task, scorer or validation set. :func:`tune` makes one from the pairs:

1. **Split** (:func:`split_pairs`): pairs are ordered by the SHA-256 of their system turn and prompt and
   the first quarter (at least 2, extended so pairs sharing a prompt stay together) is held out; the rest
   is the fit split. The split depends only on the texts, so swapping the answers of a file keeps it.
2. **Score** the AUs of every site once on the fit split (:func:`austeer.core.fit.score`), then try a grid of
   ``(site, k, alpha)`` (:func:`grid`: k in 2, 8, 32, 100 and alpha in 1, 2, 5, 10, 20, 50, thinned
   evenly by strength to ``budget`` configurations) by folding the gains into the weights.
3. **Measure** each configuration with forward passes only:

   - *effect*: the held-out margin of a pair is ``mean log p(positive answer | prompt) - mean log
     p(negative answer | prompt)``, each a mean over the answer's tokens (nats per token, so long
     answers do not outweigh short ones). ``effect`` is the mean over held-out pairs of the steered
     margin minus the unsteered one, ``effect_se`` its standard error (sample standard deviation of the
     per-pair changes over ``sqrt(n)``), ``z = effect / effect_se``, ``share_up`` the share of
     held-out pairs whose margin grew, and ``fixed`` / ``broken`` the held-out pairs whose preference
     flipped to the positive answer / away from it (reported; the rule uses the mean);
   - *damage*: on the neutral texts (:data:`austeer.tasks.base.NEUTRAL_TEXTS`, plus the user's own),
     ``kl`` is ``KL(unsteered || steered)`` of the next-token distributions, averaged over positions
     (nats), and ``ppl_ratio`` the steered perplexity over the unsteered one.

4. **Choose** (:func:`choose`) among configurations with ``ppl_ratio <= max_damage`` (default 1.25) whose
   effect is beyond noise by the ``rule``'s test (:func:`levels`: a 5% level, Bonferroni-corrected for the
   number of configurations tried, so that trying many on random labels does not find one by chance):

   - ``"margin"``: the mean margin change, ``z >= min_z`` (:func:`noise_z`); the largest effect wins. It fits
     pairs whose answers are free text, where a behaviour shifts every pair's margin a little;
   - ``"choice"``: the held-out pairs as a two-way choice (does the model prefer the positive answer?): the
     exact McNemar test on the flips, ``fixed > broken`` and ``p_choice <= max_p``; the most net flips win.
     It fits pairs that are a task's two options (COPA, BoolQ), where a gain that flips one item in ten
     raises accuracy but moves the mean margin little;
   - ``"either"`` (the default): a configuration passes either test, each at half the level (the correction
     counts both); the most net flips win, then the largest effect.

   No such configuration: no spec.

**Which method**: ``methods`` names any registered method built from pairs alone (:func:`tunable`: ``austeer``,
``caa``, ``iti``, ``au-add``, ...; not the prompt, which needs a task's instruction). Each is fitted on the same
fit pairs, read once (:func:`austeer.methods.base.gather`; AUSteer's sign counts come from the same pass), and
measured on the same held-out pairs and neutral texts over its grid (:data:`TUNE_GRIDS`, else its
``Method.grid``, thinned to ``budget``); the correction counts every configuration of every method. Each method
gets its choice by the rule (``chosen_by``), and ``best`` is the best of those choices by the same rule: the
method to use for these pairs.

Output directory (optional, resumable):

- ``tune.json``: ``{"model", "fingerprint", "pairs_sha256", "neutral_sha256", "instruction_sha256", "split",
  "settings", "baseline", "rows", "chosen", "chosen_by", "best", "capability", "message"}``, rewritten
  atomically after every row; measured rows are skipped when the run is resumed (same model, pairs, neutral
  texts and instruction);
- ``scores/<site>/``: the fit split's sign counts (a spec of the top 100), so a resumed run does not rescore;
- ``spec/``: the chosen configuration as an ordinary spec (``austeer generate --steer DIR/spec``);
  removed (it is austeer's own) when a rerun chooses nothing;
- ``<method>.safetensors``: an additive method's chosen vectors, strength included (``vector.<layer>``; the
  metadata names the ``site`` they are added at and the ``config``), when one passed: an addition is not a
  :class:`SteerSpec` (a ``residual`` one is a llama.cpp control vector: :mod:`austeer.exports.control_vector`).

Example:
    >>> from austeer.core.pairs import Pair
    >>> pairs = [Pair(f"Question {i}?", "Yes.", "No.") for i in range(8)]
    >>> fit_idx, held_idx = split_pairs(pairs)
    >>> len(fit_idx), len(held_idx), set(fit_idx) & set(held_idx)
    (6, 2, set())
    >>> [(s, k, a) for s, k, a in grid(["head"], budget=3)]
    [('head', 2, 1.0), ('head', 100, 1.0), ('head', 100, 50.0)]
    >>> round(noise_z(1), 2), round(noise_z(24), 2)
    (2.0, 3.08)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import statistics
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from austeer.core.fit import score, spec_from_counts
from austeer.core.momentum import SignCounts
from austeer.core.pairs import Pair, pairs_sha256
from austeer.core.reuse import LayerCache
from austeer.core.sites import check_site
from austeer.core.spec import SteerSpec, fingerprint, load
from austeer.errors import UserError
from austeer.evaluation import search
from austeer.evaluation.capability import Panel, Retention, first_within
from austeer.evaluation.search import Measured, load_state, save_state, spread
from austeer.evaluation.sweep import steering
from austeer.io import (
    atomic_write_file,
    check_file_output,
    check_output_dir,
    check_replaceable,
    json_sha256,
    signature,
    signed,
    signed_json,
    write_output,
)
from austeer.run.measure import damage, effect_of, margins, neutral_reference
from austeer.stats import mcnemar
from austeer.tasks.base import NEUTRAL_TEXTS

KS: tuple[int, ...] = (2, 8, 32, 100)
ALPHAS: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
HELDOUT_SHARE = 0.25
MIN_PAIRS = 8
MAX_DAMAGE = 1.25


@dataclass(frozen=True)
class TuneRow:
    """One measured configuration. ``method`` ``austeer``: ``k`` AUs of ``site`` at ``alpha``; ``caa``:
    the residual vector of ``layer`` (``k`` = its width) times ``alpha``. See the module docstring."""

    method: str
    site: str
    k: int
    alpha: float
    layer: int
    n_steered: int
    effect: float
    effect_se: float
    z: float
    share_up: float
    margin: float
    kl: float
    ppl_ratio: float
    fixed: int = 0
    broken: int = 0
    config: str = ""  # the configuration the method was built with (canonical JSON): with method, the row's key

    @property
    def p_choice(self) -> float:
        """Exact McNemar p of the held-out preference flips (``fixed`` against ``broken``)."""
        return mcnemar(self.fixed, self.broken)

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.config)

    @property
    def measured(self) -> Measured:
        """What the searches' one rule reads (:class:`~austeer.evaluation.search.Row`): net held-out flips, then the
        margin effect (the margin rule alone reads :attr:`effect`, see :func:`ranked`)."""
        return Measured((self.fixed - self.broken, self.effect), self.ppl_ratio, self.n_steered, self.alpha)


@dataclass
class TuneResult:
    """What :func:`tune` found: every row, the choice (or None) and why, and the chosen spec."""

    rows: list[TuneRow]
    chosen: TuneRow | None
    message: str
    min_z: float | None
    max_damage: float
    n_fit: int
    n_heldout: int
    baseline_margin: float
    spec: SteerSpec | None = None
    chosen_by: dict[str, TuneRow | None] = field(default_factory=dict)  # each method's choice
    best: TuneRow | None = None  # the best of the methods' choices, by the same rule: the method to use
    state: dict[str, Any] = field(default_factory=dict)
    rule: str = "margin"
    max_p: float | None = None  # the McNemar level of the choice test (rules choice and either)
    #: each method's choice on the capability panel, when one was given (:meth:`Retention.to_json`)
    capability: dict[str, dict[str, Any]] = field(default_factory=dict)


# -- the split, the grid, the rule


def _prompt_key(pair: Pair) -> str:
    return hashlib.sha256(f"{pair.system or ''}\x00{pair.prompt}".encode()).hexdigest()


def split_pairs(pairs: Sequence[Pair], share: float = HELDOUT_SHARE) -> tuple[list[int], list[int]]:
    """``(fit, heldout)`` pair indices: see the module docstring (SHA-256 order, first ``share`` held out)."""
    n = len(pairs)
    if n < MIN_PAIRS:
        raise UserError(f"tune needs at least {MIN_PAIRS} pairs (a fit and a held-out split), got {n}")
    keys = [_prompt_key(p) for p in pairs]
    order = sorted(range(n), key=lambda i: (keys[i], i))
    cut = max(2, round(n * share))
    while cut < n and keys[order[cut]] == keys[order[cut - 1]]:
        cut += 1
    if n - cut < 2:
        raise UserError(f"too few distinct prompts to split {n} pairs into fit and held-out pairs")
    return sorted(order[cut:]), sorted(order[:cut])


def grid(
    sites: Sequence[str], budget: int | None = None, ks: Sequence[int] = KS, alphas: Sequence[float] = ALPHAS
) -> list[tuple[str, int, float]]:
    """``(site, k, alpha)`` to try: the full grid, or ``budget`` of them spread over each site's range.

    Each site gets ``budget // len(sites)`` (the first sites one more for the remainder); its configurations
    are ordered by strength ``k * alpha`` and picked at evenly spaced ranks, so the weakest and the
    strongest are always tried.
    """
    out: list[tuple[str, int, float]] = []
    for i, site in enumerate(sites):
        full = sorted(((int(k), float(a)) for k in ks for a in alphas), key=lambda c: (c[0] * c[1], c[0]))
        n = len(full) if budget is None else budget // len(sites) + (i < budget % len(sites))
        out.extend((site, k, a) for k, a in spread(full, n, one="last"))
    return out


def noise_z(n_configs: int) -> float:
    """The z an effect needs to count as beyond noise after trying ``n_configs`` configurations.

    ``max(2, Phi^-1(1 - 0.025 / n_configs))``: a two-sided 5% level, Bonferroni-corrected.
    """
    return max(2.0, statistics.NormalDist().inv_cdf(1 - 0.025 / max(1, n_configs)))


RULES = ("margin", "choice", "either")


def levels(n_configs: int, rule: str) -> tuple[float | None, float | None]:
    """``(min_z, max_p)``: what the margin test and the choice test need after ``n_configs`` configurations
    under ``rule`` (None: that test is not used). A 5% level, Bonferroni-corrected over the configurations
    and, for ``either``, over the two tests.

    Example:
        >>> [tuple(None if v is None else round(v, 4) for v in levels(24, r)) for r in RULES]
        [(3.0781, None), (None, 0.0021), (3.279, 0.001)]
    """
    if rule not in RULES:
        raise UserError(f"unknown tune rule {rule!r}; expected one of {', '.join(RULES)}")
    n = max(1, n_configs)
    tests = 2 if rule == "either" else 1
    min_z = noise_z(n * tests) if rule != "choice" else None
    max_p = 0.05 / (n * tests) if rule != "margin" else None
    return min_z, max_p


def describe_levels(min_z: float | None, max_p: float | None) -> str:
    """The tests in use as text, e.g. ``z >= 3.28 or McNemar p <= 0.001``."""
    tests = ([] if min_z is None else [f"z >= {min_z:.2f}"]) + ([] if max_p is None else [f"McNemar p <= {max_p:.2g}"])
    return " or ".join(tests)


def passes(row: TuneRow, min_z: float | None, max_p: float | None) -> bool:
    """Whether ``row``'s effect is beyond noise by a test in use (see :func:`levels`)."""
    by_margin = min_z is not None and row.effect > 0 and row.z >= min_z
    by_choice = max_p is not None and row.fixed > row.broken and row.p_choice <= max_p
    return by_margin or by_choice


def ranked(
    rows: Sequence[TuneRow], max_damage: float = MAX_DAMAGE, min_z: float | None = 2.0, max_p: float | None = None
) -> list[TuneRow]:
    """The rows with ``ppl_ratio <= max_damage`` that pass a test in use (:func:`passes`), best first by the
    searches' one rule (:func:`~austeer.evaluation.search.ranked`): with the choice test in use (``max_p``), the
    most net flips (``fixed - broken``), then the largest effect; else the largest effect. Ties: smaller perplexity
    ratio, fewer steered activations, smaller alpha, then the order of ``rows``."""
    ok = [r for r in rows if passes(r, min_z, max_p)]
    return search.ranked(ok, max_damage, score=None if max_p is not None else lambda r: r.effect)


def choose(
    rows: Sequence[TuneRow], max_damage: float = MAX_DAMAGE, min_z: float | None = 2.0, max_p: float | None = None
) -> TuneRow | None:
    """The first of :func:`ranked`; None when no row qualifies.

    Example:
        >>> r = TuneRow("austeer", "head", 8, 5.0, -1, 8, 0.3, 0.1, 3.0, 0.9, 0.5, 0.01, 1.05, fixed=6, broken=0)
        >>> choose([r]).k, choose([r], max_damage=1.01), choose([r], min_z=4.0), choose([r], min_z=None, max_p=0.05).k
        (8, None, None, 8)
    """
    best = ranked(rows, max_damage, min_z, max_p)
    return best[0] if best else None


def explain(
    rows: Sequence[TuneRow], chosen: TuneRow | None, max_damage: float, min_z: float | None, max_p: float | None = None
) -> str:
    """One sentence: what was chosen, or why nothing was."""
    if chosen is not None:
        what = (
            f"{chosen.k} {chosen.site} AUs at alpha {chosen.alpha:g}" if chosen.method == "austeer" else chosen.config
        )
        return (
            f"chose {what}: held-out margin {chosen.effect:+.3f} nats/token "
            f"(z {chosen.z:.1f}), held-out choices {chosen.fixed} fixed / {chosen.broken} broken "
            f"(McNemar p {chosen.p_choice:.2g}), perplexity x{chosen.ppl_ratio:.3f}"
        )
    if not rows:
        return "no configuration was measured"
    beyond = [r for r in rows if passes(r, min_z, max_p)]
    if not beyond:
        tests = []
        if min_z is not None:
            tests.append(f"best z {max(r.z for r in rows):.2f}, needed {min_z:.2f}")
        if max_p is not None:
            tests.append(f"best McNemar p {min(r.p_choice for r in rows):.2g}, needed {max_p:.2g}")
        return (
            f"no configuration moves the held-out margins or choices beyond noise ({'; '.join(tests)}): "
            "the pairs do not define a behaviour these units can steer; no spec written"
        )
    least = min(beyond, key=lambda r: r.ppl_ratio)
    return (
        f"every configuration with an effect beyond noise breaks the damage bound (least damage: perplexity "
        f"x{least.ppl_ratio:.3f} > {max_damage:g}); no spec written (raise --max-damage to accept more)"
    )


# -- the methods: AUSteer's own grid over cached scores, every other registered method through its Method


def _tunable(method: Any) -> bool:
    """Built from pairs alone (not specific to a task kind); a prompted method only if it reads no activations
    (the prompt: its instruction is given, ``instruction``)."""
    return method.kind is None and (not method.prompted or not method.sites)


def tunable(name: str) -> Any:
    """The registered :class:`~austeer.methods.base.Method` ``name``, if tune can measure it (:func:`_tunable`).

    Example:
        >>> tunable("iti").name, tunable("prompt").name
        ('iti', 'prompt')
    """
    from austeer.methods import METHODS

    method = METHODS.get(name)
    if method is None or not _tunable(method):
        ok = [n for n, m in METHODS.items() if _tunable(m)]
        raise UserError(
            f"unknown tune method {name!r}; expected some of {', '.join(ok)} (a task-specific method needs a task: "
            "austeer compare)"
        )
    return method


def _with_system(pairs: Sequence[Pair], system: str | None) -> list[Pair]:
    """``pairs`` with ``system`` before each one's own system turn (a prompted method's held-out pairs)."""
    if not system:
        return list(pairs)
    return [replace(p, system=system if not p.system else f"{system}\n\n{p.system}") for p in pairs]


def austeer_grid(sites: Sequence[str], budget: int | None) -> list[dict[str, Any]]:
    """AUSteer's configurations (:func:`grid`) as configs."""
    return [{"site": s, "k": k, "alpha": a} for s, k, a in grid(sites, budget)]


def method_grid(name: str, budget: int | None) -> list[dict[str, Any]]:
    """``budget`` configurations of method ``name`` (its ``pairs_grid``, else its validation grid), spread evenly."""
    method = tunable(name)
    full = list(method.pairs_grid or method.grid)
    return spread(full, budget or len(full), one="last")


def _key(method: str, config: dict[str, Any]) -> tuple[str, str]:
    return (method, json.dumps(config, sort_keys=True))


@dataclass
class _SpecSteerer:
    """A spec folded into the weights for one measurement (AUSteer's fast path: no hooks)."""

    spec: SteerSpec

    @property
    def n_steered(self) -> int:
        return self.spec.k

    def hooks(self, model: nn.Module) -> AbstractContextManager[Any]:
        return steering(model, self.spec)


def _measured(
    method: str, config: dict[str, Any], steerer: Any, eff: Any, kls: Sequence[float], ratios: Sequence[float]
) -> TuneRow:
    """The row of one configuration: its site, size and strength as a table shows them, and what was measured."""
    strength = tunable(method).strength if method != "austeer" else "alpha"
    vectors = getattr(steerer, "vectors", {})
    site = config.get("site") or getattr(steerer, "site", None) or (*tunable(method).sites, "system")[0]
    return TuneRow(
        method, site, int(config.get("k", steerer.n_steered)), float(config.get(strength, 0.0) if strength else 0.0),
        next(iter(vectors)) if len(vectors) == 1 else -1, steerer.n_steered,
        eff.effect, eff.se, eff.z, eff.share_up, eff.margin, statistics.fmean(kls), statistics.fmean(ratios),
        eff.fixed, eff.broken, _key(method, config)[1],
    )  # fmt: skip


def _write_vectors(where: Path, method: str, steerer: Any, force: bool) -> None:
    """An additive method's chosen vectors: ``vector.<layer>`` tensors, the site and configuration as metadata."""
    tensors = {f"vector.{layer}": v.detach().float().contiguous() for layer, v in steerer.vectors.items()}
    meta = {"written_by": signature(method), "site": steerer.site, "config": json.dumps(steerer.config, default=str)}
    atomic_write_file(
        where,
        lambda tmp: save_file(tensors, str(tmp), metadata=meta),
        owned=lambda p: signed(p, method),
        force=force,
    )


# -- the run


def _load_state(out: Path | None, fresh: dict[str, Any], force: bool) -> dict[str, Any]:
    identity = ("model", "fingerprint", "pairs_sha256", "neutral_sha256", "instruction_sha256")
    return load_state(None if out is None else out / "tune.json", "tune", fresh, identity, replace=force)


def _row(obj: dict[str, Any]) -> TuneRow:
    return TuneRow(**obj)


def writes_control_vector(method: str) -> bool:
    """Whether tune writes ``method``'s choice as a llama.cpp control vector too (``<method>.gguf``): a residual
    addition (CAA) is one, exactly, where the ``gguf`` package is installed."""
    return tunable(method).adds_at == "residual" and importlib.util.find_spec("gguf") is not None


def tune_files(methods: Sequence[str]) -> dict[str, str]:
    """The files ``tune`` writes into ``out`` beside ``spec/`` and ``scores/``, and the kind each is signed as:
    ``tune.json``, the chosen vectors of each additive method (``caa.safetensors``, ...; a residual one also as a
    llama.cpp control vector, ``caa.gguf``) and the chosen system turn of the prompt (``prompt.json``)."""
    files = {"tune.json": "tune"}
    for m in methods:
        if m != "austeer":
            files[f"{m}.json" if tunable(m).prompted else f"{m}.safetensors"] = m
            if writes_control_vector(m):
                files[f"{m}.gguf"] = "control-vector"
    return files


def tune_names(methods: Sequence[str]) -> list[str]:
    """Every name tune (with the CLI's figure) writes into its ``out`` directory; anything else there is refused."""
    return [*tune_files(methods), "tune.png", "spec", "scores"]


def check_tune_out(
    out: Path, methods: Sequence[str], sites: Sequence[str], force: bool, inputs: Sequence[str | Path | None] = ()
) -> None:
    """Refuse, before any work, an ``out`` directory tune may not write into: one holding what tune does not write,
    or a file or spec of those names austeer did not write (unless ``force``), or one of the run's ``inputs``."""
    check_output_dir(out, tune_names(methods), force)
    for where in [out / "spec", *(out / "scores" / s for s in sites)]:
        check_replaceable(where, "spec", force, inputs)
    for name, kind in {**tune_files(methods), "tune.png": "figure"}.items():
        owned = _control_vector_owner() if name.endswith(".gguf") else None
        check_file_output(out / name, kind, force, inputs, owned=owned)


def _control_vector_owner() -> Callable[[Path], bool]:
    from austeer.exports.control_vector import is_austeer_control_vector

    return is_austeer_control_vector


def _write(out: Path | None, state: dict[str, Any], force: bool) -> None:
    save_state(None if out is None else out / "tune.json", state, "tune", force, allow_nan=False)


def _site_counts(
    model: nn.Module,
    fit_pairs: Sequence[Pair],
    sites: Sequence[str],
    out: Path | None,
    force: bool,
    counts_of: Callable[[list[str]], dict[str, SignCounts]],
    model_id: str,
) -> dict[str, SteerSpec]:
    """The fit split's scores of every site as a top-``max(KS)`` spec, read from ``out/scores`` when cached, else
    from ``counts_of(missing sites)``."""
    specs: dict[str, SteerSpec] = {}
    for site in sites:
        where = None if out is None else out / "scores" / site
        if where is not None and (where / "steer.json").exists():
            cached = load(where)
            cached.check_fits(fingerprint(model))
            if cached.n_pairs == len(fit_pairs):
                specs[site] = cached
    missing = [s for s in sites if s not in specs]
    if missing:
        counts = counts_of(missing)
        for site in missing:
            spec = spec_from_counts(model, {site: counts[site]}, max(KS), 1.0, len(fit_pairs), model_id)
            if out is not None:
                spec.save(out / "scores" / site, force=force)
            specs[site] = spec
    return specs


def tune(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[Pair],
    out: str | Path | None = None,
    sites: Sequence[str] = ("head", "ffn", "neuron"),
    budget: int | None = None,
    max_damage: float = MAX_DAMAGE,
    methods: Sequence[str] = ("austeer",),
    neutral: Sequence[str] = (),
    min_z: float | None = None,
    rule: str = "either",
    model_id: str = "",
    batch_size: int = 16,
    progress: bool = True,
    force: bool = False,
    panel: Panel | None = None,
    instruction: str | None = None,
) -> TuneResult:
    """Split ``pairs``, measure the grid, choose; with ``out``, write and resume (see the module docstring).

    ``budget``: at most this many configurations per method (None: the full grid). ``neutral``: extra
    neutral texts for the damage measure. ``rule``: the test an effect must pass (:data:`RULES`, see the module
    docstring); ``min_z`` overrides the margin test's z. ``force``: replace ``out/spec`` and ``out/scores/*`` even
    when austeer did not write them, and start over an earlier run of other pairs or model in ``out``. ``panel``:
    answer the capability panel (:class:`~austeer.evaluation.capability.Panel`) with each method's choice steered;
    with its bound (``panel.max_drop``), a method's choice is its best configuration (in the rule's order) whose
    pooled panel accuracy drops by at most that much, or none. The model is left as it was (gains are folded and
    unfolded around each measurement).
    """
    for site in sites:
        check_site(site)
    for m in methods:
        tunable(m)
    levels(1, rule)  # an unknown rule: one line before any work
    if budget is not None and budget < 1:
        raise UserError(f"budget must be >= 1, got {budget}")
    if any(tunable(m).prompted for m in methods) and not (instruction or "").strip():
        raise UserError("tune --method prompt needs the instruction to try: --instruction TEXT")
    if not max_damage >= 1.0:
        raise UserError(f"max_damage is a perplexity ratio and must be >= 1, got {max_damage}")
    fit_idx, held_idx = split_pairs(pairs)
    fit_pairs, held = [pairs[i] for i in fit_idx], [pairs[i] for i in held_idx]
    texts = [*NEUTRAL_TEXTS, *neutral]
    model_id = model_id or str(getattr(getattr(model, "config", None), "_name_or_path", ""))
    path = None if out is None else Path(out)
    if path is not None:
        check_tune_out(path, methods, sites, force)  # before any work
        path.mkdir(parents=True, exist_ok=True)
    fresh: dict[str, Any] = {
        "model": model_id,
        "fingerprint": fingerprint(model).get("digest", ""),
        "pairs_sha256": pairs_sha256(pairs),
        "neutral_sha256": json_sha256(list(texts)),
        "instruction_sha256": json_sha256(instruction) if instruction else None,  # the prompt's rows hold its margins
        "split": {"rule": "sha256(system, prompt), first quarter held out", "fit": fit_idx, "heldout": held_idx},
        "rows": [],
    }
    state = _load_state(path, fresh, force)
    configs = [
        (m, c) for m in methods for c in (austeer_grid(sites, budget) if m == "austeer" else method_grid(m, budget))
    ]
    need_z, max_p = levels(len(configs), rule)
    if min_z is not None and need_z is not None:
        need_z = min_z
    state["settings"] = {
        "sites": list(sites),
        "budget": budget,
        "methods": list(methods),
        "max_damage": max_damage,
        "rule": rule,
        "min_z": need_z,
        "max_p": max_p,
    }

    cache = LayerCache(model)  # the layers below the first steered one: computed once per pair (austeer.core.reuse)
    with cache.reuse():
        base = margins(model, tokenizer, held, batch_size)
        ref = neutral_reference(model, tokenizer, texts, batch_size)
    state["baseline"] = {"margin": float(base.mean()), "ppl": math.exp(ref.nll / ref.n_tokens)}
    rows = {_row(r).key: _row(r) for r in state["rows"]}
    specs: dict[str, SteerSpec] = {}
    evidence: list[Any] = []
    others = [m for m in methods if m != "austeer" and not tunable(m).prompted]  # the methods that read activations

    def fit_evidence() -> Any:  # every method but AUSteer builds from it: the fit pairs read once, for all
        from austeer.methods.base import gather

        if not evidence:
            need = {s for m in others for s in tunable(m).sites} | (set(sites) if "austeer" in methods else set())
            # each pair's shared prompt run once, as the streamed sign counts (score) and fit read them; the
            # attribution methods then run their backward passes the same way
            evidence.append(
                gather(model, tokenizer, fit_pairs, sorted(need), batch_size, progress=progress, share_prefix=True)
            )
        return evidence[0]

    def counts_of(missing: list[str]) -> dict[str, SignCounts]:
        """AUSteer's sign counts: from the pass the other methods read (its activations kept), else streamed."""
        if others:
            return {s: fit_evidence().counts(s) for s in missing}
        return score(model, tokenizer, fit_pairs, missing, batch_size, progress=progress)

    def site_specs() -> dict[str, SteerSpec]:
        if not specs:
            specs.update(_site_counts(model, fit_pairs, sites, path, force, counts_of, model_id))
        return specs

    def build(method: str, config: dict[str, Any]) -> list[Any]:
        """The steerers of one configuration (several for a method that averages seeds)."""
        if method == "austeer":
            spec = site_specs()[config["site"]].with_k(config["k"]).with_alpha(config["alpha"])
            return [_SpecSteerer(spec)]
        if tunable(method).prompted:  # the instruction, with the fit pairs as its worked examples
            from austeer.methods.base import Evidence

            prompted = Evidence({}, {}, _with_system(fit_pairs, instruction), system=instruction)
            built = tunable(method).build(model, prompted, **config)
            return built if isinstance(built, list) else [built]
        built = tunable(method).build(model, fit_evidence(), **config)
        return built if isinstance(built, list) else [built]

    todo = [c for c in configs if _key(*c) not in rows]
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="tune", unit="cfg", disable=not progress)
    try:
        for method, config in todo:
            steerers = build(method, config)
            steered, kls, ratios = [], [], []
            for s in steerers:
                with s.hooks(model), cache.reuse():
                    steered.append(
                        margins(model, tokenizer, _with_system(held, getattr(s, "system", None)), batch_size)
                    )
                    kl, ratio = damage(model, ref)
                kls.append(kl)
                ratios.append(ratio)
            eff = effect_of(torch.stack(steered).mean(0), base)
            rows[_key(method, config)] = _measured(method, config, steerers[0], eff, kls, ratios)
            state["rows"] = [asdict(r) for r in rows.values()]
            _write(path, state, force)
            bar.update(1)
    finally:
        bar.close()

    wanted = [rows[_key(*c)] for c in configs]
    panel_settings = None if panel is None else {"tasks": panel.names, "n": panel.n}
    if "capability" not in state or state["capability"].get("panel") != panel_settings:
        state["capability"] = {"panel": panel_settings, "rows": {}}
    measured: dict[str, Any] = state["capability"]["rows"]  # retention by row key, kept for a resumed run

    def retention(row: TuneRow) -> dict[str, Any]:
        key = json.dumps(row.key)
        if key not in measured:
            assert panel is not None
            steerer = build(row.method, json.loads(row.config))[0]
            got = panel.measure(partial(steerer.hooks, model), system=getattr(steerer, "system", None))
            if progress:
                tqdm.write(f"{row.method} {row.config}: {got.line()}")
            measured[key] = got.to_json()
            _write(path, state, force)
        return dict(measured[key])

    def choice(method: str) -> TuneRow | None:  # the panel answers only what a bound asks (else each choice)
        rows_m = ranked([r for r in wanted if r.method == method], max_damage, need_z, max_p)
        if panel is None or panel.max_drop is None:
            return rows_m[0] if rows_m else None
        return first_within(panel, rows_m, lambda r: Retention.from_json(retention(r)))

    chosen_by = {m: choice(m) for m in methods}
    capability = {m: retention(r) for m, r in chosen_by.items() if r is not None and panel is not None}
    best = choose([r for r in chosen_by.values() if r is not None], max_damage, need_z, max_p)
    chosen = chosen_by.get("austeer")
    message = explain([r for r in wanted if r.method == "austeer"], chosen, max_damage, need_z, max_p)
    if chosen is None and ranked([r for r in wanted if r.method == "austeer"], max_damage, need_z, max_p):
        message = (
            f"every configuration beyond noise within the damage bound drops the capability panel's accuracy by more "
            f"than {panel.max_drop if panel else 0:g}; no spec written (raise --max-capability-drop to accept more)"
        )
    if "austeer" not in methods:
        message = ""
    spec = None
    if chosen is not None:
        spec = site_specs()[chosen.site].with_k(chosen.k).with_alpha(chosen.alpha)
        spec.info = {**spec.info, "tune": asdict(chosen)}
        if path is not None:
            spec.save(path / "spec", force=force)
    elif path is not None and (path / "spec").exists():
        check_replaceable(path / "spec", "spec", force=False)  # a stale choice of an earlier run: austeer's own
        shutil.rmtree(path / "spec")
    for method, row in chosen_by.items():
        if method != "austeer" and row is None and path is not None:  # no choice now: an earlier run's goes
            for name in (n for n in tune_files([method]) if n.startswith(f"{method}.")):
                (path / name).unlink(missing_ok=True)  # austeer's own (check_tune_out before the run), or --force
        if method != "austeer" and row is not None and path is not None:
            (steerer,) = build(method, json.loads(row.config))[:1]
            if getattr(steerer, "vectors", None):
                _write_vectors(path / f"{method}.safetensors", method, steerer, force)
                if writes_control_vector(method):
                    from austeer.exports.control_vector import to_control_vector

                    if min(steerer.vectors) >= 1:
                        to_control_vector(steerer, model, path / f"{method}.gguf", force=force)
                    else:  # llama.cpp cannot steer layer 0's output: no control vector, and no earlier one
                        (path / f"{method}.gguf").unlink(missing_ok=True)
            elif tunable(method).prompted:
                text = {"system": steerer.system, "config": json.loads(row.config)}
                write_output(path / f"{method}.json", signed_json(text, method), method, force)
    state.update(
        chosen=None if chosen is None else asdict(chosen),
        chosen_by={m: None if r is None else asdict(r) for m, r in chosen_by.items()},
        best=None if best is None else best.method,
        message=message,
    )
    state["capability"]["chosen"] = capability
    _write(path, state, force)
    return TuneResult(
        wanted,
        chosen,
        message,
        need_z,
        max_damage,
        len(fit_pairs),
        len(held),
        float(base.mean()),
        spec,
        chosen_by,
        best,
        state,
        rule,
        max_p,
        capability,
    )
