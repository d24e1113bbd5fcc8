"""Cross-model summary table and figure of the default DAG (foundation report)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline import io  # noqa: E402


def summary_table(provisions: Sequence[str | Path], evals: Sequence[str | Path]) -> pd.DataFrame:
    """One row per evaluated model: size, SFT loss and Countdown metrics.

    Evaluation summaries live at ``…/<model>/…/summary.json`` next to the matching
    provisioning summary's model name; rows are joined on the ``name`` field."""
    prov = {(s := io.read_json(p))["name"]: s for p in provisions}
    rows = []
    for path in evals:
        ev = io.read_json(path)
        name = ev["model"]
        p = prov.get(name, {})
        rows.append({
            "model": name, "seed": ev.get("seed"), "source": p.get("source"),
            "model_type": p.get("model_type"), "num_parameters": p.get("num_parameters"),
            "num_layers": p.get("num_layers"), "sft_final_loss": p.get("sft_final_loss"),
            **{k: v for k, v in ev.items() if k not in ("model", "seed")
               and not isinstance(v, list | dict)},
        })
    return pd.DataFrame(rows).sort_values(["model", "seed"]).reset_index(drop=True)


def summary_figure(table: pd.DataFrame):
    """Grouped bars: greedy accuracy, avg@n and pass@k per model."""
    metrics = ["greedy_accuracy"] + [c for c in table.columns
                                     if c.startswith("avg@") and not c.endswith("ci95")]
    metrics += sorted((c for c in table.columns if c.startswith("pass@")),
                      key=lambda c: int(c.split("@")[1]))
    agg = table.groupby("model")[metrics].mean()
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(agg), 3.6))
    width = 0.8 / len(metrics)
    for i, m in enumerate(metrics):
        ax.bar([x + i * width for x in range(len(agg))], agg[m], width, label=m)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(agg))], agg.index)
    ax.set(ylabel="Countdown held-out accuracy", ylim=(0, 1))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
