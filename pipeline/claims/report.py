"""The claims table as people read it (docs/methods.md §9.10): a forest figure (value
and 95 % interval next to the criterion's boundary, one panel per paper) and an HTML
page (one row per claim and run, a verdict badge, value and interval, the figure link)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipeline.claims.record import ClaimRecord  # noqa: E402

COLORS = {"holds": "#1a7f37", "fails": "#cf222e", "inconclusive": "#bf8700",
          "not measurable": "#6e7781", "descriptive": "#0969da"}


def _row_scale(r: ClaimRecord) -> tuple[float, float]:
    """The row's own x-range: value, interval and boundary with a margin."""
    pts = [x for x in (r.value, r.ci_low, r.ci_high, r.boundary) if math.isfinite(x)]
    lo, hi = (min(pts), max(pts)) if pts else (0.0, 1.0)
    pad = (hi - lo) * 0.15 or max(abs(hi), 1.0) * 0.15
    return lo - pad, hi + pad


def forest_figure(records: Sequence[ClaimRecord]) -> Figure:
    """One panel per paper; per record a row on its own scale (the ends are labelled in
    the metric's units): the interval as a bar, the value as a dot coloured by verdict,
    the criterion's boundary as a black tick."""
    papers = sorted({r.paper for r in records})
    rows = {p: [r for r in records if r.paper == p] for p in papers}
    heights = [max(len(v), 1) for v in rows.values()] or [1]
    fig, axes = plt.subplots(len(papers) or 1, 1, squeeze=False,
                             figsize=(12, 0.28 * sum(heights) + 1.2 * len(heights)),
                             gridspec_kw={"height_ratios": heights})
    for ax, paper in zip(axes[:, 0], papers, strict=False):
        recs = rows[paper]
        for i, r in enumerate(recs):
            y = len(recs) - 1 - i
            lo, hi = _row_scale(r)

            def x(v: float, lo: float = lo, hi: float = hi) -> float:
                return (v - lo) / (hi - lo)
            color = COLORS[r.verdict]
            if math.isfinite(r.ci_low) and math.isfinite(r.ci_high):
                ax.plot([x(r.ci_low), x(r.ci_high)], [y, y], color=color, lw=2.5)
            if math.isfinite(r.value):
                ax.plot([x(r.value)], [y], "o", color=color, ms=5)
            if math.isfinite(r.boundary):
                ax.plot([x(r.boundary)] * 2, [y - 0.35, y + 0.35], color="black", lw=1)
            ax.text(-0.01, y, f"{r.claim_id} · {r.run}", ha="right", va="center", fontsize=6.5)
            ax.text(1.01, y, f"{r.criterion}   axis [{lo:.3g}, {hi:.3g}]", ha="left",
                    va="center", fontsize=6, color="#57606a")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.7, len(recs) - 0.3)
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_title(paper, fontsize=9, loc="left")
    handles = [plt.Line2D([], [], color=c, marker="o", lw=2.5, label=v)
               for v, c in COLORS.items()]
    handles.append(plt.Line2D([], [], color="black", lw=1, label="criterion boundary"))
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.4, right=0.72, bottom=0.06, top=0.96, hspace=0.5)
    return fig


def _num(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.4g}"


def _rows(records: Sequence[ClaimRecord], figure_prefix: str) -> list[str]:
    out = ["<table><tr><th>verdict</th><th>paper</th><th>claim</th><th>model / run</th>"
           "<th>family</th><th>split</th><th>metric</th><th>value</th><th>95% CI</th>"
           "<th>paper's value</th><th>n</th><th>criterion</th><th>note</th>"
           "<th>figure</th></tr>"]
    for r in records:
        badge = f"<span class='b' style='background:{COLORS[r.verdict]}'>{r.verdict}</span>"
        needed = f" (needs {r.n_needed})" if r.n_needed else ""
        fig = (f"<a class='f' href='{html.escape(figure_prefix + r.figure)}'>"
               f"{html.escape(r.figure)}</a>" if r.figure else "")
        paper = html.escape(r.paper) + (f"<br><span class='f'>{html.escape(r.paper_ref)}"
                                         "</span>" if r.paper_ref else "")
        cells = [badge, paper, html.escape(r.claim), html.escape(r.run),
                 html.escape(r.family), html.escape(r.split), html.escape(r.metric),
                 _num(r.value), f"[{_num(r.ci_low)}, {_num(r.ci_high)}] {r.ci_kind}",
                 html.escape(r.paper_value) or "—", f"{r.n}{needed}",
                 html.escape(r.criterion), html.escape(r.reason), fig]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return out


def claims_html(records: Sequence[ClaimRecord], *, figure_prefix: str = "../") -> str:
    """An HTML page (§9.10): the paper's claims, then the project's extensions in a
    section of their own; one row per record with a verdict badge, the value and its
    interval next to the paper's value, n (and n needed for inconclusive ones), the
    family it was tested under, the reason and the figure that shows the claim: a link to
    ``figure_prefix`` + its path (relative to the experiment root, so the links work from
    ``claims/claims.html``), labelled with that path. Figures are not embedded: the
    Snakemake report shows an HTML result as a data-URI iframe, which Chromium refuses above
    2 MB; there the path is what the report's search box finds."""
    counts = {v: sum(r.verdict == v for r in records) for v in COLORS}
    head = " · ".join(f"{v}: {n}" for v, n in counts.items())
    paper = [r for r in records if r.source == "paper"]
    ext = [r for r in records if r.source != "paper"]
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Claims</title>",
           "<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
           "td,th{border-bottom:1px solid #d0d7de;padding:3px 6px;text-align:left}"
           ".b{color:white;border-radius:8px;padding:1px 7px;font-size:11px;"
           "white-space:nowrap}.f{font-size:11px}</style>",
           f"</head><body><h1>Claims</h1><p>{len(records)} records — {html.escape(head)}</p>",
           "<p>Definitions and the claim registry: docs/methods.md §9. A figure link opens "
           "the file next to this page (results/&lt;experiment&gt;/); in the HTML report, "
           "search for its path.</p>",
           f"<h2>The papers' claims ({len(paper)})</h2>"]
    out += _rows(paper, figure_prefix)
    out.append(f"<h2>Extensions: statistics the project adds ({len(ext)})</h2>")
    out += _rows(ext, figure_prefix)
    out.append("</body></html>")
    return "\n".join(out)
