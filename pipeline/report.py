"""Cross-model summary table and figure of the evaluations (one row per model ×
benchmark × seed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline import io  # noqa: E402


def summary_table(provisions: Sequence[str | Path], evals: Sequence[str | Path]) -> pd.DataFrame:
    """Evaluation summaries joined with the models' provisioning facts (by model name)."""
    prov = {(s := io.read_json(p))["name"]: s for p in provisions}
    rows = []
    for path in evals:
        ev = io.read_json(path)
        base, _, method = ev["model"].partition("+")  # trained models: "<model>+<method>"
        p = prov.get(base, {})
        rows.append({
            "model": ev["model"], "base_model": base, "method": method or "base",
            "benchmark": ev["benchmark"], "task": ev["task"],
            "seed": ev["seed"], "source": p.get("source"), "model_type": p.get("model_type"),
            "num_parameters": p.get("num_parameters"), "num_layers": p.get("num_layers"),
            **{k: v for k, v in ev.items()
               if k not in ("model", "benchmark", "task", "seed")
               and not isinstance(v, list | dict)},
        })
    return pd.DataFrame(rows).sort_values(["benchmark", "model", "seed"]).reset_index(drop=True)


def _metrics(df: pd.DataFrame) -> list[str]:
    cols = [c for c in ("greedy_accuracy", "accuracy") if c in df and df[c].notna().any()]
    cols += [c for c in df.columns if c.startswith("avg@") and df[c].notna().any()]
    cols += sorted((c for c in df.columns if c.startswith("pass@") and df[c].notna().any()),
                   key=lambda c: int(c.split("@")[1]))
    return cols


def summary_figure(table: pd.DataFrame):
    """One panel per benchmark: grouped bars of its metrics per model (mean over seeds)."""
    benches = list(dict.fromkeys(table["benchmark"]))
    fig, axes = plt.subplots(1, len(benches), figsize=(4.2 * len(benches), 3.6), squeeze=False)
    for ax, bench in zip(axes[0], benches, strict=True):
        df = table[table["benchmark"] == bench]
        metrics = _metrics(df)
        agg = df.groupby("model")[metrics].mean()
        width = 0.8 / max(1, len(metrics))
        for i, m in enumerate(metrics):
            ax.bar([x + i * width for x in range(len(agg))], agg[m], width, label=m)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(agg))], agg.index, fontsize=8)
        ax.set(title=bench, ylabel="accuracy", ylim=(0, 1))
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
