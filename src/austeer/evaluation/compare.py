"""Compare steering methods fairly on one task: same pairs, same validation budget, same test items.

Every method reads the same pairs (one :func:`~austeer.methods.base.gather` pass for all of them) and
tries the same number of configurations (``budget``, spread evenly over its grid) on the validation
items. A configuration is *eligible* when it keeps the neutral-text perplexity within ``max_ppl_ratio``
of the unsteered model's (a method must not win by breaking the language model); among eligible ones
the best validation metric wins (ties, as in every search: lower perplexity, fewer steered activations, then
grid order; :func:`~austeer.evaluation.search.rank_key`). The winner is then
evaluated once on the test items. A method that builds several steerers (``random``: one per seed) is
averaged over them at every step. *Prompted* methods (the
prompting baseline, :mod:`austeer.methods.prompt`) read the same pairs with the task's instruction in
their system turn (:func:`prompted_evidence`) and are evaluated with it.

Also here: the **dose-response** (test metric against the number of steered AUs, one curve per site,
at a fixed ``alpha``) and the **frontier** (effect against perplexity increase over a strength grid,
one curve per method).

Example:
    >>> spread_grid(tuple({"i": i} for i in range(8)), 3)
    ({'i': 0}, {'i': 4}, {'i': 7})
    >>> pick([Trial({}, 8, 0.6, 1.1), Trial({}, 2, 0.6, 1.2), Trial({}, 2, 0.6, 1.1), Trial({}, 2, 0.9, 5.0)], 2.0)
    2
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from austeer.core.pairs import Pair, pairs_sha256
from austeer.core.reuse import LayerCache, reusing
from austeer.errors import UserError
from austeer.evaluation import search
from austeer.evaluation.capability import Panel, Retention, first_within
from austeer.evaluation.evaluate import Unsteered, evaluate
from austeer.evaluation.search import Measured, spread
from austeer.methods import DEFAULT_METHODS, METHODS
from austeer.methods.base import Evidence, Method, Steerer, gather
from austeer.stats import outcomes
from austeer.tasks.base import Task

#: number of AUs for the dose-response curve; ``None`` means every AU of the site
DOSES: tuple[int | None, ...] = (0, 2, 8, 32, 100, 200, 500, 1000, 5000, None)

#: what :func:`compare` runs when no methods are named: the default methods that need no task instruction
UNPROMPTED_DEFAULTS: tuple[str, ...] = tuple(m for m in DEFAULT_METHODS if not METHODS[m].prompted)


@dataclass
class Trial:
    """One configuration of a method tried on the validation items."""

    config: dict[str, Any]
    n_steered: int
    val: float  # the task's metric on val
    ppl_ratio: float  # neutral-text perplexity over the unsteered model's
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def measured(self) -> Measured:
        """What the searches' one rule reads (:class:`~austeer.evaluation.search.Row`); strength 0: one method's
        alpha is another's multiplier, so ties go to the grid order."""
        return Measured(self.val, self.ppl_ratio, self.n_steered, 0.0)


@dataclass
class DoseRow:
    """One point of the dose-response: AUSteer with the top ``k`` AUs of ``site`` at ``alpha``."""

    site: str
    k: int
    all: bool  # k is every AU of the site
    alpha: float
    metric: float
    ppl: float
    metrics: dict[str, float]
    method: str = "austeer"  # or a variant with AUSteer's AUs and grid (austeer-last, austeer-signed)
    correct: list[int] = field(default_factory=list)  # per-item outcomes, for the paired test against k = 0

    @property
    def curve(self) -> str:
        return dose_curve(self.site, self.method)


def dose_curve(site: str, method: str = "austeer") -> str:
    """The name of a dose-response curve: its site, and the variant unless it is AUSteer itself.

    Example:
        >>> dose_curve("head"), dose_curve("head", "austeer-last")
        ('head', 'head (austeer-last)')
    """
    return site if method == "austeer" else f"{site} ({method})"


@dataclass
class FrontierRow:
    """One point of a frontier: ``method`` (``"none"``: unsteered) at ``strength``."""

    method: str
    strength: float
    n_steered: int
    metric: float
    metrics: dict[str, float]
    correct: list[int] = field(default_factory=list)  # per-item outcomes, for the paired test against "none"


@dataclass
class Result:
    """The chosen configuration of one method and its test metrics."""

    method: str
    config: dict[str, Any]
    n_steered: int
    val: float
    test: dict[str, float]
    test_metric: float
    ppl_delta: float
    fold: str
    trials: list[Trial] = field(default_factory=list)
    #: per test item (in the task's test order), 1 where the item counts for the metric (mc and math tasks)
    test_correct: list[int] = field(default_factory=list)
    #: the chosen configuration on the capability panel, if measured
    #: (:meth:`austeer.evaluation.capability.Retention.to_json`)
    capability: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        """One result as :meth:`Comparison.to_json` writes it."""
        return cls(**{**data, "trials": [Trial(**t) for t in data.get("trials", [])]})


@dataclass
class Comparison:
    task: str
    metric: str
    settings: dict[str, Any]
    baseline_val: dict[str, float]
    baseline_test: dict[str, float]
    results: list[Result]
    baseline_correct: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def pairs_limit(self) -> int | None:
        """The pair prompts its pairs came from (a file older than that setting: as many as the pairs it read)."""
        return self.settings["pairs_limit"] if "pairs_limit" in self.settings else self.settings["pairs"]

    def chosen_alpha(self, default: float = 4.0) -> float:
        """The ``alpha`` AUSteer chose on val (``default`` when AUSteer was not compared)."""
        return next((float(r.config["alpha"]) for r in self.results if r.method == "austeer"), default)

    def best_steering(self) -> Result | None:
        """The steering method with the best test metric (ties: fewer steered activations); methods that steer
        no activation (calibration, a prompt alone) are left out."""
        steering = [r for r in self.results if r.n_steered > 0]
        return max(steering, key=lambda r: (r.test_metric, -r.n_steered)) if steering else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Comparison:
        """The inverse of :meth:`to_json`; other keys (the CLI adds ``model``) are ignored."""
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        return cls(**{**kept, "results": [Result.from_json(r) for r in data["results"]]})


def spread_grid(grid: Sequence[dict[str, Any]], budget: int) -> tuple[dict[str, Any], ...]:
    """``budget`` configurations spread evenly over ``grid`` (all of it when the budget is larger; see
    :func:`austeer.evaluation.search.spread`)."""
    if budget < 1:
        raise UserError(f"budget must be >= 1, got {budget}")
    return tuple(spread(grid, budget))


def ranked(trials: Sequence[Trial], max_ppl_ratio: float | None) -> list[int]:
    """Indices of the trials within the ppl bound, best first by the searches' one rule
    (:func:`~austeer.evaluation.search.ranked`: highest ``val``, then the lower ppl, fewer steered activations,
    the earlier); when none is within the bound, the one with the lowest ppl alone."""
    order = search.ranked(trials, max_ppl_ratio)
    if not order:
        return [min(range(len(trials)), key=lambda i: trials[i].ppl_ratio)]
    where = {id(t): i for i, t in enumerate(trials)}
    return [where[id(t)] for t in order]


def pick(trials: Sequence[Trial], max_ppl_ratio: float | None) -> int:
    """Index of the best trial: highest ``val`` among those within the ppl bound (else the lowest ppl)."""
    return ranked(trials, max_ppl_ratio)[0]


def evaluate_steered(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    steerers: Steerer | list[Steerer],
    mode: str = "hook",
    cache: LayerCache | None = None,
    **kw: Any,
) -> dict[str, float]:
    """:func:`~austeer.evaluation.evaluate.evaluate` under each steerer (hooks or fold) and with its system turn,
    metrics averaged over them; ``cache`` (made while the model was unsteered): the layers below the first steered
    one are replayed from it (:mod:`austeer.core.reuse`)."""
    group = steerers if isinstance(steerers, list) else [steerers]
    runs = []
    for s in group:
        ctx = s.hooks(model) if mode == "hook" else s.fold(model)
        with ctx, reusing(cache):
            runs.append(evaluate(model, tokenizer, task, system=s.system, **kw))
    return {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}


def sites_for(methods: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The sites ``methods`` read (and ``extra``): what one :func:`gather` pass must collect for them.
    Prompted methods read their own pass (:func:`prompted_evidence`) and are left out.

    Example:
        >>> sites_for(["caa", "austeer", "prompt+austeer"])
        ['head', 'residual']
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(sorted(METHODS))}")
    return sorted({s for m in methods if not METHODS[m].prompted for s in METHODS[m].sites} | set(extra))


def _needs_instruction(task: Task) -> None:
    if not task.instruction:
        raise UserError(f"task {task.name!r} declares no instruction (Task.instruction) for the prompted methods")


def prompted_evidence(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    methods: Sequence[str],
    pairs_limit: int | None = 200,
    batch_size: int = 16,
    progress: bool = True,
) -> Evidence:
    """The evidence of the prompted ``methods``: the task's pairs with :attr:`~austeer.tasks.base.Task.instruction`
    in their system turn, read at the sites those methods need (none: only the texts are kept)."""
    _needs_instruction(task)
    pairs = [replace(p, system=task.instruction) for p in task.pairs(model, tokenizer, limit=pairs_limit)]
    sites = sorted({s for m in methods if METHODS[m].prompted for s in METHODS[m].sites})
    return gather(model, tokenizer, pairs, sites, batch_size=batch_size, progress=progress)


def compare(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    methods: Sequence[str] = UNPROMPTED_DEFAULTS,
    budget: int = 8,
    pairs_limit: int | None = 200,
    val_limit: int | None = 100,
    test_limit: int | None = 300,
    max_ppl_ratio: float | None = 2.0,
    batch_size: int = 16,
    evidence: Evidence | None = None,
    progress: bool = True,
    eval_kw: dict[str, Any] | None = None,
    unsteered: Unsteered | None = None,
    done: Sequence[Result] = (),
    on_result: Callable[[Comparison], None] | None = None,
    share_prefix: bool = False,
    panel: Panel | None = None,
) -> Comparison:
    """Tune every method on ``val`` with the same ``budget``, then evaluate its choice on ``test``.

    ``unsteered``: the run's memo of unsteered evaluations and their hidden states (share one with
    :func:`dose_response` and :func:`frontier` so that the unsteered model is evaluated once per split and
    limit, and every steered evaluation replays the layers below its first steered layer from it).
    ``done``: results of an interrupted run with the same settings, kept as they are (resume);
    ``on_result`` receives the comparison so far after every method (save it to resume later).
    ``share_prefix``: read each pair's shared prompt once when gathering the evidence (see
    :func:`~austeer.methods.base.gather`; off by default so the comparisons in docs/ reproduce bit for bit).
    ``panel``: measure each method's choice on this capability panel (:class:`~austeer.evaluation.capability.Panel`,
    made without ``task``); with a bound (``panel.max_drop``) the choice is the best trial on val (within the ppl
    bound) whose pooled panel accuracy drops by at most that much, tried in order (else the one that drops least).
    """
    sites = sites_for(methods)
    for name in methods:
        kind = METHODS[name].kind
        if kind is not None and task.kind != kind:
            raise UserError(f"{name} applies to {kind!r} tasks only; {task.name} is {task.kind!r}")
    kw = {"batch_size": batch_size, **(eval_kw or {})}
    prior = {r.method: r for r in done}
    prompted = None  # read when the first method that needs it comes
    if any(METHODS[m].prompted for m in methods):
        _needs_instruction(task)  # fail before the long run
    if evidence is None:
        pairs = task.pairs(model, tokenizer, limit=pairs_limit)
        evidence = gather(
            model, tokenizer, pairs, sites, batch_size=batch_size, progress=progress, share_prefix=share_prefix
        )
    unsteered = unsteered or Unsteered(model, tokenizer, progress=progress)
    cache = unsteered.cache
    base_val = unsteered.get(task, "val", val_limit, **kw)
    base_samples: list[dict[str, Any]] = []
    base_test = unsteered.get(task, "test", test_limit, samples=base_samples, **kw)
    settings = {
        "methods": list(methods),
        "budget": budget,
        "pairs": evidence.n_pairs,
        "pairs_limit": pairs_limit,  # the pair prompts asked for: a sampled task keeps fewer pairs than prompts
        "pairs_sha256": pairs_sha256(evidence.pairs) if evidence.pairs else None,  # which pairs
        "val_limit": val_limit,
        "test_limit": test_limit,
        "max_ppl_ratio": max_ppl_ratio,
    }
    results: list[Result] = []

    def so_far() -> Comparison:
        return Comparison(task.name, task.metric, settings, base_val, base_test, results, outcomes(base_samples))

    for name in methods:
        if name in prior:
            results.append(prior[name])
            if on_result is not None:  # what is saved holds every result, kept ones included
                on_result(so_far())
            continue
        method = METHODS[name]
        if method.prompted and prompted is None:
            prompted = prompted_evidence(model, tokenizer, task, methods, pairs_limit, batch_size, progress)
        ev = prompted if method.prompted and prompted is not None else evidence
        trials: list[Trial] = []
        for config in tqdm(spread_grid(method.grid, budget), desc=f"{task.name}: {name}", disable=not progress):
            start = time.perf_counter()
            steerers = method.build(model, ev, **config)
            m = evaluate_steered(model, tokenizer, task, steerers, split="val", limit=val_limit, cache=cache, **kw)
            several = isinstance(steerers, list)  # seeds averaged: their configs differ by the seed alone
            first = steerers[0] if several else steerers
            tried = dict(config) if several else dict(first.config)
            seconds = round(time.perf_counter() - start, 1)
            trials.append(Trial(tried, first.n_steered, m[task.metric], m["ppl"] / base_val["ppl"], m, seconds))
        best, retention = trials[pick(trials, max_ppl_ratio)], None
        if panel is not None:
            best, retention = _capable(model, method, ev, trials, max_ppl_ratio, panel, progress)
        if progress:
            n = "every" if test_limit is None else f"{test_limit}"
            tqdm.write(f"{task.name}: {name} chose {best.config} on val; on test ({n} items) ...", file=sys.stderr)
        steerers = method.build(model, ev, **{k: v for k, v in best.config.items() if k in method.params})
        test_samples: list[dict[str, Any]] = []
        test = evaluate_steered(
            model, tokenizer, task, steerers, split="test", limit=test_limit, samples=test_samples, cache=cache, **kw
        )
        results.append(
            Result(
                name,
                best.config,
                best.n_steered,
                best.val,
                test,
                test[task.metric],
                test["ppl"] - base_test["ppl"],
                method.fold_note(model),
                trials,
                outcomes(test_samples),
                None if retention is None else retention.to_json(),
            )
        )
        if on_result is not None:
            on_result(so_far())
    return so_far()


def _capable(
    model: nn.Module,
    method: Method,
    evidence: Evidence,
    trials: Sequence[Trial],
    max_ppl_ratio: float | None,
    panel: Panel,
    progress: bool,
) -> tuple[Trial, Retention]:
    """The best trial (see :func:`compare`'s ``panel``) and its capability retention."""
    seen: dict[int, Retention] = {}

    def retention(i: int) -> Retention:
        if i not in seen:
            seen[i] = retention_of(model, method, evidence, trials[i].config, panel, progress)
        return seen[i]

    order = ranked(trials, max_ppl_ratio)
    best = first_within(panel, order, retention)
    if best is None:
        best = min(order, key=lambda i: retention(i).drop)  # none keeps the bound: the one that drops least
    return trials[best], retention(best)


def retention_of(
    model: nn.Module, method: Method, evidence: Evidence, config: dict[str, Any], panel: Panel, progress: bool = False
) -> Retention:
    """The capability panel answered with ``method`` built from ``evidence`` at ``config`` (a method that builds
    several steerers, one per seed: the first)."""
    built = method.build(model, evidence, **{k: v for k, v in config.items() if k in method.params})
    steerer = built[0] if isinstance(built, list) else built
    retention = panel.measure(partial(steerer.hooks, model), system=steerer.system)
    if progress:
        tqdm.write(f"{method.name} {config}: {retention.line()}", file=sys.stderr)
    return retention


def measure_capability(
    model: nn.Module,
    tokenizer: Any,
    comparison: Comparison,
    panel: Panel,
    batch_size: int = 16,
    share_prefix: bool = False,
    on_result: Callable[[Result], None] | None = None,
    progress: bool = True,
    reader: Callable[[list[Pair], list[str]], Evidence] | None = None,
) -> Comparison:
    """The capability panel under each method's chosen configuration of an earlier ``comparison`` that measured
    none (its results without ``capability`` get one, in place; ``on_result`` receives each as it is measured).
    The methods are rebuilt as :func:`compare` built them, from the task's pairs of the first
    :attr:`Comparison.pairs_limit` prompts, read at their sites by ``reader`` (default: :func:`gather`; a run
    that read them already passes its memo); where these are not the pairs the comparison read
    (``settings["pairs_sha256"]``; an older file: not as many, as when a task that samples its pairs keeps fewer
    than its prompts), :class:`~austeer.errors.UserError` before any is read: other pairs are another steer.

    Example:
        >>> import json, pathlib
        >>> done = pathlib.Path("docs/results/smollm2-135m-instruct/compare_copa.json")
        >>> done = Comparison.from_json(json.loads(done.read_text()))
        >>> panel = Panel(model, tok, exclude=("copa",), n=2)
        >>> kept = [replace(r, capability=None) for r in done.results if r.method in ("austeer", "calibration")]
        >>> few = replace(done, results=kept)  # as if their capability were not yet measured
        >>> [r.capability["n"] for r in measure_capability(model, tok, few, panel, progress=False).results]
        [4, 4]
    """
    from austeer.tasks import get_task

    task = get_task(comparison.task)
    # each pass read when its first method comes (the unprompted ones first); those that run backward passes last
    todo = [r for r in comparison.results if r.capability is None]
    todo.sort(key=lambda r: (METHODS[r.method].backward, METHODS[r.method].prompted))
    names = [r.method for r in todo]
    settings, pairs_limit = comparison.settings, comparison.pairs_limit
    pairs = task.pairs(model, tokenizer, limit=pairs_limit) if todo else []
    if todo and len(pairs) != settings["pairs"]:
        raise UserError(
            f"{task.name}: the comparison read {settings['pairs']} pairs, the first {pairs_limit} pair prompts give "
            f"{len(pairs)}: its choices cannot be rebuilt from these (its settings' pairs_limit: the prompts it asked)"
        )
    if todo and settings.get("pairs_sha256") not in (None, pairs_sha256(pairs)):  # older files: the count alone
        raise UserError(
            f"{task.name}: the first {pairs_limit} pair prompts give other pairs than the comparison read (their "
            f"sha256 differs from its settings' pairs_sha256): its choices cannot be rebuilt from these"
        )
    read: dict[bool, Evidence] = {}

    def evidence_for(prompted: bool) -> Evidence:
        if prompted not in read:
            if prompted:
                read[prompted] = prompted_evidence(model, tokenizer, task, names, pairs_limit, batch_size, progress)
            else:
                sites = sites_for(names)
                read[prompted] = (
                    reader(pairs, sites)
                    if reader is not None
                    else gather(model, tokenizer, pairs, sites, batch_size, None, progress, share_prefix)
                )
        return read[prompted]

    for r in todo:
        method = METHODS[r.method]
        r.capability = retention_of(model, method, evidence_for(method.prompted), r.config, panel, progress).to_json()
        if on_result is not None:
            on_result(r)
    return comparison


def dose_response(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    evidence: Evidence,
    sites: Sequence[str] = ("head", "ffn", "neuron"),
    doses: Sequence[int | None] = DOSES,
    alpha: float = 4.0,
    split: str = "test",
    limit: int | None = 200,
    batch_size: int = 16,
    progress: bool = True,
    eval_kw: dict[str, Any] | None = None,
    unsteered: Unsteered | None = None,
    method: str = "austeer",
    on_row: Callable[[DoseRow], None] | None = None,
    base: DoseRow | None = None,
) -> list[DoseRow]:
    """Metric of AUSteer with the top-``k`` AUs of each site, for every ``k`` in ``doses`` (``None``: all).

    ``unsteered``: the run's memo of unsteered evaluations (see :func:`compare`); ``method``: AUSteer or a
    variant built the same way from ``(site, k, alpha)`` (``austeer-last``: the gains at the answer position
    and each generated token only; ``austeer-signed``: sign-aware gains); ``on_row``: called with each point as
    soon as it is measured (a long run saves as it goes); ``base``: the unsteered point (k = 0) of an earlier run on
    the same items, its metrics and per-item outcomes used instead of evaluating the unsteered model again."""
    kw = {"batch_size": batch_size, "split": split, "limit": limit, **(eval_kw or {})}
    unsteered = unsteered or Unsteered(model, tokenizer, progress=progress)
    cache = unsteered.cache
    if base is None:
        base_samples: list[dict[str, Any]] = []
        base_metrics, base_correct = unsteered.get(task, samples=base_samples, **kw), outcomes(base_samples)
    else:
        base_metrics, base_correct = base.metrics, base.correct
    rows: list[DoseRow] = []
    for site in sites:
        total = int(evidence.pos[site].shape[1] * evidence.pos[site].shape[2])
        for dose in tqdm(doses, desc=f"{task.name}: dose-response {site}", disable=not progress):
            k = total if dose is None else min(dose, total)
            if k == 0:
                m, correct = base_metrics, base_correct
            else:
                steerer = METHODS[method].build(model, evidence, site=site, k=k, alpha=alpha)
                samples: list[dict[str, Any]] = []
                m = evaluate_steered(model, tokenizer, task, steerer, cache=cache, samples=samples, **kw)
                correct = outcomes(samples)
            rows.append(DoseRow(site, k, dose is None, alpha, m[task.metric], m["ppl"], m, method, correct))
            if on_row is not None:
                on_row(rows[-1])
    return rows


def frontier(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    evidence: Evidence,
    configs: dict[str, dict[str, Any]],
    strengths: dict[str, Sequence[float]],
    split: str = "test",
    limit: int | None = 60,
    batch_size: int = 16,
    progress: bool = True,
    eval_kw: dict[str, Any] | None = None,
    unsteered: Unsteered | None = None,
) -> list[FrontierRow]:
    """Effect and side effects of each method (fixed ``configs[m]``) over its strength grid ``strengths[m]``
    (values of the method's :attr:`~austeer.methods.base.Method.strength` key).

    ``unsteered``: the run's memo of unsteered evaluations (see :func:`compare`)."""
    weak = [m for m in configs if METHODS[m].strength is None]
    if weak:
        raise UserError(f"no strength to sweep for {', '.join(weak)} (Method.strength is None)")
    kw = {"batch_size": batch_size, "split": split, "limit": limit, **(eval_kw or {})}
    unsteered = unsteered or Unsteered(model, tokenizer, progress=progress)
    cache = unsteered.cache
    base_samples: list[dict[str, Any]] = []
    base = unsteered.get(task, samples=base_samples, **kw)
    rows = [FrontierRow("none", 0.0, 0, base[task.metric], base, outcomes(base_samples))]
    for name, config in configs.items():
        for s in tqdm(strengths[name], desc=f"{task.name}: frontier {name}", disable=not progress):
            steerers = METHODS[name].build(model, evidence, **{**config, str(METHODS[name].strength): s})
            samples: list[dict[str, Any]] = []
            m = evaluate_steered(model, tokenizer, task, steerers, cache=cache, samples=samples, **kw)
            first = steerers[0] if isinstance(steerers, list) else steerers
            rows.append(FrontierRow(name, s, first.n_steered, m[task.metric], m, outcomes(samples)))
    return rows
