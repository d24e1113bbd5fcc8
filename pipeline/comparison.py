"""Comparison over models × methods × seeds (issue #7): one tidy table of every
evaluation, mean ± 95 % CI over seeds, each method's difference to the baseline (GRPO),
training curves, and the analyses before/after RL.

Statistics (all two-sided 95 % Student-t intervals):

- A *run* is one (model, method, seed) evaluation on one benchmark. Its value is the mean
  over problems of a per-problem quantity (correct for greedy accuracy, the fraction
  correct for avg@n, the unbiased pass@k estimate), and its *within-run* interval is the
  t-interval over problems (the same interval the evaluation summary reports).
- Over seeds: the t-interval of the run values (n−1 degrees of freedom). With one seed
  there is no spread over seeds: the within-run interval of that run is reported instead
  and ``ci_kind`` says so.
- Method − baseline: paired by seed (t-interval of the per-seed differences) where at
  least two seeds match; Welch's interval where both have ≥ 2 seeds but they do not
  match; with one matched seed, the paired t-interval over problems (same problems, same
  seed). The same rules give the before/after differences of the analyses, where the
  base model's run (``seed = -1``) is shared by every seed and the units are responses.

Pure functions over tidy tables; :func:`run_comparison` reads the DAG's files (paths from
:func:`manifest`), writes the tables and figures and returns a summary.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import mean_ci, pass_at_k

__all__ = [
    "BASE",
    "CONF",
    "manifest",
    "manifest_paths",
    "t_interval",
    "welch_interval",
    "eval_units",
    "run_stats",
    "over_seeds",
    "vs_baseline",
    "run_comparison",
]

BASE = "base"  # method name of the starting (base / SFT) models
SHARED_SEED = -1  # seed of a run every seed shares (the base model's analyses)
CONF = 0.95
HEADLINE_ORDER = ("accuracy", "greedy_accuracy")  # fallbacks after avg@n
TRAINING_METRICS = (("reward_mean", "reward (mean over rollouts)"),
                    ("entropy", "entropy of π_θ (nats/token)"),
                    ("response_length", "response length (tokens)"))
ATTENTION_METRICS = (("waad", "mean WAAD"), ("fai", "mean FAI"),
                     ("dominated", "locally dominated tokens (fraction)"),
                     ("entropy", "policy entropy (nats/token)"))
DECOMPOSITION_METRICS = (("layer", "entropy", "H(π_layer h[l]) (nats)"),
                         ("ffn", "delta", "ΔH_ffn (nats)"))


# --------------------------------------------------------------------------- layout
def manifest(spec: dict[str, Any], root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every file the comparison reads, with its identity, from the run lists in ``spec``:
    ``benchmarks`` (benchmark → base models), ``seeds``, ``rl`` (models, methods,
    evaluate) and ``before_after`` (analysis stages). The layout is the DAG's
    (workflow/rules/*.smk)."""
    root = str(root)
    seeds = list(spec["seeds"])
    rl = spec["rl"]
    runs = [(m, meth, s) for m in rl["models"] for meth in rl["methods"] for s in seeds]
    eval_seeds = spec.get("eval_seeds", {})  # benchmark -> model -> seeds (default: all)
    evals = [{"model": m, "method": BASE, "seed": s, "benchmark": b,
              "dir": f"{root}/eval/{m}/{b}/seed{s}"}
             for b, models in spec["benchmarks"].items() for m in models
             for s in eval_seeds.get(b, {}).get(m, seeds)]
    evals += [{"model": m, "method": meth, "seed": s, "benchmark": b,
               "dir": f"{root}/rl/{m}/{meth}/seed{s}/eval/{b}"}
              for m, meth, s in runs for b in rl["evaluate"]]
    histories = [{"model": m, "method": meth, "seed": s,
                  "path": f"{root}/rl/{m}/{meth}/seed{s}/history.json"} for m, meth, s in runs]
    analyses = []
    if runs:
        for kind in spec["before_after"]:
            analyses += [{"kind": kind, "model": m, "method": BASE, "seed": SHARED_SEED,
                          "dir": f"{root}/{kind}/{m}"} for m in rl["models"]]
            analyses += [{"kind": kind, "model": m, "method": meth, "seed": s,
                          "dir": f"{root}/rl/{m}/{meth}/seed{s}/{kind}"} for m, meth, s in runs]
    return {"evaluations": evals, "histories": histories, "analyses": analyses}


ANALYSIS_FILES = {"decomposition": "entropies.parquet", "attention": "tokens.parquet"}


def manifest_paths(man: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """The input files of :func:`manifest` (what the Snakemake rule depends on)."""
    return {
        "evals": [f"{e['dir']}/summary.json" for e in man["evaluations"]],
        "samples": [f"{e['dir']}/samples.parquet" for e in man["evaluations"]],
        "histories": [h["path"] for h in man["histories"]],
        "analyses": [f"{a['dir']}/{ANALYSIS_FILES[a['kind']]}" for a in man["analyses"]],
    }


# --------------------------------------------------------------------------- statistics
def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def t_interval(values: Iterable[float], conf: float = CONF) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of the finite values: Student-t interval with n−1 degrees of
    freedom (:func:`pipeline.evaluation.mean_ci`); one value → ``(v, nan, nan)``; none →
    all NaN. Identical values give a zero-width interval."""
    arr = _finite(values)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    return mean_ci(arr, conf)


def welch_interval(a: Iterable[float], b: Iterable[float],
                   conf: float = CONF) -> tuple[float, float, float]:
    """``(mean(a) − mean(b), lo, hi)``: Welch's interval (unequal variances,
    Welch–Satterthwaite degrees of freedom); NaN bounds unless both have ≥ 2 values."""
    from scipy.stats import t

    a, b = _finite(a), _finite(b)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan, math.nan
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return diff, math.nan, math.nan
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(t.ppf((1.0 + conf) / 2.0, df)) * se
    return diff, diff - half, diff + half


# --------------------------------------------------------------------------- units
def eval_units(samples: pd.DataFrame) -> pd.DataFrame:
    """Per-problem values of one evaluation's samples table: columns metric, unit, value.

    Generative benchmarks (``mode`` greedy/sample): ``greedy_accuracy``, ``avg@n`` (n =
    samples per problem), ``pass@k`` for every k ≤ n (unbiased estimator),
    ``mean_response_tokens`` (sampled responses). Multiple choice (no ``mode``):
    ``accuracy``. The mean over units of each metric is the evaluation summary's value.
    """
    rows: list[pd.DataFrame] = []
    if "mode" not in samples.columns:
        df = samples[["item_id", "correct"]].astype({"correct": float})
        return pd.DataFrame({"metric": "accuracy", "unit": df["item_id"].astype(str),
                             "value": df["correct"].to_numpy()})
    by = ["problem", "item_id"]  # unit label "<item_id>#<problem>": pairs runs by item
    greedy = samples[samples["mode"] == "greedy"]
    if len(greedy):
        g = greedy.groupby(by, sort=False)["correct"].mean()
        rows.append(pd.DataFrame({"metric": "greedy_accuracy", "unit": _unit_labels(g.index),
                                  "value": g.to_numpy(dtype=float)}))
    sample = samples[samples["mode"] == "sample"]
    if len(sample):
        per = sample.groupby(by, sort=False).agg(n=("correct", "size"), c=("correct", "sum"),
                                                 tokens=("num_tokens", "mean"))
        n = int(per["n"].min())
        units = _unit_labels(per.index)
        rows.append(pd.DataFrame({"metric": f"avg@{n}", "unit": units,
                                  "value": (per["c"] / per["n"]).to_numpy(dtype=float)}))
        for k in range(1, n + 1):
            vals = [pass_at_k(int(nn), int(cc), k) for nn, cc in zip(per["n"], per["c"],
                                                                     strict=True)]
            rows.append(pd.DataFrame({"metric": f"pass@{k}", "unit": units, "value": vals}))
        rows.append(pd.DataFrame({"metric": "mean_response_tokens", "unit": units,
                                  "value": per["tokens"].to_numpy(dtype=float)}))
    return pd.concat(rows, ignore_index=True)


def _unit_labels(index: pd.MultiIndex) -> list[str]:
    return [f"{item}#{problem}" for problem, item in index]


def headline_metrics(summary: dict[str, Any]) -> list[str]:
    """The metrics of an evaluation summary that go into the tidy table (the configured
    pass@k, not the whole curve)."""
    keys = [k for k in summary if isinstance(summary[k], int | float)
            and not isinstance(summary[k], bool)]
    out = [k for k in ("greedy_accuracy", "accuracy") if k in keys]
    out += [k for k in keys if k.startswith("avg@")]
    out += sorted((k for k in keys if k.startswith("pass@")), key=lambda k: int(k[5:]))
    out += [k for k in ("mean_response_tokens",) if k in keys]
    return out


def _check_summary(units: pd.DataFrame, summary: dict[str, Any], where: str) -> None:
    """The recomputed means must reproduce the evaluation summary (same samples)."""
    means = units.groupby("metric")["value"].mean()
    for m in headline_metrics(summary):
        if m == "mean_response_tokens" or m not in means:
            continue
        if not math.isclose(float(means[m]), float(summary[m]), rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(f"{where}: {m} recomputed from samples.parquet is {means[m]!r}, "
                             f"summary.json says {summary[m]!r}")


# --------------------------------------------------------------------------- aggregation
RUN = ["method", "seed"]


def run_stats(units: pd.DataFrame, keys: Sequence[str], conf: float = CONF) -> pd.DataFrame:
    """One row per run (keys + method + seed): the mean over units and the within-run
    t-interval over units."""
    rows = []
    for idx, g in units.groupby([*keys, *RUN], sort=False, dropna=False):
        mean, lo, hi = t_interval(g["value"], conf)
        rows.append({**dict(zip([*keys, *RUN], idx, strict=True)), "value": mean,
                     "ci_lo": lo, "ci_hi": hi, "n_units": int(np.isfinite(g["value"]).sum())})
    return pd.DataFrame(rows, columns=[*keys, *RUN, "value", "ci_lo", "ci_hi", "n_units"])


def over_seeds(runs: pd.DataFrame, keys: Sequence[str], *, unit: str = "problems",
               conf: float = CONF) -> pd.DataFrame:
    """Mean ± CI over seeds per (keys, method). ``ci_kind``: ``t over N seeds``; with one
    seed ``within-run t over <unit> (1 seed)`` (the run's own interval), or ``none``."""
    rows = []
    for idx, g in runs.groupby([*keys, "method"], sort=False, dropna=False):
        vals = g["value"].to_numpy(dtype=float)
        seeds = sorted(int(s) for s in g["seed"])
        row = {**dict(zip([*keys, "method"], idx, strict=True)), "n_seeds": len(vals),
               "seeds": " ".join(map(str, seeds))}
        if len(vals) >= 2:
            mean, lo, hi = t_interval(vals, conf)
            sd = float(np.std(vals, ddof=1))
            kind = f"t over {len(vals)} seeds"
        else:
            mean, lo, hi = float(vals[0]), float(g["ci_lo"].iloc[0]), float(g["ci_hi"].iloc[0])
            sd = math.nan
            kind = f"within-run t over {unit} (1 seed)" if np.isfinite([lo, hi]).all() else "none"
        rows.append({**row, "mean": mean, "sd": sd, "ci_lo": lo, "ci_hi": hi, "ci_kind": kind})
    return pd.DataFrame(rows, columns=[*keys, "method", "n_seeds", "seeds", "mean", "sd",
                                       "ci_lo", "ci_hi", "ci_kind"])


def vs_baseline(runs: pd.DataFrame, units: pd.DataFrame, keys: Sequence[str], baseline: str,
                *, unit: str = "problems", conf: float = CONF) -> pd.DataFrame:
    """Each method minus ``baseline`` per ``keys`` (module docstring: paired by seed, Welch,
    or paired over units with one seed). A baseline run with ``seed == -1`` is shared by
    every seed of the other methods."""
    cols = [*keys, "method", "baseline", "n_pairs", "diff", "ci_lo", "ci_hi", "ci_kind"]
    rows = []
    unit_groups = dict(iter(units.groupby([*keys, *RUN], sort=False, dropna=False)))
    for idx, g in runs.groupby(list(keys), sort=False, dropna=False):
        idx = idx if isinstance(idx, tuple) else (idx,)
        key = dict(zip(keys, idx, strict=True))
        base = g[g["method"] == baseline].set_index("seed")["value"]
        if base.empty:
            continue
        shared = list(base.index) == [SHARED_SEED]
        for method, mg in g[g["method"] != baseline].groupby("method", sort=False):
            m = mg.set_index("seed")["value"]
            pairs = ([(s, SHARED_SEED) for s in m.index] if shared
                     else [(s, s) for s in m.index if s in base.index])
            row = {**key, "method": method, "baseline": baseline, "n_pairs": len(pairs)}
            if len(pairs) >= 2:
                d, lo, hi = t_interval([m[s] - base[b] for s, b in pairs], conf)
                kind = f"paired t over {len(pairs)} seeds"
            elif len(m) >= 2 and len(base) >= 2:
                d, lo, hi = welch_interval(m.to_numpy(), base.to_numpy(), conf)
                kind = f"Welch t over seeds ({len(m)} vs {len(base)})"
            elif len(pairs) == 1:
                (s, b), = pairs
                um = unit_groups.get((*idx, method, s))
                ub = unit_groups.get((*idx, baseline, b))
                d, lo, hi = float(m[s] - base[b]), math.nan, math.nan
                kind = "none"
                if um is not None and ub is not None:
                    j = um.set_index("unit")["value"].to_frame("m").join(
                        ub.set_index("unit")["value"].to_frame("b"), how="inner").dropna()
                    if len(j) >= 2:
                        _, lo, hi = t_interval(j["m"] - j["b"], conf)
                        # the paired mean over common units; equals d when both runs
                        # cover the same units
                        d = float((j["m"] - j["b"]).mean())
                        kind = f"paired t over {len(j)} {unit} (1 seed)"
            else:
                d, lo, hi = float(m.mean() - base.mean()), math.nan, math.nan
                kind = "none (seeds do not match)"
            rows.append({**row, "diff": d, "ci_lo": lo, "ci_hi": hi, "ci_kind": kind})
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- loading
def load_evaluations(entries: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                 pd.DataFrame]:
    """Read every evaluation: (units, tidy per-run table of the headline metrics, per-run
    table of every pass@k)."""
    from pipeline import io

    all_units, headline = [], []
    for e in entries:
        summary = io.read_json(f"{e['dir']}/summary.json")
        units = eval_units(pd.read_parquet(f"{e['dir']}/samples.parquet"))
        _check_summary(units, summary, e["dir"])
        ident = {"model": e["model"], "method": e["method"], "seed": int(e["seed"]),
                 "benchmark": e["benchmark"]}
        all_units.append(units.assign(**ident))
        headline += [{**ident, "metric": m, "task": summary.get("task")}
                     for m in headline_metrics(summary)]
    keys = ["model", "benchmark", "metric"]
    if not all_units:
        empty = pd.DataFrame(columns=[*keys, *RUN, "unit", "value"])
        return empty, run_stats(empty, keys), run_stats(empty, keys)
    units = pd.concat(all_units, ignore_index=True)
    runs = run_stats(units, keys)
    want = pd.DataFrame(headline)
    tidy = want.merge(runs, on=["model", "method", "seed", "benchmark", "metric"], how="left")
    tidy = tidy[["model", "method", "seed", "benchmark", "task", "metric", "value", "ci_lo",
                 "ci_hi", "n_units"]].rename(columns={"n_units": "n_problems"})
    curves = runs[runs["metric"].str.startswith("pass@")]
    return units, tidy, curves


def load_histories(entries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Training histories as a tidy table: model, method, seed, step, metric, value."""
    from pipeline import io

    rows = []
    for e in entries:
        for rec in io.read_json(e["path"]):
            for metric, _ in TRAINING_METRICS + (("accuracy", ""), ("entropy_k", "")):
                if metric in rec and rec[metric] is not None:
                    rows.append({"model": e["model"], "method": e["method"],
                                 "seed": int(e["seed"]), "step": int(rec["step"]),
                                 "phase": rec.get("phase"), "metric": metric,
                                 "value": float(rec[metric])})
    return pd.DataFrame(rows, columns=["model", "method", "seed", "step", "phase", "metric",
                                       "value"])


def analysis_units(kind: str, directory: str | Path) -> pd.DataFrame:
    """Per-response values of one analysis run: columns metric, layer, unit, value
    (``layer`` is -1 for whole-response metrics)."""
    directory = Path(directory)
    if kind == "decomposition":
        ent = pd.read_parquet(directory / "entropies.parquet")
        conv = ent["convention"].iloc[0]  # the first convention defines the boundary
        parts = []
        for module, quantity, _ in DECOMPOSITION_METRICS:
            sel = ent[(ent["convention"] == conv) & (ent["module"] == module)
                      & (ent["quantity"] == quantity)]
            parts.append(pd.DataFrame({"metric": f"{module}.{quantity}",
                                       "layer": sel["layer"].astype(int).to_numpy(),
                                       "unit": sel["sample"].astype(str).to_numpy(),
                                       "value": sel["value"].to_numpy(dtype=float)}))
        return pd.concat(parts, ignore_index=True)
    if kind == "attention":
        tok = pd.read_parquet(directory / "tokens.parquet")
        per = tok.groupby("sample").agg(waad=("waad", "mean"), fai=("fai", "mean"),
                                        dominated=("dominated", "mean"),
                                        entropy=("entropy", "mean"))
        long = per.reset_index().melt(id_vars="sample", var_name="metric", value_name="value")
        return pd.DataFrame({"metric": long["metric"], "layer": -1,
                             "unit": long["sample"].astype(str),
                             "value": long["value"].astype(float)})
    raise ValueError(f"unknown analysis {kind!r} (known: {sorted(ANALYSIS_FILES)})")


def load_analyses(entries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    parts = [analysis_units(a["kind"], a["dir"]).assign(
        analysis=a["kind"], model=a["model"], method=a["method"], seed=int(a["seed"]))
        for a in entries]
    if not parts:
        return pd.DataFrame(columns=["analysis", "model", "metric", "layer", *RUN, "unit",
                                     "value"])
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- figures
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


def headline_metric(metrics: Iterable[str]) -> str | None:
    """avg@n (the papers' metric) if present, else accuracy / greedy accuracy."""
    metrics = list(metrics)
    avg = [m for m in metrics if m.startswith("avg@")]
    if avg:
        return avg[0]
    return next((m for m in HEADLINE_ORDER if m in metrics), None)


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


# --------------------------------------------------------------------------- html
def _num(x: float) -> str:
    return f"{x:.2e}" if 0 < abs(x) < 5e-4 else f"{x:.3f}"


def _fmt(mean: float, lo: float, hi: float) -> str:
    if not np.isfinite(mean):
        return "–"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{_num(mean)} [{_num(lo)}, {_num(hi)}]"
    return _num(mean)


def tables_html(comparison: pd.DataFrame, differences: pd.DataFrame,
                before_after: pd.DataFrame, methods: Sequence[str], baseline: str) -> str:
    """One HTML page with the comparison tables (for the Snakemake report)."""
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>comparison</title>",
             "<style>body{font-family:sans-serif;font-size:13px;margin:16px}"
             "table{border-collapse:collapse;margin-bottom:18px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th{background:#f0f0f0}caption{text-align:left;font-weight:bold;padding:4px 0}"
             "</style></head><body>"]
    if not comparison.empty:
        c = comparison.assign(cell=[_fmt(r["mean"], r["ci_lo"], r["ci_hi"])
                                    for _, r in comparison.iterrows()])
        order = [m for m in methods if m in set(c["method"])]
        wide = c.pivot_table(index=["model", "benchmark", "metric"], columns="method",
                             values="cell", aggfunc="first", sort=False)[order]
        kinds = sorted(set(comparison["ci_kind"]))
        parts.append(wide.to_html(na_rep="–", escape=True).replace(
            "<table", f"<table><caption>Mean [95 % CI] per method ({html.escape('; '.join(kinds))})"
                      "</caption", 1))
    if not differences.empty:
        d = differences.assign(cell=[_fmt(r["diff"], r["ci_lo"], r["ci_hi"])
                                     for _, r in differences.iterrows()])
        d = d[["model", "benchmark", "metric", "method", "n_pairs", "cell", "ci_kind"]]
        d = d.rename(columns={"cell": f"method − {baseline} [95 % CI]"})
        parts.append(d.to_html(index=False, escape=True).replace(
            "<table", f"<table><caption>Difference to {html.escape(baseline)} on the same base "
                      "model and benchmark</caption", 1))
    if not before_after.empty:
        b = before_after[before_after["layer"] == -1] if "layer" in before_after else before_after
        b = b.assign(cell=[_fmt(r["mean"], r["ci_lo"], r["ci_hi"]) for _, r in b.iterrows()],
                     diff_cell=[_fmt(r["diff"], r["diff_lo"], r["diff_hi"])
                                for _, r in b.iterrows()])
        b = b[["analysis", "model", "metric", "method", "n_seeds", "cell", "diff_cell"]]
        b = b.rename(columns={"cell": "mean [95 % CI]", "diff_cell": "trained − base [95 % CI]"})
        parts.append(b.to_html(index=False, escape=True).replace(
            "<table", "<table><caption>Attention rhythm before/after RL (base responses, "
                      "base vs trained weights)</caption", 1))
    if len(parts) == 1:
        parts.append("<p>No evaluations.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- stage
OUTPUTS = {
    "evaluations": "evaluations.csv",
    "comparison": "comparison.csv",
    "differences": "differences.csv",
    "pass_at_k": "pass_at_k.csv",
    "training": "training.csv",
    "before_after": "before_after.csv",
    "tables": "tables.html",
    "accuracy_fig": "figures/accuracy.png",
    "pass_at_k_fig": "figures/pass_at_k.png",
    "training_fig": "figures/training_curves.png",
    "entropy_fig": "figures/entropy_per_layer.png",
    "attention_fig": "figures/attention_before_after.png",
    "summary": "summary.json",
}


def _methods(spec: dict[str, Any]) -> list[str]:
    return [BASE, *spec["rl"]["methods"]]


def before_after_table(units: pd.DataFrame, conf: float = CONF) -> pd.DataFrame:
    """Per (analysis, model, metric, layer, method): mean ± CI over seeds and the
    difference to the base model on the same responses."""
    keys = ["analysis", "model", "metric", "layer"]
    if units.empty:
        return pd.DataFrame(columns=[*keys, "method", "n_seeds", "mean", "ci_lo", "ci_hi",
                                     "ci_kind", "diff", "diff_lo", "diff_hi", "diff_kind"])
    runs = run_stats(units, keys, conf)
    agg = over_seeds(runs, keys, unit="responses", conf=conf)
    diff = vs_baseline(runs, units, keys, BASE, unit="responses", conf=conf)
    diff = diff.rename(columns={"ci_lo": "diff_lo", "ci_hi": "diff_hi",
                                "ci_kind": "diff_kind"}).drop(columns=["baseline", "n_pairs"])
    out = agg.merge(diff, on=[*keys, "method"], how="left")
    return out.drop(columns=["seeds", "sd"])


def run_comparison(spec: dict[str, Any], root: str | Path, out_dir: str | Path,
                   run: Any = None) -> dict[str, Any]:
    """Read every file of :func:`manifest`, write :data:`OUTPUTS` under ``out_dir`` (the
    summary JSON last) and log figures and tables to ``run`` (a
    :class:`pipeline.tracking.JobRun`)."""
    from pipeline import io

    plt = _plt()
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    man = manifest(spec, root)
    baseline = spec["baseline"]
    methods = _methods(spec)

    units, tidy, curves_runs = load_evaluations(man["evaluations"])
    keys = ["model", "benchmark", "metric"]
    head_runs = tidy.rename(columns={"n_problems": "n_units"})
    comparison = over_seeds(head_runs, keys)
    comparison = comparison.merge(tidy[["model", "benchmark", "metric", "task"]]
                                  .drop_duplicates(), on=keys, how="left")
    differences = vs_baseline(head_runs, units, keys, baseline)
    curves = over_seeds(curves_runs, keys)
    history = load_histories(man["histories"])
    before_after = before_after_table(load_analyses(man["analyses"]))

    for name, df in (("evaluations", tidy), ("comparison", comparison),
                     ("differences", differences), ("pass_at_k", curves),
                     ("training", history), ("before_after", before_after)):
        io.write_table(out / OUTPUTS[name], df)
        if run is not None:
            run.artifact(out / OUTPUTS[name], "tables")
    (out / OUTPUTS["tables"]).write_text(tables_html(comparison, differences, before_after,
                                                     methods, baseline))
    figures = {
        "accuracy_fig": accuracy_figure(comparison, head_runs, methods),
        "pass_at_k_fig": pass_at_k_figure(curves, methods),
        "training_fig": training_figure(history, methods),
        "entropy_fig": entropy_layer_figure(before_after, methods),
        "attention_fig": attention_figure(before_after, methods),
    }
    for name, fig in figures.items():
        fig.savefig(out / OUTPUTS[name], dpi=130)
        plt.close(fig)
        if run is not None:
            run.artifact(out / OUTPUTS[name], "figures")
    if run is not None:
        run.artifact(out / OUTPUTS["tables"], "tables")
        run.params({"baseline": baseline, "methods": methods,
                    "before_after": spec["before_after"], "seeds": spec["seeds"]})
        metrics = {}
        for _, r in comparison.iterrows():
            base = f"{r['benchmark']}/{r['model']}/{r['method']}/{r['metric']}"
            metrics[base] = r["mean"]
            if np.isfinite(r["ci_lo"]):
                metrics[f"{base}_ci_lo"], metrics[f"{base}_ci_hi"] = r["ci_lo"], r["ci_hi"]
        for _, r in differences.iterrows():
            metrics[f"{r['benchmark']}/{r['model']}/{r['method']}-{baseline}/{r['metric']}"] = \
                r["diff"]
        run.metrics({k: v for k, v in metrics.items() if np.isfinite(v)})

    head = []
    for (model, bench), g in comparison.groupby(["model", "benchmark"], sort=False):
        metric = headline_metric(g["metric"].unique())
        for _, r in g[g["metric"] == metric].iterrows():
            head.append({"model": model, "benchmark": bench, "method": r["method"],
                         "metric": metric, "mean": r["mean"], "ci95": [r["ci_lo"], r["ci_hi"]],
                         "n_seeds": int(r["n_seeds"]), "ci_kind": r["ci_kind"]})
    summary = {
        "baseline": baseline, "methods": methods, "seeds": list(spec["seeds"]),
        "num_evaluations": len(man["evaluations"]), "num_training_runs": len(man["histories"]),
        "num_analysis_runs": len(man["analyses"]), "headline": head,
        "outputs": {k: v for k, v in OUTPUTS.items() if k != "summary"},
    }
    io.write_json(out / OUTPUTS["summary"], summary)
    return summary
