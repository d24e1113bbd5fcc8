"""The comparison's figures: accuracy and pass@k per method, training curves, and the
analyses before/after RL (entropy per layer, attention rhythm)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.comparison.stats import BASE, t_interval
from pipeline.comparison.tables import (
    ATTENTION_METRICS,
    DECOMPOSITION_METRICS,
    TRAINING_METRICS,
    headline_metric,
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    out, i = {}, 0
    for m in methods:
        if m == BASE:
            out[m] = "0.35"
        else:
            out[m] = cmap(i % 10)
            i += 1
    return out


def _empty_figure(text: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    return fig


def _err(row: pd.Series) -> list[float]:
    lo, hi = row["ci_lo"], row["ci_hi"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return [0.0, 0.0]
    return [row["mean"] - lo, hi - row["mean"]]


def accuracy_figure(table: pd.DataFrame, runs: pd.DataFrame, methods: Sequence[str]):
    """A panel per (model, benchmark): the headline metric per method, mean ± 95 % CI
    (over seeds, or within-run with one seed), seeds as dots."""
    if table.empty:
        return _empty_figure("no evaluations")
    pairs = list(dict.fromkeys(zip(table["model"], table["benchmark"], strict=True)))
    colors = _colors(methods)
    fig, axes = _panels(pairs, max(3.6, 0.5 * len(methods) + 1.8), 3.2)
    for ax, (model, bench) in zip(axes, pairs, strict=True):
        sel = table[(table["model"] == model) & (table["benchmark"] == bench)]
        metric = headline_metric(sel["metric"].unique())
        if metric is None:
            ax.axis("off")
            continue
        sel = sel[sel["metric"] == metric]
        order = [m for m in methods if m in set(sel["method"])]
        for x, method in enumerate(order):
            row = sel[sel["method"] == method].iloc[0]
            ax.bar(x, row["mean"], color=colors[method], alpha=0.85,
                   yerr=np.array(_err(row))[:, None], capsize=4, ecolor="black")
            top = row["ci_hi"] if np.isfinite(row["ci_hi"]) else row["mean"]
            ax.text(x, min(top, 0.93) + 0.02, f"{row['mean']:.3f}", ha="center",
                    va="bottom", fontsize=7)
            pts = runs[(runs["model"] == model) & (runs["benchmark"] == bench)
                       & (runs["metric"] == metric) & (runs["method"] == method)]
            ax.scatter([x] * len(pts), pts["value"], s=10, color="black", zorder=3)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, max(len(order), 2) - 0.4)
        ax.set_ylim(0, 1)
        ax.set_title(f"{model} · {bench}", fontsize=9)
        ax.set_ylabel(f"{metric} (mean ± 95 % CI)", fontsize=8)
    fig.tight_layout()
    return fig


def pass_at_k_figure(curves: pd.DataFrame, methods: Sequence[str]):
    """pass@k vs k per method (mean over seeds, 95 % CI band), a panel per (model,
    benchmark)."""
    if curves.empty:
        return _empty_figure("no sampled evaluations (n_samples = 0): no pass@k curves")
    agg = curves.assign(k=curves["metric"].str[5:].astype(int))
    pairs = list(dict.fromkeys(zip(agg["model"], agg["benchmark"], strict=True)))
    colors = _colors(methods)
    fig, axes = _panels(pairs, 4.2, 3.2)
    for ax, (model, bench) in zip(axes, pairs, strict=True):
        sel = agg[(agg["model"] == model) & (agg["benchmark"] == bench)]
        for method in [m for m in methods if m in set(sel["method"])]:
            s = sel[sel["method"] == method].sort_values("k")
            ax.plot(s["k"], s["mean"], marker="o", ms=3, color=colors[method], label=method)
            ax.fill_between(s["k"], s["ci_lo"], s["ci_hi"], color=colors[method],
                            alpha=0.15, lw=0)
        if sel["k"].max() > 4:
            ax.set_xscale("log", base=2)
        else:
            _integer_ticks(ax)
        ax.set(xlabel="k", ylabel="pass@k", ylim=(0, 1))
        ax.set_title(f"{model} · {bench}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _panels(pairs: Sequence[tuple[str, str]], width: float, height: float, max_cols: int = 4):
    """A figure with one axis per (model, benchmark) pair (grid, unused axes off)."""
    plt = _plt()
    ncols = max(1, min(len(pairs), max_cols))
    nrows = max(1, math.ceil(len(pairs) / ncols))
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(width * ncols, height * nrows))
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(pairs):]:
        ax.axis("off")
    return fig, flat[:len(pairs)]


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _band(ax, x, mean, lo, hi, color, label, ls="-"):
    ax.plot(x, mean, color=color, label=label, lw=1.4, ls=ls)
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    if np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)


def training_figure(history: pd.DataFrame, methods: Sequence[str]):
    """Reward, entropy and response length vs step, every method overlaid: mean over
    seeds with a 95 % t band (no band with one seed)."""
    plt = _plt()
    if history.empty:
        return _empty_figure("no RL runs in this config (rl.models / rl.methods empty)")
    models = list(dict.fromkeys(history["model"]))
    colors = _colors(methods)
    fig, axes = plt.subplots(len(models), len(TRAINING_METRICS), squeeze=False,
                             figsize=(4.4 * len(TRAINING_METRICS), 3.1 * len(models)))
    for i, model in enumerate(models):
        for j, (metric, label) in enumerate(TRAINING_METRICS):
            ax = axes[i][j]
            sel = history[(history["model"] == model) & (history["metric"] == metric)]
            for method in [m for m in methods if m in set(sel["method"])]:
                s = sel[sel["method"] == method]
                stats = [(step, *t_interval(g["value"])) for step, g in s.groupby("step")]
                if not stats:
                    continue
                x, mean, lo, hi = map(np.array, zip(*stats, strict=True))
                n_seeds = s["seed"].nunique()
                _band(ax, x, mean, lo, hi, colors[method], f"{method} ({n_seeds} seed"
                      f"{'s' if n_seeds > 1 else ''})")
            ax.set(xlabel="RL step", ylabel=label)
            _integer_ticks(ax)
            ax.set_title(model, fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def entropy_layer_figure(table: pd.DataFrame, methods: Sequence[str]):
    """Before/after RL: per-layer internal-policy entropy H(h[l]) and ΔH_ffn of the base
    model and of each method's checkpoints, on the base model's responses."""
    plt = _plt()
    sel = table[table["analysis"] == "decomposition"] if not table.empty else table
    if sel.empty:
        return _empty_figure("no before/after decomposition (no RL runs, or "
                             "comparison.before_after excludes it)")
    models = list(dict.fromkeys(sel["model"]))
    colors = _colors(methods)
    ncol = len(DECOMPOSITION_METRICS) + 1
    fig, axes = plt.subplots(len(models), ncol, squeeze=False,
                             figsize=(5.0 * ncol, 3.3 * len(models)))
    for i, model in enumerate(models):
        ax = axes[i][-1]  # after − before, paired over the same responses
        s = sel[(sel["model"] == model) & (sel["metric"] == "layer.entropy")
                & (sel["method"] != BASE)]
        for method in [m for m in methods if m in set(s["method"])]:
            d = s[s["method"] == method].sort_values("layer")
            _band(ax, d["layer"], d["diff"], d["diff_lo"], d["diff_hi"], colors[method], method)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set(xlabel="layer l", ylabel="ΔH(h[l]) trained − base (nats)")
        ax.set_title(f"{model}: after − before RL (paired, 95 % CI)", fontsize=9)
        _integer_ticks(ax)
        if len(s):
            ax.legend(fontsize=7)
        for j, (module, quantity, label) in enumerate(DECOMPOSITION_METRICS):
            ax = axes[i][j]
            s = sel[(sel["model"] == model) & (sel["metric"] == f"{module}.{quantity}")]
            # the base curve last: on top of trained curves that barely moved
            for method in [m for m in [*methods[1:], methods[0]] if m in set(s["method"])]:
                d = s[s["method"] == method].sort_values("layer")
                _band(ax, d["layer"], d["mean"], d["ci_lo"], d["ci_hi"], colors[method],
                      "base (before RL)" if method == BASE else method,
                      ls="--" if method == BASE else "-")
            if quantity == "delta":
                ax.axhline(0, color="0.6", lw=0.6)
            ax.set(xlabel="layer l" if quantity == "entropy" else "block l (1-based)",
                   ylabel=label)
            _integer_ticks(ax)
            ax.set_title(f"{model}: same responses, base vs trained weights", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def attention_figure(table: pd.DataFrame, methods: Sequence[str]):
    """Before/after RL: WAAD, FAI, locally dominated fraction and entropy (means over the
    base model's responses) per method, 95 % CI error bars."""
    plt = _plt()
    sel = table[table["analysis"] == "attention"] if not table.empty else table
    if sel.empty:
        return _empty_figure("no before/after attention rhythm (no RL runs, or "
                             "comparison.before_after excludes it)")
    models = list(dict.fromkeys(sel["model"]))
    colors = _colors(methods)
    fig, axes = plt.subplots(2 * len(models), len(ATTENTION_METRICS), squeeze=False,
                             figsize=(3.6 * len(ATTENTION_METRICS), 5.8 * len(models)))
    for i, model in enumerate(models):
        for j, (metric, label) in enumerate(ATTENTION_METRICS):
            ax, dax = axes[2 * i][j], axes[2 * i + 1][j]
            s = sel[(sel["model"] == model) & (sel["metric"] == metric)]
            order = [m for m in methods if m in set(s["method"])]
            for x, method in enumerate(order):
                row = s[s["method"] == method].iloc[0]
                ax.bar(x, row["mean"], color=colors[method], alpha=0.85,
                       yerr=np.array(_err(row))[:, None], capsize=4, ecolor="black")
                if method != BASE:  # trained − base, paired over the same responses
                    d = pd.Series({"mean": row["diff"], "ci_lo": row["diff_lo"],
                                   "ci_hi": row["diff_hi"]})
                    dax.bar(x, d["mean"], color=colors[method], alpha=0.85,
                            yerr=np.array(_err(d))[:, None], capsize=4, ecolor="black")
            for a in (ax, dax):
                a.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
            dax.axhline(0, color="0.5", lw=0.6)
            ax.set_title(f"{model}: {label}", fontsize=9)
            dax.set_title("trained − base (95 % CI)", fontsize=9)
    fig.tight_layout()
    return fig


