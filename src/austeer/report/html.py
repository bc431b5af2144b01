"""Render a :class:`Report` as one self-contained HTML page (CSS inline, images base64-embedded).

Example:
    >>> r = Report(title="t", meta=[("model", "m")])
    >>> page = render(r)
    >>> page.startswith("<!DOCTYPE html>") and "<td>m</td>" in page
    True
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape

from austeer.io import signature
from austeer.report.lens import Token, UnitLens
from austeer.report.shift import PromptShift, TokenShift


@dataclass(frozen=True)
class Image:
    """One PNG with the file name it is also written under and a caption."""

    name: str
    png: bytes
    caption: str = ""


@dataclass
class Section:
    """A titled part of the report: free HTML paragraphs, images, then an optional table."""

    title: str
    intro: str = ""  # already-escaped HTML
    images: list[Image] = field(default_factory=list)
    body: str = ""  # already-escaped HTML after the images
    inline: list[Image] = field(default_factory=list)  # images already placed inside ``body``
    images_first: bool = True  # False: body (e.g. a table) before the images


@dataclass
class Report:
    """Everything the page shows."""

    title: str
    meta: list[tuple[str, str]]
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # already-escaped HTML

    def images(self) -> list[Image]:
        return [img for s in self.sections for img in s.images + s.inline]


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1240px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:26px;margin:8px 0 4px}
h2{font-size:20px;margin:36px 0 8px;border-bottom:2px solid #dfe3ea;padding-bottom:4px}
p{line-height:1.5;max-width:1000px} .sub{color:#5a6478;margin-top:0}
table{border-collapse:collapse;background:white;font-size:13px;margin:8px 0}
th,td{border:1px solid #dfe3ea;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#eef1f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
table.meta td:first-child{font-weight:600;background:#eef1f6}
figure{margin:12px 0;background:white;border:1px solid #dfe3ea;padding:8px;display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto;display:block} figcaption{font-size:13px;color:#5a6478;margin-top:6px}
code.tok{background:#eef1f6;border-radius:3px;padding:0 3px;margin:1px;display:inline-block;font-size:12px;
white-space:pre}
.pos{color:#1e7b47} .neg{color:#b03a2e}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin:6px 0 10px}
.gen{background:white;border:1px solid #dfe3ea;padding:8px 10px;white-space:pre-wrap;font-size:13px;line-height:1.45}
.gen h4{margin:0 0 4px;font-size:12px;color:#5a6478;text-transform:uppercase;letter-spacing:.04em}
.shift{display:grid;grid-template-columns:auto auto 1fr;gap:18px;align-items:start}
.shift figure{margin:0}
.prompt{margin-top:22px;font-weight:600} .notes li{margin:4px 0;line-height:1.45}
"""


def tok_html(text: str) -> str:
    """A token as a ``<code>`` chip; leading/trailing spaces shown as ``\u2423``, newlines as ``\u21b5``.

    Example:
        >>> tok_html(" good")
        '<code class="tok">\u2423good</code>'
    """
    shown = text.replace("\n", "\u21b5").replace("\t", "\u21e5")
    stripped = shown.lstrip(" ")
    shown = "\u2423" * (len(shown) - len(stripped)) + stripped
    stripped = shown.rstrip(" ")
    shown = stripped + "\u2423" * (len(shown) - len(stripped))
    return f'<code class="tok">{escape(shown) if shown else "&nbsp;"}</code>'


def tokens_html(tokens: list[Token]) -> str:
    return "".join(tok_html(t.text) for t in tokens)


def table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None, cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    numeric = numeric or set()
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def lens_table(lenses: list[UnitLens], alpha: float) -> str:
    """The top AUs with the tokens they and their blocks promote and suppress."""
    rows = []
    for rank, lens in enumerate(lenses, 1):
        u = lens.unit
        rows.append(
            [
                str(rank),
                escape(f"{u.site} L{u.layer} #{u.index}"),
                f"{u.beta:+.3f}",
                f"{1 + alpha * u.beta:+.2f}",
                f'<span class="pos">{tokens_html(lens.promoted)}</span>',
                f'<span class="neg">{tokens_html(lens.suppressed)}</span>',
                escape(lens.block),
                f'<span class="pos">{tokens_html(lens.block_promoted)}</span>',
                f'<span class="neg">{tokens_html(lens.block_suppressed)}</span>',
                f"{lens.cosine:+.2f}",
                f"{lens.overlap}/{len(lens.block_promoted)}",
            ]
        )
    return table(
        [
            "#",
            "AU",
            "beta",
            "gain",
            "AU promotes",
            "AU suppresses",
            "block",
            "block promotes",
            "block suppresses",
            "cos(AU, block)",
            "shared top tokens",
        ],
        rows,
        numeric={0, 2, 3, 9, 10},
    )


def _shift_rows(shifts: list[TokenShift]) -> list[list[str]]:
    return [
        [tok_html(s.text), f"{s.p_before:.4f}", f"{s.p_after:.4f}", f"{s.p_after - s.p_before:+.4f}"] for s in shifts
    ]


def prompts_html(shifts: list[PromptShift], images: dict[int, str]) -> str:
    """Side-by-side generations and the next-token shift tables, per prompt (``images``: index -> <figure>)."""
    parts = []
    for i, s in enumerate(shifts):
        parts.append(f'<div class="prompt">Prompt {i + 1}: {escape(s.prompt)}</div>')
        parts.append(
            '<div class="pair">'
            f'<div class="gen"><h4>unsteered</h4>{escape(s.unsteered)}</div>'
            f'<div class="gen"><h4>steered</h4>{escape(s.steered)}</div></div>'
        )
        head = ["token", "p unsteered", "p steered", "change"]
        parts.append(
            f"<p>Next-token distribution at the first generated position: KL(steered || unsteered) = {s.kl:.3f} nats."
            "</p>"
            '<div class="shift"><div>Rises most' + table(head, _shift_rows(s.rises), {1, 2, 3}) + "</div>"
            "<div>Falls most" + table(head, _shift_rows(s.falls), {1, 2, 3}) + "</div>"
            f"<div>{images.get(i, '')}</div></div>"
        )
    return "".join(parts)


def png_width(png: bytes) -> int:
    """Pixel width from a PNG's header (0 if ``png`` is not a PNG).

    Example:
        >>> png_width(b"\\x89PNG\\r\\n\\x1a\\n" + b"\\0\\0\\0\\rIHDR" + (300).to_bytes(4, "big") + bytes(4))
        300
    """
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        return 0
    return int.from_bytes(png[16:20], "big")


def figure(img: Image) -> str:
    """An inline ``<figure>`` (base64 PNG) whose caption wraps at the image's width."""
    data = base64.b64encode(img.png).decode("ascii")
    cap = f"<figcaption>{escape(img.caption)}</figcaption>" if img.caption else ""
    width = png_width(img.png)
    style = f' style="max-width:min(100%,{width + 18}px)"' if width else ""
    return f'<figure{style}><img alt="{escape(img.name)}" src="data:image/png;base64,{data}">{cap}</figure>'


def render(report: Report) -> str:
    """The whole page as a string."""
    meta = table(["", ""], [[escape(k), escape(v)] for k, v in report.meta], cls="meta").replace(
        "<tr><th></th><th></th></tr>", ""
    )
    sections = []
    for s in report.sections:
        imgs = "".join(figure(i) for i in s.images)
        intro = f"<p>{s.intro}</p>" if s.intro else ""
        content = imgs + s.body if s.images_first else s.body + imgs
        sections.append(f"<section><h2>{escape(s.title)}</h2>{intro}{content}</section>")
    notes = ""
    if report.notes:
        notes = '<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{n}</li>" for n in report.notes) + "</ul>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="generator" content="{signature("report")}">'
        f"<title>{escape(report.title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{escape(report.title)}</h1>{meta}{''.join(sections)}{notes}</main></body></html>\n"
    )
