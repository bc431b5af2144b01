"""Matplotlib figures of a steering spec, drawn on their own Agg canvas (no pyplot, no backend switch:
matplotlib's global state is left alone); each returns PNG bytes.

Example:
    >>> import torch
    >>> from austeer.core.momentum import Unit
    >>> from austeer.report.plots import beta_heatmap
    >>> png = beta_heatmap(torch.rand(4, 16) - 0.5, [Unit("head", 1, 3, 1.0)], "head", head_dim=8)
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from austeer.core.momentum import Unit
from austeer.extras import REPORT, require
from austeer.io import signature

try:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError:
    require(*REPORT, "the report's figures")  # not installed: the pip install line
    raise

DPI = 110


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """Like ``pyplot.subplots``, without pyplot: a figure on its own Agg canvas, never registered or shown."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def to_png(fig: Figure, dpi: int = DPI, tight: bool = True) -> bytes:
    """Render ``fig`` to PNG bytes, signed as austeer's (:func:`austeer.io.signed`) figure."""
    buf = io.BytesIO()
    kw: dict[str, Any] = {"bbox_inches": "tight"} if tight else {}
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": signature("figure")}, **kw)
    return buf.getvalue()


def beta_heatmap(
    beta: torch.Tensor, units: Sequence[Unit], site: str, head_dim: int | None = None, title: str = ""
) -> bytes:
    """|beta| for every layer (rows) and dimension (columns) of one site; selected AUs circled.

    For the ``head`` site, columns are grouped by head (dimension ``i`` is in head ``i // head_dim``),
    with a separator and a label per head.
    """
    b = beta.abs().float().numpy()
    n_layers, width = b.shape
    fig, ax = subplots(figsize=(12, max(3.0, 0.16 * n_layers + 1.2)))
    # the scale tops out at the largest |beta| (rounded up to 0.05), so weakly consistent fits still show contrast
    vmax = min(1.0, max(0.55, float(np.ceil(b.max() * 20 - 1e-9) / 20))) if b.size else 1.0
    im = ax.imshow(b, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.5, vmax=vmax, origin="lower")
    sel = [u for u in units if u.site == site]
    if sel:
        ax.scatter(
            [u.index for u in sel],
            [u.layer for u in sel],
            s=46,
            facecolors="none",
            edgecolors="#ff2d55",
            linewidths=1.4,
            label=f"selected ({len(sel)})",
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.09, 1.0), fontsize=8, frameon=False)
    if site == "head" and head_dim:
        n_heads = width // head_dim
        for h in range(1, n_heads):
            ax.axvline(h * head_dim - 0.5, color="white", linewidth=0.6, alpha=0.8)
        ax.set_xticks([h * head_dim + head_dim / 2 - 0.5 for h in range(n_heads)])
        ax.set_xticklabels([f"head {h}" for h in range(n_heads)], fontsize=8)
        ax.set_xlabel(f"dimension, grouped by head ({head_dim} dims each)")
    else:
        ax.set_xlabel("dimension")
    ax.set_ylabel("layer")
    ax.set_title(
        title
        or f"|beta| of every AU of site '{site}' (0.5 = no consistency, 1 = every pair agrees; scale up to {vmax:g})"
    )
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, label="|beta|")
    return to_png(fig)


def location_plot(
    units: Sequence[Unit], site: str, n_layers: int, head_dim: int | None = None, n_heads: int | None = None
) -> bytes:
    """Where the selected AUs of ``site`` live: count per layer, and for ``head`` a layer x head grid of counts.

    Example:
        >>> from austeer.core.momentum import Unit
        >>> png = location_plot([Unit("head", 2, 9, 1.0), Unit("head", 2, 1, -1.0)], "head", 4, head_dim=8, n_heads=2)
        >>> len(png) > 1000
        True
    """
    sel = [u for u in units if u.site == site]
    per_layer = np.bincount([u.layer for u in sel], minlength=n_layers)[:n_layers]
    grid = site == "head" and head_dim and n_heads
    fig, axes = subplots(
        1, 2 if grid else 1, figsize=(12, 3.8), squeeze=False, gridspec_kw={"width_ratios": [1.6, 1]} if grid else None
    )
    ax = axes[0][0]
    ax.bar(np.arange(n_layers), per_layer, color="#3b6fb6")
    ax.set_xlabel("layer")
    ax.set_ylabel("selected AUs")
    ax.set_xlim(-0.6, n_layers - 0.4)
    ax.set_title(f"selected '{site}' AUs per layer ({len(sel)} in all)")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if grid and head_dim and n_heads:
        counts = np.zeros((n_layers, n_heads), dtype=int)
        for u in sel:
            counts[u.layer, u.index // head_dim] += 1
        ax2 = axes[0][1]
        ax2.imshow(counts, aspect="auto", origin="lower", cmap="Blues", interpolation="nearest")
        for layer, h in zip(*np.nonzero(counts)):
            ax2.text(
                h,
                layer,
                str(counts[layer, h]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if counts[layer, h] > counts.max() / 2 else "black",
            )
        ax2.set_xlabel("head")
        ax2.set_ylabel("layer")
        ax2.set_xticks(np.arange(n_heads))
        ax2.set_title("selected AUs per (layer, head)")
    fig.tight_layout()
    return to_png(fig)


def heterogeneity_plot(sims: torch.Tensor, label: str, marked: Sequence[int] = ()) -> bytes:
    """Cosine similarity of the lens logit vectors of every pair of dimensions in one block.

    Blocks of up to 128 dimensions (a head) are drawn as the full matrix; larger ones (a whole layer) as
    a histogram of the off-diagonal similarities, with the selected AUs' own similarities to the rest.

    Example:
        >>> import torch
        >>> png = heterogeneity_plot(torch.eye(200), "layer 3", marked=[4])
        >>> png[1:4]
        b'PNG'
    """
    n = sims.shape[0]
    if n <= 128:
        fig, ax = subplots(figsize=(4.4, 3.7))
        im = ax.imshow(sims.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        for i in marked:
            ax.axhline(i, color="black", linewidth=0.5, alpha=0.6)
            ax.axvline(i, color="black", linewidth=0.5, alpha=0.6)
        ax.set_xlabel("dimension within block")
        ax.set_ylabel("dimension within block")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    else:
        off = ~torch.eye(n, dtype=torch.bool)
        fig, ax = subplots(figsize=(4.8, 3.4))
        bins = [float(b) for b in np.linspace(-1, 1, 81)]
        ax.hist(sims[off].numpy(), bins=bins, density=True, color="#8da0cb", label="all pairs of dims")
        if marked:
            rows = torch.stack([sims[i][off[i]] for i in marked])
            ax.hist(
                rows.flatten().numpy(),
                bins=bins,
                density=True,
                histtype="step",
                color="#ff2d55",
                linewidth=1.4,
                label="selected AUs vs the rest",
            )
        ax.set_xlabel("cosine similarity of lens logit vectors")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, frameon=False)
    ax.set_title(f"{label}: lens similarity of its dims", fontsize=10)
    return to_png(fig)


def _grid_lines(ax: Any, ks: list[int], alphas: list[float], val: dict[tuple[int, float], float], by_k: bool) -> None:
    """One line per alpha over k (``by_k``), or one line per k over alpha; log x axis for wide ranges."""
    cmap = matplotlib.colormaps["viridis"]
    outer: list[Any] = list(alphas) if by_k else list(ks)
    for j, o in enumerate(outer):
        keys = [(k, float(o)) for k in ks] if by_k else [(int(o), a) for a in alphas]
        keys = [key for key in keys if key in val]
        xs = [key[0] if by_k else key[1] for key in keys]
        ax.plot(
            xs,
            [val[key] for key in keys],
            "o-",
            color=cmap(j / max(1, len(outer) - 1)),
            markersize=4,
            label=f"alpha {o:g}" if by_k else f"k {o}",
        )
    grid: list[float] = [float(k) for k in ks] if by_k else alphas
    if len(grid) > 1 and min(grid) > 0 and max(grid) / min(grid) >= 10:
        ax.set_xscale("log")
        ax.set_xticks(grid)
        ax.set_xticklabels([f"{x:g}" for x in grid])
        ax.minorticks_off()
    ax.set_xlabel("k (number of steered AUs)" if by_k else "alpha (strength)")
    ax.grid(alpha=0.3)


def sweep_plots(rows: Sequence[dict[str, Any]], metric: str, baseline: float | None = None) -> dict[str, bytes]:
    """Validation ``metric`` against k (one line per alpha) and against alpha (one line per k), per site.

    When the rows carry ``ppl_delta`` (perplexity change of the steered model), a third panel shows it
    against alpha. Returns ``{"<site>": png}``: one figure per site.

    Example:
        >>> rows = [{"site": "head", "k": k, "alpha": a, "metric": k * a / 100} for k in (4, 8) for a in (1, 5)]
        >>> list(sweep_plots(rows, "accuracy", baseline=0.1))
        ['head']
    """
    out: dict[str, bytes] = {}
    for site in sorted({str(r["site"]) for r in rows}):
        rs = [r for r in rows if str(r["site"]) == site and r.get("metric") is not None]
        ks = sorted({int(r["k"]) for r in rs})
        alphas = sorted({float(r["alpha"]) for r in rs})
        val = {(int(r["k"]), float(r["alpha"])): float(r["metric"]) for r in rs}
        ppl = {
            (int(r["k"]), float(r["alpha"])): float(r["ppl_delta"])
            for r in rs
            if isinstance(r.get("ppl_delta"), int | float)
        }
        fig, axes = subplots(1, 3 if ppl else 2, figsize=(13 if ppl else 12, 3.9))
        for ax, by_k in zip(axes, (True, False)):
            _grid_lines(ax, ks, alphas, val, by_k)
            if baseline is not None:
                ax.axhline(baseline, color="#c0392b", linestyle="--", linewidth=1, label="unsteered")
            ax.set_ylabel(f"validation {metric}")
            ax.legend(fontsize=7, ncol=2 if len(ax.get_lines()) > 6 else 1)
            ax.set_title(f"site '{site}': {metric} vs {'k' if by_k else 'alpha'}", fontsize=10)
        if ppl:
            _grid_lines(axes[2], ks, alphas, ppl, False)
            axes[2].axhline(0.0, color="#c0392b", linestyle="--", linewidth=1)
            axes[2].set_ylabel("perplexity change")
            axes[2].set_title(f"site '{site}': side effect on perplexity", fontsize=10)
            axes[2].legend(fontsize=7, ncol=2 if len(ks) > 6 else 1)
        fig.tight_layout()
        out[site] = to_png(fig)
    return out


def shift_plot(
    rises: Sequence[tuple[str, float, float]], falls: Sequence[tuple[str, float, float]], title: str
) -> bytes:
    """Horizontal bars of the next-token probability change: ``(token, p_unsteered, p_steered)`` rows."""
    rows = list(rises) + list(falls)
    fig, ax = subplots(figsize=(4.2, 0.19 * len(rows) + 1.0))
    deltas = [q - p for _, p, q in rows]
    labels = [repr(t) for t, _, _ in rows]
    ax.barh(np.arange(len(rows)), deltas, color=["#2e8b57" if d > 0 else "#c0392b" for d in deltas])
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("p(steered) - p(unsteered)", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return to_png(fig)
