"""The comparison stage: which files it reads (:func:`manifest`, paths from
:mod:`pipeline.paths`), and :func:`run_comparison`, which reads them, writes the tables
and figures (:data:`OUTPUTS`) and returns a summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import paths
from pipeline.comparison.figures import (
    _plt,
    accuracy_figure,
    attention_figure,
    entropy_layer_figure,
    pass_at_k_figure,
    training_figure,
)
from pipeline.comparison.stats import BASE, SHARED_SEED, over_seeds, vs_baseline
from pipeline.comparison.tables import (
    ANALYSIS_FILES,
    before_after_table,
    headline_metric,
    load_analyses,
    load_evaluations,
    load_histories,
    tables_html,
)

OUTPUTS = paths.COMPARE  # relative to the output directory


@dataclass(frozen=True)
class CompareSpec:
    """What ``pipeline compare`` gets as ``--spec`` (:func:`pipeline.workflow.compare_spec`):
    ``benchmarks`` (benchmark → base models), ``seeds``, ``rl`` (models, methods,
    evaluate), ``baseline``, ``before_after`` (analysis stages) and ``eval_seeds``
    (benchmark → model → seeds; a pair left out: every seed)."""

    benchmarks: dict[str, list[str]]
    seeds: list[int]
    rl: dict[str, list[str]]
    baseline: str
    before_after: list[str]
    eval_seeds: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    @classmethod
    def of(cls, spec: CompareSpec | Mapping[str, Any]) -> CompareSpec:
        return spec if isinstance(spec, CompareSpec) else cls(**spec)

    @property
    def runs(self) -> list[tuple[str, str, int]]:
        """(model, method, seed) of every trained run."""
        return [(m, meth, s) for m in self.rl["models"] for meth in self.rl["methods"]
                for s in self.seeds]


def manifest(spec: CompareSpec | Mapping[str, Any],
             root: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Every file the comparison reads, with its identity, from the run lists in ``spec``:
    ``benchmarks`` (benchmark → base models), ``seeds``, ``rl`` (models, methods,
    evaluate) and ``before_after`` (analysis stages). The layout is the DAG's
    (:mod:`pipeline.paths`): a trained checkpoint's evaluations and analyses are those of
    its run ``<model>/<method>/seed<seed>``."""
    root, c = str(root), CompareSpec.of(spec)
    rl, runs = c.rl, c.runs
    evals = [{"model": m, "method": BASE, "seed": s, "benchmark": b,
              "dir": paths.evaluation_dir(root, m, b, s)}
             for b, models in c.benchmarks.items() for m in models
             for s in c.eval_seeds.get(b, {}).get(m, c.seeds)]
    evals += [{"model": m, "method": meth, "seed": s, "benchmark": b,
               "dir": paths.evaluation_dir(root, paths.run(m, meth, s), b, s)}
              for m, meth, s in runs for b in rl["evaluate"]]
    histories = [{"model": m, "method": meth, "seed": s,
                  "path": paths.rl(root, "history", m, meth, s)} for m, meth, s in runs]
    analyses = []
    if runs:
        for kind in c.before_after:
            analyses += [{"kind": kind, "model": m, "method": BASE, "seed": SHARED_SEED,
                          "dir": paths.analysis_dir(root, kind, m)} for m in rl["models"]]
            analyses += [{"kind": kind, "model": m, "method": meth, "seed": s,
                          "dir": paths.analysis_dir(root, kind, paths.run(m, meth, s))}
                         for m, meth, s in runs]
    return {"evaluations": evals, "histories": histories, "analyses": analyses}


def manifest_paths(man: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """The input files of :func:`manifest` (what the Snakemake rule depends on)."""
    return {
        "evals": [f"{e['dir']}/{paths.EVALUATION['summary']}" for e in man["evaluations"]],
        "samples": [f"{e['dir']}/{paths.EVALUATION['table']}" for e in man["evaluations"]],
        "histories": [h["path"] for h in man["histories"]],
        "analyses": [f"{a['dir']}/{ANALYSIS_FILES[a['kind']]}" for a in man["analyses"]],
    }


def _methods(spec: CompareSpec) -> list[str]:
    return [BASE, *spec.rl["methods"]]


def run_comparison(spec: CompareSpec | Mapping[str, Any], root: str | Path, out_dir: str | Path,
                   run: Any = None) -> dict[str, Any]:
    """Read every file of :func:`manifest`, write :data:`OUTPUTS` under ``out_dir`` (the
    summary JSON last) and log figures and tables to ``run`` (a
    :class:`pipeline.tracking.JobRun`)."""
    from pipeline import io

    plt = _plt()
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    spec = CompareSpec.of(spec)
    man = manifest(spec, root)
    baseline = spec.baseline
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
                    "before_after": spec.before_after, "seeds": spec.seeds})
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
        "baseline": baseline, "methods": methods, "seeds": list(spec.seeds),
        "num_evaluations": len(man["evaluations"]), "num_training_runs": len(man["histories"]),
        "num_analysis_runs": len(man["analyses"]), "headline": head,
        "outputs": {k: v for k, v in OUTPUTS.items() if k != "summary"},
    }
    io.write_json(out / OUTPUTS["summary"], summary)
    return summary
