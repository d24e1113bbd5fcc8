"""The comparison's tables: per-unit values of each evaluation (problems) and analysis
(responses) read from the DAG's files, training histories, the before/after table and
the HTML page of the tables."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.comparison.stats import BASE, CONF, RUN, over_seeds, run_stats, vs_baseline
from pipeline.evaluation.metrics import pass_at_k

HEADLINE_ORDER = ("accuracy", "greedy_accuracy")  # fallbacks after avg@n
TRAINING_METRICS = (("reward_mean", "reward (mean over rollouts)"),
                    ("entropy", "entropy of π_θ (nats/token)"),
                    ("response_length", "response length (tokens)"))
ATTENTION_METRICS = (("waad", "mean WAAD"), ("fai", "mean FAI"),
                     ("dominated", "locally dominated tokens (fraction)"),
                     ("entropy", "policy entropy (nats/token)"))
DECOMPOSITION_METRICS = (("layer", "entropy", "H(π_layer h[l]) (nats)"),
                         ("ffn", "delta", "ΔH_ffn (nats)"))

# the file of an analysis run the comparison reads
ANALYSIS_FILES = {"decomposition": paths.DECOMPOSITION["table"],
                  "attention": paths.ATTENTION["tokens"]}


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
            raise ValueError(f"{where}: {m} recomputed from {paths.EVALUATION['table']} is "
                             f"{means[m]!r}, {paths.EVALUATION['summary']} says {summary[m]!r}")


# --------------------------------------------------------------------------- loading
def load_evaluations(entries: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                 pd.DataFrame]:
    """Read every evaluation: (units, tidy per-run table of the headline metrics, per-run
    table of every pass@k)."""
    from pipeline import io

    all_units, headline = [], []
    for e in entries:
        summary = io.read_json(f"{e['dir']}/{paths.EVALUATION['summary']}")
        units = eval_units(pd.read_parquet(f"{e['dir']}/{paths.EVALUATION['table']}"))
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
    """Training histories as a tidy table: model, method, seed, step, metric, value.
    Steps where a metric was not computed (None / NaN, e.g. the BuPO diagnostics
    ``cos_kL`` and ``delta_k`` outside the ``diag_every`` steps) give no row."""
    from pipeline import io

    rows = []
    for e in entries:
        for rec in io.read_json(e["path"]):
            for metric, _ in TRAINING_METRICS + (("accuracy", ""), ("entropy_k", ""),
                                                 ("cos_kL", ""), ("delta_k", ""),
                                                 ("layer_k", "")):
                if rec.get(metric) is not None and math.isfinite(float(rec[metric])):
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
        ent = pd.read_parquet(directory / ANALYSIS_FILES["decomposition"])
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
        tok = pd.read_parquet(directory / ANALYSIS_FILES["attention"])
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


# --------------------------------------------------------------------------- tables
def headline_metric(metrics: Iterable[str]) -> str | None:
    """avg@n (the papers' metric) if present, else accuracy / greedy accuracy."""
    metrics = list(metrics)
    avg = [m for m in metrics if m.startswith("avg@")]
    if avg:
        return avg[0]
    return next((m for m in HEADLINE_ORDER if m in metrics), None)


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


