"""The inspection report: what the selected atomic units are, where they live and what they do.

:func:`build_report` writes one self-contained HTML file (images embedded, opens offline) plus the same
figures as PNG files in ``<name>_files/`` next to it:

- a heatmap of ``|beta|`` per layer and dimension of every scored site (``head`` grouped by head), the
  selected AUs circled; and where the selected AUs live (per layer, per layer x head);
- for the top AUs, the tokens each promotes and suppresses (logit lens of its weight slice, see
  :mod:`austeer.report.lens`) next to those of its whole block, and the within-block similarity;
- with a sweep: the validation metric against k and against alpha, per site;
- with prompts: unsteered and steered generations side by side and the next-token distribution shift.

Needs matplotlib (``pip install austeer[report]``).

Example:
    >>> import tempfile, pathlib
    >>> import austeer
    >>> from austeer.report import build_report
    >>> pairs = austeer.read_pairs(pathlib.Path(austeer.__file__).parent / "data/pairs/sentiment.jsonl")[:4]
    >>> spec = austeer.fit(model, tok, pairs, site="head", k=4, alpha=5.0, progress=False)
    >>> out = build_report(model, tok, spec, pathlib.Path(tempfile.mkdtemp()) / "r.html", n_units=2, progress=False)
    >>> sorted(p.name for p in out.with_name("r_files").glob("*.png"))[:2]
    ['beta_head.png', 'heterogeneity_1.png']
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from austeer.core.sites import decoder_layers, head_dim
from austeer.core.spec import SteerSpec
from austeer.io import atomic_write_dir, check_file_output, check_replaceable, write_output
from austeer.report import plots
from austeer.report.html import Image, Report, Section, figure, lens_table, prompts_html, render, table
from austeer.report.lens import UnitLens, block_heterogeneity, unit_lens
from austeer.report.shift import PromptShift, prompt_shifts
from austeer.report.sweep import Sweep, read_sweep
from austeer.run.generate import Mode

__all__ = ["build_report", "assemble"]

LENS_NOTE = (
    "Logit lens: each AU's weight slice (column <i>i</i> of W<sub>O</sub> for <code>head</code>, column <i>i</i> "
    "of W<sub>down</sub> for <code>neuron</code>, the residual coordinate e<sub>i</sub> for <code>ffn</code> and "
    "<code>residual</code>) is passed alone through the model's final norm (for RMSNorm: times its weight, up to "
    "a positive scale) and the unembedding. The real model adds it to the rest of the residual stream, so only "
    "the ranking of tokens is meaningful, not absolute logits. 'Promotes' is per unit of positive activation: a "
    "negative activation reverses the lists. The block direction is the mean-momentum-weighted sum of the block's "
    "slices (what a block-level mean-difference shift writes); cos(AU, block) compares the two logit vectors "
    "(centred), with the AU oriented by the sign of its own mean momentum; 'shared top tokens' counts the tokens "
    "that appear in both the (oriented) AU's and the block's promoted lists."
)


def _meta(model: nn.Module, spec: SteerSpec, spec_path: str | None, extra: dict[str, str]) -> list[tuple[str, str]]:
    from austeer import __version__

    fp = spec.fingerprint or {}
    pairs_file = spec.info.get("pairs_file") or (f"pairs of task {spec.info['task']}" if spec.info.get("task") else "")
    rows = [
        (
            "model",
            f"{spec.model_id or getattr(model.config, '_name_or_path', '?')} "
            f"({fp.get('family', '?')}, {fp.get('n_layers', '?')} layers)",
        ),
        ("data", f"{pairs_file or 'not recorded in the spec'} ({spec.n_pairs} pairs)"),
        (
            "spec",
            f"{spec_path or '(in memory)'}: site(s) {', '.join(spec.sites)}, k = {spec.k}, alpha = {spec.alpha:g}",
        ),
        ("library", f"austeer {__version__}"),
        ("generated", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    return rows + list(extra.items())


def _scores_section(model: nn.Module, spec: SteerSpec) -> Section:
    n_layers = len(decoder_layers(model))
    hd = head_dim(model)
    n_heads = int(getattr(model.config, "num_attention_heads", 0)) or None
    sec = Section("Where the discriminative AUs are")
    stats = []
    for site, counts in spec.scores.items():
        beta = counts.beta()
        stats.append(
            f"site <code>{escape(site)}</code>: {beta.numel():,} AUs scored on {counts.n} pairs, "
            f"{int((beta.abs() >= 1.0).sum()):,} with |beta| = 1 (every pair agrees), "
            f"{int((beta.abs() >= 0.9).sum()):,} with |beta| &ge; 0.9"
        )
        sec.images.append(
            Image(
                f"beta_{site}.png",
                plots.beta_heatmap(beta, spec.units, site, hd if site == "head" else None),
                f"|beta| of every {site} AU (rows: layers, columns: dimensions); red circles: the "
                f"{sum(u.site == site for u in spec.units)} selected {site} AUs.",
            )
        )
    for site in spec.sites:
        sec.images.append(
            Image(
                f"location_{site}.png",
                plots.location_plot(spec.units, site, n_layers, hd if site == "head" else None, n_heads),
                f"Where the selected {site} AUs live.",
            )
        )
    sec.intro = "; ".join(stats) + "." if stats else "This spec has no stored scores: only the selection is shown."
    return sec


def _lens_section(
    model: nn.Module, tokenizer: Any, spec: SteerSpec, n_units: int, n_tokens: int, progress: bool
) -> tuple[Section, list[UnitLens]]:
    units = spec.units[:n_units]
    lenses = [
        unit_lens(model, tokenizer, u, spec.scores.get(u.site), n_tokens)
        for u in tqdm(units, desc="logit lens of top AUs", unit="AU", disable=not progress)
    ]
    sec = Section(
        "What the top AUs write",
        intro=(
            f"The top {len(units)} selected AUs (by |beta|, ties by standardized mean momentum), the gain "
            f"1 + alpha&middot;beta they get, and the tokens their weight slices push up and down through the "
            "unembedding, next to the same for the whole block (head or layer) they sit in."
        ),
        body=lens_table(lenses, spec.alpha),
        images_first=False,
    )
    seen: list[tuple[str, int, str]] = []
    for lens in lenses:
        key = (lens.unit.site, lens.unit.layer, lens.block)
        if key in seen or len(seen) >= 2:
            continue
        seen.append(key)
        sims = block_heterogeneity(model, lens.unit)
        off = sims[~torch.eye(sims.shape[0], dtype=torch.bool)]
        start = lens.unit.index - (lens.unit.index % sims.shape[0]) if lens.unit.site == "head" else 0
        marked = [
            u.index - start for u in spec.units if (u.site, u.layer) == key[:2] and 0 <= u.index - start < sims.shape[0]
        ]
        sec.images.append(
            Image(
                f"heterogeneity_{len(seen)}.png",
                plots.heterogeneity_plot(sims, lens.block, marked),
                f"{lens.block}: cosine similarity between the lens logit vectors of its dimensions "
                f"(mean |cos| off the diagonal {float(off.abs().mean()):.2f})"
                + ("; lines: selected AUs." if sims.shape[0] <= 128 else "."),
            )
        )
    return sec, lenses


def _sweep_section(sweep: Sweep) -> Section:
    sec = Section(f"Sweep: validation {sweep.metric} against k and alpha")
    for site, png in plots.sweep_plots(sweep.rows, sweep.metric, sweep.baseline_value).items():
        sec.images.append(Image(f"sweep_{site}.png", png, f"site {site}: dashed line = unsteered."))
    bits = [f"{len(sweep.rows)} grid points from <code>{escape(str(sweep.path))}</code>"]
    if sweep.task:
        bits.append(f"task {escape(sweep.task)}")
    if sweep.best:
        bits.append("best " + escape(", ".join(f"{k} = {v}" for k, v in sweep.best.items())))
    sec.intro = "; ".join(bits) + "."
    sec.body = _sweep_table(sweep)
    return sec


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else escape(str(v))


def _sweep_table(sweep: Sweep) -> str:
    """Metric | validation unsteered | test unsteered | test steered (the ``austeer sweep`` layout)."""
    test = sweep.test
    t_un: dict[str, Any] = test["unsteered"] if isinstance(test.get("unsteered"), dict) else {}
    t_st: dict[str, Any] = test["steered"] if isinstance(test.get("steered"), dict) else {}
    flat = {k: v for k, v in test.items() if not isinstance(v, dict)}
    names = [m for m in dict.fromkeys([*sweep.baseline, *t_un, *t_st]) if not isinstance(sweep.baseline.get(m), dict)]
    rows = [[escape(m), _num(sweep.baseline.get(m, "")), _num(t_un.get(m, "")), _num(t_st.get(m, ""))] for m in names]
    if not rows:
        return ""
    caption = ""
    if flat:
        caption = "<p>Test run of the best setting: " + escape(_fmt(flat)) + ".</p>"
    return caption + table(["metric", "validation, unsteered", "test, unsteered", "test, steered"], rows, {1, 2, 3})


def _fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in d.items())


def _prompts_section(shifts: list[PromptShift], spec: SteerSpec, mode: str) -> Section:
    images = []
    figs = {}
    for i, s in enumerate(shifts):
        rises = [(t.text, t.p_before, t.p_after) for t in s.rises[:6]]
        falls = [(t.text, t.p_before, t.p_after) for t in s.falls[:6]]
        img = Image(f"shift_{i + 1}.png", plots.shift_plot(rises, falls, f"prompt {i + 1}: next-token change"))
        images.append(img)
        figs[i] = figure(img)
    sec = Section(
        "Steering you can watch",
        intro=(
            f"Greedy generations without and with the spec ({spec.k} AUs, alpha {spec.alpha:g}, {escape(mode)} "
            "mode), and how the distribution of the first generated token moves."
        ),
        body=prompts_html(shifts, figs),
    )
    sec.inline = images  # placed next to each prompt
    return sec


def assemble(
    model: nn.Module,
    tokenizer: Any,
    spec: SteerSpec,
    spec_path: str | None = None,
    sweep: Sweep | None = None,
    prompts: Sequence[str] = (),
    n_units: int = 8,
    n_tokens: int = 8,
    mode: Mode = "hook",
    max_new_tokens: int = 48,
    progress: bool = True,
) -> tuple[Report, list[Image]]:
    """Compute every part of the report; returns it and all its images (for the PNG files)."""
    sections = [_scores_section(model, spec)]
    lens_sec, _ = _lens_section(model, tokenizer, spec, n_units, n_tokens, progress)
    sections.append(lens_sec)
    if sweep is not None:
        sections.append(_sweep_section(sweep))
    if prompts:
        shifts = prompt_shifts(model, tokenizer, spec, prompts, mode, max_new_tokens, n_tokens, progress)
        sections.append(_prompts_section(shifts, spec, mode))
    report = Report(
        title=f"AUSteer report: {spec.k} atomic units, alpha {spec.alpha:g}",
        meta=_meta(model, spec, spec_path, {"sweep": str(sweep.path)} if sweep else {}),
        sections=sections,
        notes=[LENS_NOTE],
    )
    return report, report.images()


def build_report(
    model: nn.Module,
    tokenizer: Any,
    spec: SteerSpec,
    out: str | Path,
    spec_path: str | None = None,
    sweep: str | Path | Sweep | None = None,
    prompts: Sequence[str] = (),
    n_units: int = 8,
    n_tokens: int = 8,
    mode: Mode = "hook",
    max_new_tokens: int = 48,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write the HTML report to ``out`` and its figures to ``<stem>_files/*.png``; returns ``out``.

    An existing report and figure folder are replaced only when austeer wrote them, unless ``force``
    (:func:`austeer.io.check_file_output`, :func:`austeer.io.check_replaceable`, checked before any work);
    the spec and sweep read are never written over.
    """
    out = Path(out)
    inputs = [spec_path, sweep if isinstance(sweep, str | Path) else None]
    check_file_output(out, "report", force, inputs)
    check_replaceable(figures_dir(out), "figures", force, inputs)
    sw = read_sweep(sweep) if isinstance(sweep, str | Path) else sweep
    report, images = assemble(
        model, tokenizer, spec, spec_path, sw, prompts, n_units, n_tokens, mode, max_new_tokens, progress
    )

    def write(tmp: Path) -> None:
        for img in images:
            (tmp / img.name).write_bytes(img.png)

    atomic_write_dir(figures_dir(out), write, kind="figures", force=force)
    write_output(out, render(report), "report", force, inputs)
    return out


def figures_dir(out: str | Path) -> Path:
    """The folder of the figures of the report ``out``: ``<stem>_files`` beside it.

    Example:
        >>> figures_dir("runs/report.html").as_posix()
        'runs/report_files'
    """
    out = Path(out)
    return out.with_name(f"{out.stem}_files")
