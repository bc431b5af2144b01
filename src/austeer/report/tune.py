"""The figure of a tune run: held-out effect against damage, one point per configuration, the choice marked.

Matplotlib is imported when the figure is drawn, and only its object API is used (a ``Figure`` rendered
by the Agg canvas): no backend is set and no global state changes.

Example:
    >>> from austeer.evaluation.tune import TuneRow
    >>> rows = [TuneRow("austeer", "head", 8, 5.0, -1, 8, 0.3, 0.1, 3.0, 0.9, 0.5, 0.01, 1.05)]
    >>> tune_plot(rows, rows[0], max_damage=1.25)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

from collections.abc import Sequence

from austeer.evaluation.tune import TuneRow

_MARKERS = {"head": "o", "ffn": "s", "neuron": "^", "residual": "D"}


def tune_plot(rows: Sequence[TuneRow], chosen: TuneRow | None, max_damage: float, title: str = "") -> bytes:
    """PNG bytes: effect (held-out margin change, with its standard error) against perplexity ratio (log scale)."""
    from austeer.report.plots import subplots, to_png  # matplotlib: the report extra (one line when missing)

    fig, ax = subplots(figsize=(7.5, 4.8))
    groups: dict[tuple[str, str], list[TuneRow]] = {}
    for r in rows:
        groups.setdefault((r.method, r.site), []).append(r)
    for (method, site), rs in groups.items():
        label = f"{site} AUs" if method == "austeer" else f"{method} ({site})"
        ax.errorbar(
            [max(r.ppl_ratio, 1e-3) for r in rs],
            [r.effect for r in rs],
            yerr=[r.effect_se for r in rs],
            fmt=_MARKERS.get(site, "o"),
            ms=5,
            capsize=2,
            alpha=0.8,
            label=label,
        )
    if chosen is not None:
        ax.scatter([chosen.ppl_ratio], [chosen.effect], s=220, facecolors="none", edgecolors="#ff2d55", lw=2,
                   label=f"chosen: {chosen.site} k={chosen.k} alpha={chosen.alpha:g}", zorder=5)  # fmt: skip
    ax.axvline(max_damage, color="grey", ls="--", lw=1, label=f"damage bound (ppl x{max_damage:g})")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("damage: perplexity ratio on neutral text (steered / unsteered)")
    ax.set_ylabel("effect: held-out margin change (nats/token)")
    ax.set_title(title or "tune: effect against damage")
    ax.legend(fontsize=8, loc="best")
    return to_png(fig)
