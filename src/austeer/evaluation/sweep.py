"""Grid search of (site, k, alpha) on the validation split, then the best configuration on test.

The AUs of each site are scored **once** on the task's pairs (the fitted spec, with its full sign counts,
is cached in ``DIR/scores/<site>/``); every ``(k, alpha)`` is then a :meth:`SteerSpec.with_k` /
:meth:`SteerSpec.with_alpha` of it, folded into the weights for the evaluation and unfolded after it
(``residual``, which cannot be folded, is hooked). No activation is recomputed: the AUs are read once,
and the layers below a configuration's first steered layer are replayed from the unsteered pass
(:mod:`austeer.core.reuse`).

Output directory:

- ``sweep.json``: ``{"task", "model", "metric", "settings", "baseline", "rows", "best", "test"}`` (and
  ``capability`` with a panel: see :func:`sweep`); every
  row ``{"site", "k", "alpha", "n_steered", "metric", "ppl_delta", "metrics"}``. Rewritten atomically after
  every finished row, so an interrupted sweep resumes where it stopped (done rows are skipped);
- ``sweep.csv``: ``site,k,alpha,n_steered,metric,ppl_delta``;
- ``best/``: the best spec (:meth:`SteerSpec.save`), with the sweep's choice in its ``info``.

The best row has the highest validation metric; ties go to the smaller perplexity increase, then the
smaller ``k``, then the smaller ``alpha``. ``n_steered`` is the number of steered AUs (activations
rescaled at every token position).

Example:
    >>> from austeer.evaluation.sweep import SweepRow, best_row
    >>> rows = [SweepRow("head", 8, 5.0, 8, metric=0.6, ppl_delta=0.3), SweepRow("head", 2, 5.0, 2, 0.6, 0.1)]
    >>> best_row(rows).k
    2
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from austeer.core.fit import fit
from austeer.core.sites import site_def
from austeer.core.spec import SteerSpec, fingerprint, load
from austeer.core.steer import apply, folded
from austeer.errors import UserError
from austeer.evaluation.capability import Panel, Retention, first_within
from austeer.evaluation.evaluate import Unsteered, evaluate
from austeer.evaluation.search import Measured, load_state, ranked, save_state
from austeer.io import check_file_output, check_output_dir, check_replaceable, write_output
from austeer.tasks.base import Task

CSV_COLUMNS = ("site", "k", "alpha", "n_steered", "metric", "ppl_delta")


def _csv_owned(path: Path) -> bool:
    """A CSV cannot carry a signature: ``sweep.csv`` is austeer's when its header is austeer's."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().rstrip("\n") == ",".join(CSV_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


#: the files ``sweep --out`` writes, with the test of a file austeer wrote (None: its signature)
SWEEP_FILES: dict[str, Callable[[Path], bool] | None] = {"sweep.json": None, "sweep.csv": _csv_owned}
#: every name a sweep writes into its ``out`` directory (anything else there is refused, see :func:`check_output_dir`)
SWEEP_NAMES = [*SWEEP_FILES, "best", "scores"]


@dataclass
class SweepRow:
    """One configuration of the sweep on the validation items (a row of ``sweep.json``)."""

    site: str
    k: int
    alpha: float
    n_steered: int
    metric: float  # the task's metric on val
    ppl_delta: float  # neutral-text perplexity minus the unsteered model's
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, float]:
        return _key(self.site, self.k, self.alpha)

    @property
    def measured(self) -> Measured:
        """What the searches' one rule reads (:class:`~austeer.evaluation.search.Row`)."""
        return Measured(self.metric, self.ppl_delta, self.n_steered, self.alpha)


def ranked_rows(rows: Sequence[SweepRow]) -> list[SweepRow]:
    """Best first by the searches' one rule (:func:`~austeer.evaluation.search.ranked`): highest metric; ties:
    smaller ppl increase, fewer steered AUs, smaller alpha, then the order of ``rows``."""
    return ranked(rows)


def best_row(rows: Sequence[SweepRow]) -> SweepRow:
    """The first of :func:`ranked_rows`."""
    if not rows:
        raise UserError("no sweep rows to choose from")
    return ranked_rows(rows)[0]


def _key(site: str, k: int, alpha: float) -> tuple[str, int, float]:
    return (site, int(k), float(alpha))


def steering(model: nn.Module, spec: SteerSpec) -> AbstractContextManager[Any]:
    """Fold when every site of ``spec`` can be folded and its gains act at every position, else hook."""
    unfoldable = any(site_def(model, site).fold is None for site in {u.site for u in spec.units})
    hook_only = unfoldable or spec.positions != "all"
    return apply(model, spec) if hook_only else folded(model, spec)


def _write_state(out: Path, state: dict[str, Any], force: bool) -> None:
    save_state(out / "sweep.json", state, "sweep", force)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in state["rows"]:
        w.writerow([r["site"], r["k"], r["alpha"], r["n_steered"], f"{r['metric']:.6g}", f"{r['ppl_delta']:.6g}"])
    write_output(out / "sweep.csv", buf.getvalue(), "sweep", force, owned=_csv_owned)


def _renamed(state: dict[str, Any]) -> None:
    """``pair_limit``: the name before austeer 2026-12-06 (one name per concept now)."""
    settings = state.get("settings", {})
    if "pair_limit" in settings:
        settings["pairs_limit"] = settings.pop("pair_limit")


def _load_state(out: Path, fresh: dict[str, Any], force: bool) -> dict[str, Any]:
    identity = ("task", "model", "settings")
    return load_state(out / "sweep.json", "sweep", fresh, identity, migrate=_renamed, replace=force)


def _capable(
    state: dict[str, Any],
    rows: Sequence[SweepRow],
    panel: Panel,
    steer: Callable[[SweepRow], AbstractContextManager[Any]],
    save: Callable[[], None],
) -> SweepRow:
    """The choice under the capability panel (see :func:`sweep`); every measurement is kept in
    ``state["capability"]`` (``panel``, ``rows`` by key, ``chosen``) for a resumed run."""
    settings = {"tasks": panel.names, "n": panel.n}
    if state.get("capability", {}).get("panel") != settings:
        state["capability"] = {"panel": settings, "rows": {}}
    measured: dict[str, Any] = state["capability"]["rows"]

    def retention(row: SweepRow) -> dict[str, Any]:
        key = json.dumps(row.key)
        if key not in measured:
            measured[key] = panel.measure(lambda: steer(row)).to_json()
            save()
        return dict(measured[key])

    order = ranked_rows(rows)
    best = first_within(panel, order, lambda r: Retention.from_json(retention(r)))
    if best is None:
        best = min(order, key=lambda r: float(retention(r)["drop"]))  # none keeps the bound: the one that drops least
    state["capability"]["chosen"] = retention(best)
    return best


def _site_spec(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    site: str,
    k_max: int,
    out: Path,
    pairs: Any,
    model_id: str,
    batch: int,
    force: bool = False,
) -> SteerSpec:
    where = out / "scores" / site
    if (where / "steer.json").exists():
        spec = load(where)
        spec.check_fits(fingerprint(model))
        return spec
    start = time.perf_counter()
    spec = fit(model, tokenizer, pairs(), site=site, k=k_max, alpha=1.0, batch_size=batch, model_id=model_id)
    spec.info.update(task=task.name, seconds=round(time.perf_counter() - start, 2))
    spec.save(where, force=force)
    return spec


def sweep(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    out: str | Path,
    sites: Sequence[str] = ("head", "ffn"),
    ks: Sequence[int] = (2, 8, 32, 100),
    alphas: Sequence[float] = (1.0, 5.0, 15.0, 50.0),
    model_id: str = "",
    pairs_limit: int | None = None,
    val_limit: int | None = None,
    test_limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    ref_model: nn.Module | None = None,
    run_test: bool = True,
    progress: bool = True,
    force: bool = False,
    panel: Panel | None = None,
) -> dict[str, Any]:
    """Run (or resume) the sweep into ``out`` and return the ``sweep.json`` content.

    The spec folders ``scores/<site>`` and ``best`` replace only austeer's own specs, unless ``force``; an earlier
    sweep in ``out`` resumes when its task, model and settings are these, else is refused (``force``: started over).
    ``panel``: answer the capability panel (:class:`~austeer.evaluation.capability.Panel`, made without ``task``)
    with the choice steered (``sweep.json``'s ``capability``); with a bound (``panel.max_drop``) the choice is the best
    row on val (in :func:`ranked_rows` order) whose pooled panel accuracy drops by at most that much, else the one
    that drops least (as :func:`austeer.evaluation.compare.compare`).
    """
    if not sites or not ks or not alphas:
        raise UserError("the sweep grid needs at least one site, one k and one alpha")
    if min(ks) < 1:
        raise UserError(f"every k must be >= 1, got {list(ks)}")
    out = Path(out)
    check_output_dir(out, SWEEP_NAMES, force)  # before any work
    for where in [out / "best", *(out / "scores" / s for s in sites)]:
        check_replaceable(where, "spec", force)
    for name, owned in SWEEP_FILES.items():
        check_file_output(out / name, "sweep", force, owned=owned)
    out.mkdir(parents=True, exist_ok=True)
    model_id = model_id or str(getattr(model.config, "_name_or_path", ""))
    settings = {
        "pairs_limit": pairs_limit,
        "val_limit": val_limit,
        "test_limit": test_limit,
        "max_new_tokens": max_new_tokens or task.max_new_tokens,
    }
    fresh = {"task": task.name, "model": model_id, "metric": task.metric, "settings": settings, "rows": []}
    state = _load_state(out, fresh, force)
    grid = [(s, int(k), float(a)) for s in sites for k in ks for a in alphas]
    state["grid"] = {"sites": list(sites), "k": [int(k) for k in ks], "alpha": [float(a) for a in alphas]}

    def run_eval(split: str, limit: int | None) -> dict[str, float]:
        return evaluate(
            model, tokenizer, task, split, limit, batch_size, ref_model=ref_model, max_new_tokens=max_new_tokens
        )

    unsteered = Unsteered(
        model, tokenizer, progress=progress
    )  # the unsteered val and test evaluations share one perplexity
    cache = unsteered.cache  # the layers below the first steered one: computed once per item (austeer.core.reuse)

    def run_unsteered(split: str, limit: int | None) -> dict[str, float]:
        return unsteered.get(
            task, split, limit, batch_size=batch_size, ref_model=ref_model, max_new_tokens=max_new_tokens
        )

    if "baseline" not in state:
        state["baseline"] = run_unsteered("val", val_limit)
        _write_state(out, state, force)
    base = state["baseline"]
    unsteered.ppl = base["ppl"]

    pair_cache: list[Any] = []

    def pairs() -> Any:
        if not pair_cache:
            pair_cache.append(task.pairs(model, tokenizer, limit=pairs_limit))
            state["n_pairs"] = len(pair_cache[0])
        return pair_cache[0]

    done = {SweepRow(**r).key for r in state["rows"]}
    todo = [g for g in grid if _key(*g) not in done]
    specs: dict[str, SteerSpec] = {}
    bar = tqdm(
        total=len(grid), initial=len(grid) - len(todo), desc=f"sweep {task.name}", unit="cfg", disable=not progress
    )
    try:
        for site, k, alpha in todo:
            if site not in specs:
                specs[site] = _site_spec(model, tokenizer, task, site, max(ks), out, pairs, model_id, batch_size, force)
            spec = specs[site].with_k(k).with_alpha(alpha)
            with steering(model, spec), cache.reuse():
                metrics = run_eval("val", val_limit)
            row = SweepRow(site, k, alpha, spec.k, metrics[task.metric], metrics["ppl"] - base["ppl"], metrics)
            state["rows"].append(asdict(row))
            _write_state(out, state, force)
            bar.update(1)
    finally:
        bar.close()

    def spec_of(row: SweepRow) -> SteerSpec:
        if row.site not in specs:
            specs[row.site] = _site_spec(
                model, tokenizer, task, row.site, max(ks), out, pairs, model_id, batch_size, force
            )
        return specs[row.site].with_k(row.k).with_alpha(row.alpha)

    wanted = {_key(*g) for g in grid}
    rows = [row for row in (SweepRow(**r) for r in state["rows"]) if row.key in wanted]
    best = best_row(rows)
    if panel is not None:
        best = _capable(
            state, rows, panel, lambda row: steering(model, spec_of(row)),
            lambda: _write_state(out, state, force),
        )  # fmt: skip
    else:
        state.pop("capability", None)
    choice = {"site": best.site, "k": best.k, "alpha": best.alpha}
    best_spec = spec_of(best)
    best_spec.info.update(task=task.name, sweep=choice, val_metric=best.metric)
    if state.get("best") != choice or not (out / "best" / "steer.json").exists():
        best_spec.save(out / "best", force=force)
        state["best"] = choice
        state.pop("test", None)
        _write_state(out, state, force)
    if run_test and "test" not in state:
        base_test = run_unsteered("test", test_limit)
        with steering(model, best_spec), cache.reuse():
            steered = run_eval("test", test_limit)
        state["test"] = {"unsteered": base_test, "steered": steered, **choice, "n_steered": best_spec.k}
        _write_state(out, state, force)
    return state
