"""The depth stage's figures (docs/methods.md §4), drawn from its tables: :func:`figures` gives
every figure the available tables allow as ``{file name: Figure}`` (the caller saves and
closes them). Per-lens panels share the lens colours of :data:`LENS_COLORS` and the
frequency buckets those of :data:`BUCKET_COLORS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.depth.metrics import BUCKETS  # noqa: E402
from pipeline.depth.spec import BUILTIN_TEXT_KIND, TOKEN_CLASSES  # noqa: E402

BUCKET_COLORS = {"Top1-10": "tab:red", "11-100": "tab:orange", "101-1000": "tab:green",
                 "1000+": "tab:blue"}
LENS_COLORS = {"logit": "tab:gray", "tuned": "tab:blue"}


def _lens_panels(df: pd.DataFrame, width: float = 5.0, height: float = 3.4):
    """One panel per lens of ``df`` (in order of appearance): ``(fig, axes, [(ax, lens,
    rows of that lens)])``."""
    lenses = list(dict.fromkeys(df.lens))
    fig, axes = plt.subplots(1, len(lenses), figsize=(width * len(lenses), height),
                             squeeze=False)
    axes = list(axes[0])
    return fig, axes, [(ax, name, df[df.lens == name])
                       for ax, name in zip(axes, lenses, strict=True)]


def _finish_panels(fig, axes, title: str, **legend):
    axes[-1].legend(fontsize=7, **legend)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def kl_figure(kl: pd.DataFrame, model_name: str):
    """Per-layer KL(p_final ‖ p_lens) on held-out text, logit vs tuned lens (log y;
    zeros — the logit lens at h[L] — are not drawn)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, d in kl.groupby("lens"):
        d = d.sort_values("layer")
        d = d[d.kl > 0]
        ax.plot(d.layer, d.kl, marker="o", ms=3, color=LENS_COLORS.get(name), label=f"{name} lens")
    ax.set_yscale("log")
    ax.set(xlabel="layer l (h[l])", ylabel="KL(p_final ‖ p_lens) (nats)",
           title=f"{model_name}: held-out KL per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def decision_depth_figure(dd: pd.DataFrame, model_name: str):
    """Mean earliest layer with rank ≤ k vs k (log x), per lens; solid = first hit,
    dashed = stays."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for (name, variant), d in dd.groupby(["lens", "variant"]):
        ax.plot(d.k, d.mean_layer, color=LENS_COLORS.get(name),
                ls="-" if variant == "first" else "--", label=f"{name}, {variant}")
    ax.set_xscale("log")
    ax.set(xlabel="rank threshold k", ylabel="mean earliest layer",
           title=f"{model_name}: decision depth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bucket_mix_figure(mix: pd.DataFrame, model_name: str, text_kind: str = ""):
    """Share of top-1 guesses per frequency bucket per layer (stacked; layer L = output)."""
    fig, axes, panels = _lens_panels(mix)
    for ax, name, d in panels:
        d = d.pivot(index="layer", columns="bucket", values="share")
        d = d[[b for b in BUCKETS if b in d.columns]]
        ax.stackplot(d.index, *[d[b] for b in d.columns], labels=list(d.columns),
                     colors=[BUCKET_COLORS[b] for b in d.columns], alpha=0.85)
        ax.set(xlabel="layer (last = model output)", ylabel="share of top-1 guesses",
               ylim=(0, 1), xlim=(d.index.min(), d.index.max()), title=f"{name} lens")
    return _finish_panels(fig, axes, f"{model_name}: frequency bucket of the top-1 guess"
                          + (f" ({text_kind})" if text_kind else ""), loc="lower right")


def flip_rate_figure(flips: pd.DataFrame, model_name: str):
    """Per bucket and layer: share of the layer's top-1 guesses in the bucket that differ
    from the final output (conditional flip rate)."""
    fig, axes, panels = _lens_panels(flips)
    for ax, name, d in panels:
        for b in BUCKETS:
            x = d[d.bucket == b].sort_values("layer")
            ax.plot(x.layer, x.flip_rate, marker="o", ms=2.5, color=BUCKET_COLORS[b], label=b)
        ax.axhline(0.7, color="0.5", lw=0.6, ls=":")
        ax.set(xlabel="layer", ylabel="flip rate (n_flip / n_in_bucket)", ylim=(-0.02, 1.02),
               title=f"{name} lens")
    return _finish_panels(fig, axes, f"{model_name}: refinement (flip) rate per frequency "
                                     "bucket")


def _grouped_bars(summ: pd.DataFrame, group: str, order: Sequence, model_name: str,
                  title: str, xlabel: str):
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    s = summ[summ.variant == "first"]
    lenses = list(dict.fromkeys(s.lens))
    width = 0.8 / max(1, len(lenses))
    x = np.arange(len(order))
    for i, name in enumerate(lenses):
        d = s[s.lens == name].set_index(group).reindex(order)
        mean = d.mean_layer.to_numpy(dtype=float)
        lo = np.nan_to_num(mean - d.ci95_lo.to_numpy(dtype=float))
        hi = np.nan_to_num(d.ci95_hi.to_numpy(dtype=float) - mean)
        ax.bar(x + (i - (len(lenses) - 1) / 2) * width, np.nan_to_num(mean), width,
               yerr=[lo, hi], capsize=3, color=LENS_COLORS.get(name), label=f"{name} lens")
        for xi, n in zip(x, d.n_used.fillna(0).astype(int), strict=True):
            ax.annotate(f"n={n}", (xi + (i - (len(lenses) - 1) / 2) * width, 0),
                        ha="center", va="bottom", fontsize=6, color="white")
    ax.set_xticks(x, [str(o) for o in order])
    ax.set(xlabel=xlabel, ylabel="mean earliest layer (rank 1), 95 % CI",
           title=f"{model_name}: {title}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def facts_figure(summ: pd.DataFrame, model_name: str):
    """Mean earliest layer (k = 1, correct-only) per answer-token position, 95 % CIs."""
    order = sorted(summ.answer_token.unique())
    return _grouped_bars(summ, "answer_token", order, model_name,
                         "fact recall, earliest layer per answer token",
                         "answer-token position (teacher-forced)")


def token_class_figure(summ: pd.DataFrame, model_name: str):
    """Builtin-task text: mean earliest layer (k = 1, correct-only) per token class."""
    return _grouped_bars(summ, "token_class", list(TOKEN_CLASSES), model_name,
                         f"earliest layer per token class\n({BUILTIN_TEXT_KIND})",
                         "class of the true next token")


def pos_earliest_figure(summ: pd.DataFrame, model_name: str,
                        order: Sequence[str] | None = None):
    """Mean earliest layer (k = 1, correct-only) per UPOS tag, 95 % CIs, in ``order``
    (default: function tags first)."""
    if order is None:
        s = summ.sort_values("word_class", ascending=False, kind="stable")
        order = list(dict.fromkeys(s.upos))
    return _grouped_bars(summ, "upos", list(order), model_name,
                         "part of speech, earliest layer (rank 1)",
                         "UPOS of the target word (function | content)")


def pos_decision_depth_figure(dd: pd.DataFrame, model_name: str):
    """Per-POS decision depth over the correct prompts of each tag: mean earliest layer with
    rank ≤ k vs k (log x, first-hit variant); one panel per lens; function tags solid
    (warm colours), content tags dashed (cool colours)."""
    warm, cool = plt.get_cmap("autumn"), plt.get_cmap("winter")
    fig, axes, panels = _lens_panels(dd[dd.variant == "first"])
    for ax, name, d in panels:
        tags = list(dict.fromkeys(d.upos))
        func = [t for t in tags if (d[d.upos == t].word_class == "function").all()]
        cont = [t for t in tags if t not in func]
        for group, cmap, ls in ((func, warm, "-"), (cont, cool, "--")):
            for i, tag in enumerate(group):
                x = d[d.upos == tag]
                ax.plot(x.k, x.mean_layer, ls=ls, color=cmap(0.8 * i / max(1, len(group) - 1)),
                        label=f"{tag} (n={int(x.n_prompts.iloc[0])})")
        ax.set_xscale("log")
        ax.set(xlabel="rank threshold k", ylabel="mean earliest layer (rank ≤ k)",
               title=f"{name} lens")
    return _finish_panels(fig, axes, f"{model_name}: decision depth per part of speech "
                                     "(correct-only)")


def mcq_figure(layers: pd.DataFrame, model_name: str):
    """Per layer: fraction of MMLU prompts where the 4 options dominate the vocabulary,
    where the chosen option is settled among them, and where it is the top-1."""
    fig, axes, panels = _lens_panels(layers)
    for ax, name, d in panels:
        d = d.sort_values("layer")
        ax.plot(d.layer, d.frac_dominate, marker="o", ms=2.5, label="options dominate")
        ax.plot(d.layer, d.frac_choice_settled, marker="o", ms=2.5, label="choice settled")
        ax.plot(d.layer, d.frac_choice_top1, marker="o", ms=2.5, label="choice is top-1")
        n_layers = int(d.layer.max())
        ax.axvline(n_layers / 2, color="0.5", lw=0.6, ls=":")
        ax.set(xlabel="layer", ylabel="fraction of prompts", ylim=(-0.02, 1.02),
               title=f"{name} lens")
    return _finish_panels(fig, axes, f"{model_name}: multiple choice (MMLU)")


def figures(tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any],
            model_name: str) -> dict[str, Any]:
    """All figures of the available tables: ``{file name: Figure}`` (the caller saves and
    closes them)."""
    text_kind = summary.get("text_kind", "")
    out: dict[str, Any] = {}
    if "kl" in tables:
        out["kl_per_layer.png"] = kl_figure(tables["kl"], model_name)
    if "decision_depth" in tables:
        out["decision_depth.png"] = decision_depth_figure(tables["decision_depth"], model_name)
    if "bucket_mix" in tables:
        out["bucket_mix.png"] = bucket_mix_figure(tables["bucket_mix"], model_name, text_kind)
    if "flip_rates" in tables:
        out["flip_rates.png"] = flip_rate_figure(tables["flip_rates"], model_name)
    if "facts_summary" in tables and len(tables["facts_summary"]):
        out["facts_earliest_layer.png"] = facts_figure(tables["facts_summary"], model_name)
    if "mcq_layers" in tables and len(tables["mcq_layers"]):
        out["mcq_layers.png"] = mcq_figure(tables["mcq_layers"], model_name)
    if "pos_summary" in tables and len(tables["pos_summary"]):
        pos = summary.get("pos")
        order = (list(pos["function_tags"]) + list(pos["content_tags"])
                 if isinstance(pos, Mapping) else None)
        out["pos_earliest_layer.png"] = pos_earliest_figure(tables["pos_summary"], model_name,
                                                            order)
    if "pos_decision_depth" in tables and len(tables["pos_decision_depth"]):
        out["pos_decision_depth.png"] = pos_decision_depth_figure(tables["pos_decision_depth"],
                                                                  model_name)
    if "exit_curves" in tables and len(tables["exit_curves"]):
        from pipeline.depth.exit import exit_figure

        out["exit_curves.png"] = exit_figure(tables["exit_curves"], model_name)
    if "token_class_summary" in tables and len(tables["token_class_summary"]):
        out["token_classes.png"] = token_class_figure(tables["token_class_summary"],
                                                      model_name)
    return out
