"""The decomposition stage (docs/methods.md §1): internal-policy entropies of a model's own
sampled responses, aggregated per layer and module, the boundary layer, and figures.

Tidy table columns: model, sample, convention (``raw`` = no final norm, the paper's
choice; ``final_norm`` = logit-lens style), module (``layer``, ``attn``, ``ffn``,
``attn_in``, ``ffn_in``), quantity (``entropy``, ``delta``, ``cos``), layer (0..L for
``layer`` entropies and ``layer`` cos = cos(h[l], h[L]), 1..L otherwise; 1-based block
index), value (mean over the sample's response tokens), tokens (how many). ``attn`` /
``ffn`` cos are cos(A^l, h[l−1]) / cos(F^l, h[l−1] + A^l); ``layer`` delta is
H(h[l]) − H(h[l−1]) at l = 1..L.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pipeline.decomposition import boundary_layer, entropy_changes, internal_entropies  # noqa: E402
from pipeline.evaluation.metrics import mean_ci  # noqa: E402
from pipeline.responses import batch_from_table  # noqa: E402

CONVENTIONS = {"raw": False, "final_norm": True}


def _series(ents: dict[str, torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    """(module, quantity) -> [B, L(+1), T] tensors of one convention."""
    out = {(k, "entropy"): ents[k] for k in ("layer", "attn", "ffn", "attn_in", "ffn_in")}
    for k, v in entropy_changes(ents).items():
        out[(k, "delta")] = v
    out[("attn", "cos")] = ents["cos_attn"]
    out[("ffn", "cos")] = ents["cos_ffn"]
    out[("layer", "cos")] = ents["cos_final"]  # [B, L+1, T]: cos(h[l], h[L]), l = 0..L
    return out


def _first_layer(module: str, quantity: str) -> int:
    """The layer number of a series' first column: h[0] for the [B, L+1, T] ``layer``
    series (entropy, cos), block 1 otherwise (ΔH of ``layer`` is [B, L, T])."""
    return 0 if module == "layer" and quantity != "delta" else 1


def within_token_budget(table: pd.DataFrame, max_tokens: int | None) -> pd.DataFrame:
    """The leading responses of ``table`` (its row order) whose response tokens add up to at
    most ``max_tokens``, never fewer than one; all of them for ``None`` (docs/methods.md §1.1
    "Data": the decomposition's cost is linear in response tokens)."""
    if max_tokens is None:
        return table
    if max_tokens < 1:
        raise ValueError(f"max_response_tokens must be ≥ 1 or None, got {max_tokens}")
    total = np.cumsum(table["num_response_tokens"].to_numpy())
    return table.iloc[:max(1, int(np.searchsorted(total, max_tokens, side="right")))]


def decompose_responses(
    model: torch.nn.Module,
    table: pd.DataFrame,
    pad_id: int,
    *,
    model_name: str,
    conventions: Sequence[str] = ("raw", "final_norm"),
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-sample tidy table and token-weighted per-layer means (docs/methods.md §1.1
    "Aggregation": per token, then the mean over all response tokens)."""
    rows: list[dict[str, Any]] = []
    sums: dict[tuple, np.ndarray] = defaultdict(lambda: 0.0)
    counts: dict[tuple, np.ndarray] = defaultdict(lambda: 0.0)
    device = next(model.parameters()).device
    order = np.argsort([len(p) + len(r) for p, r in zip(table["prompt_ids"],
                                                         table["response_ids"], strict=True)])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=f"decomposition {model_name}", disable=not progress):
        sub = table.iloc[idx]
        b = batch_from_table(sub, pad_id)
        resp = b["response_mask"]
        for conv in conventions:
            ents = internal_entropies(model, b["input_ids"].to(device),
                                      b["attention_mask"].to(device),
                                      apply_final_norm=CONVENTIONS[conv],
                                      token_mask=resp.to(device))
            for (module, quantity), v in _series(ents).items():
                v = v.float().cpu()
                m = resp[:, None, :].expand_as(v) & ~torch.isnan(v)
                vz = torch.where(m, v, torch.zeros_like(v))
                tok_sum, tok_n = vz.sum(-1), m.sum(-1)  # [B, L]
                key = (conv, module, quantity)
                sums[key] = sums[key] + tok_sum.sum(0).numpy()
                counts[key] = counts[key] + tok_n.sum(0).numpy()
                first = _first_layer(module, quantity)
                per_sample = (tok_sum / tok_n.clamp(min=1)).numpy()
                for bi, sample in enumerate(sub.index):
                    for li in range(v.shape[1]):
                        n = int(tok_n[bi, li])
                        rows.append({"model": model_name, "sample": int(sample),
                                     "convention": conv, "module": module,
                                     "quantity": quantity, "layer": li + first,
                                     "value": float(per_sample[bi, li]) if n else np.nan,
                                     "tokens": n})
    tidy = pd.DataFrame(rows)
    summary = summarize(tidy, sums, counts)
    return tidy, summary


def summarize(tidy: pd.DataFrame, sums: dict, counts: dict) -> dict[str, Any]:
    """Token-weighted means per layer with 95 % CIs over samples, and the boundary layer."""
    per_layer = []
    for (conv, module, quantity), s in sums.items():
        mean = s / np.maximum(counts[(conv, module, quantity)], 1)
        sel = tidy[(tidy.convention == conv) & (tidy.module == module)
                   & (tidy.quantity == quantity)]
        first = _first_layer(module, quantity)
        for li, m in enumerate(mean):
            vals = sel[sel.layer == li + first]["value"].dropna().to_numpy()
            _, lo, hi = mean_ci(vals) if len(vals) else (np.nan, np.nan, np.nan)
            per_layer.append({"convention": conv, "module": module, "quantity": quantity,
                              "layer": li + first, "mean": float(m), "ci95_lo": float(lo),
                              "ci95_hi": float(hi), "samples": int(len(vals))})
    out: dict[str, Any] = {"per_layer": per_layer}
    for conv in {k[0] for k in sums}:
        key = (conv, "ffn", "delta")
        delta_ffn = sums[key] / np.maximum(counts[key], 1)
        out[f"boundary_layer_{conv}"] = int(boundary_layer(torch.tensor(delta_ffn)))
        out[f"delta_ffn_{conv}"] = [float(x) for x in delta_ffn]
    return out


def _curve(per_layer: pd.DataFrame, conv: str, module: str, quantity: str) -> pd.DataFrame:
    df = per_layer[(per_layer.convention == conv) & (per_layer.module == module)
                   & (per_layer.quantity == quantity)]
    return df.sort_values("layer")


def entropy_flow_figure(per_layer: pd.DataFrame, model_name: str, conv: str = "raw"):
    """Four points per block: input (normed attention input), attention output, FFN
    output, block output h[l]; h[0] at the start."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs, ys, lo, hi, colors = [], [], [], [], []
    parts = [("attn_in", 0.25, "tab:gray"), ("attn", 0.5, "tab:blue"),
             ("ffn", 0.75, "tab:orange"), ("layer", 1.0, "black")]
    h0 = _curve(per_layer, conv, "layer", "entropy")
    h0 = h0[h0.layer == 0]
    xs += [0.0]
    ys += list(h0["mean"])
    lo += list(h0["ci95_lo"])
    hi += list(h0["ci95_hi"])
    colors += ["black"]
    for module, off, color in parts:
        df = _curve(per_layer, conv, module, "entropy")
        df = df[df.layer >= 1]
        for _, r in df.iterrows():
            xs.append(r.layer - 1 + off)
            ys.append(r["mean"])
            lo.append(r.ci95_lo)
            hi.append(r.ci95_hi)
            colors.append(color)
    o = np.argsort(xs)
    xs, ys = np.array(xs)[o], np.array(ys)[o]
    ax.plot(xs, ys, color="0.75", lw=0.8, zorder=1)
    ax.scatter(xs, ys, c=np.array(colors, dtype=object)[o], s=12, zorder=2)
    for label, color in [("normed input", "tab:gray"), ("attention A^l", "tab:blue"),
                         ("FFN F^l", "tab:orange"), ("block output h[l]", "black")]:
        ax.scatter([], [], c=color, s=12, label=label)
    ax.set(xlabel="block", ylabel="entropy (nats)",
           title=f"{model_name}: internal-policy entropy flow ({conv})")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    return fig


def delta_figure(per_layer: pd.DataFrame, model_name: str, conv: str = "raw"):
    """ΔH_attn and ΔH_ffn per block with 95 % CIs over samples (docs/methods.md §1.1)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for module, color in (("attn", "tab:blue"), ("ffn", "tab:orange"), ("layer", "black")):
        df = _curve(per_layer, conv, module, "delta")
        ax.plot(df.layer, df["mean"], marker="o", ms=3, color=color, label=f"ΔH_{module}")
        ax.fill_between(df.layer, df.ci95_lo, df.ci95_hi, color=color, alpha=0.2, lw=0)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set(xlabel="block l (1-based)", ylabel="entropy change (nats)",
           title=f"{model_name}: ΔH per block ({conv})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compare_figure(per_model: dict[str, pd.DataFrame], conv: str = "raw"):
    """Several models on a normalised depth axis: H(h[l]) and ΔH_ffn."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, per_layer in per_model.items():
        h = _curve(per_layer, conv, "layer", "entropy")
        n = h.layer.max()
        axes[0].plot(h.layer / n, h["mean"], marker="o", ms=2, label=name)
        d = _curve(per_layer, conv, "ffn", "delta")
        axes[1].plot(d.layer / d.layer.max(), d["mean"], marker="o", ms=2, label=name)
    axes[0].set(xlabel="relative depth l/L", ylabel="H(π_layer) (nats)",
                title=f"layer-policy entropy ({conv})")
    axes[1].axhline(0, color="0.5", lw=0.6)
    axes[1].set(xlabel="relative depth l/L", ylabel="ΔH_ffn (nats)", title="FFN entropy change")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
