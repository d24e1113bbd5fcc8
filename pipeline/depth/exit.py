"""Early exit, simulated exactly from per-layer lens reads (docs/methods.md §4.10).

A read is one position of a text: the lens's top-1 token ``top1[:, l]`` and its largest
probability ``maxprob[:, l]`` at every hidden state h[0]..h[L] (:func:`pipeline.depth.ranks.
multi_lens_predictions`), and the model's own greedy token ``final``. An exit head (the
logit or the tuned lens) with a confidence rule decides, layer by layer from h[1], whether
to stop there:

- ``confidence`` τ: exit at the first h[l], 1 ≤ l < L, whose ``maxprob`` ≥ τ;
- ``stability`` m: exit at the first h[l], m ≤ l < L, whose top-1 is the same at
  h[l−m+1]..h[l] (unchanged for m consecutive layers).

A read no rule stops runs the whole model: it exits at L with the model's own token.
An exit at l uses l of the L blocks (``layers_used`` = l, ``fraction`` = l / L), and
emits the head's top-1 there; ``agree`` says whether that is the model's greedy token.
This is what "exit and stop" would emit for that position given the same context (the
context itself computed by the full model: the teacher-forced simulation, not a decoder
that skips blocks, whose later positions would see the skipped blocks' keys and values
computed from the exited state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

RULES = ("confidence", "stability")
#: Thresholds of each rule in the stage's table: τ (max probability) and m (layers).
THRESHOLDS: dict[str, tuple[float, ...]] = {
    "confidence": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
    "stability": (2, 3, 4, 6, 8),
}
Z95 = 1.959963984540054


def exit_layers(top1: np.ndarray, maxprob: np.ndarray, *, rule: str,
                threshold: float) -> np.ndarray:
    """The exit layer of every read [N] (1..L; L = no early exit) under ``rule`` with
    ``threshold`` (τ, or m layers), from ``top1`` and ``maxprob`` [N, L+1]."""
    top1, maxprob = np.asarray(top1), np.asarray(maxprob)
    n, cols = top1.shape
    L = cols - 1
    if rule == "confidence":
        ok = maxprob[:, 1:L] >= threshold                      # candidates h[1]..h[L-1]
    elif rule == "stability":
        m = int(threshold)
        if m < 1 or m != threshold:
            raise ValueError(f"stability needs a whole number of layers m >= 1, got {threshold}")
        run = np.ones((n, max(L - 1, 0)), dtype=np.int64)     # run length ending at h[l]
        for j in range(1, L - 1):
            same = top1[:, j + 1] == top1[:, j]
            run[:, j] = np.where(same, run[:, j - 1] + 1, 1)
        ok = run >= m
    else:
        raise ValueError(f"unknown exit rule {rule!r}; known: {RULES}")
    return np.where(ok.any(1), ok.argmax(1) + 1, L) if ok.shape[1] else np.full(n, L)


def exited_tokens(top1: np.ndarray, final: np.ndarray, exits: np.ndarray) -> np.ndarray:
    """The token each read emits: the head's top-1 at its exit layer, the model's own
    greedy token where it ran every block (exit L)."""
    top1 = np.asarray(top1)
    L = top1.shape[1] - 1
    tok = top1[np.arange(len(exits)), exits]
    return np.where(exits >= L, np.asarray(final), tok)


def wilson(k: float, n: int) -> tuple[float, float]:
    """95 % Wilson interval of a proportion k / n (NaNs for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p, z2 = k / n, Z95 ** 2
    mid = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return float(mid - half), float(mid + half)


def exit_curves(reads: Mapping[str, Mapping[str, np.ndarray]],
                classes: Mapping[str, np.ndarray], *,
                thresholds: Mapping[str, Sequence[float]] = THRESHOLDS) -> pd.DataFrame:
    """One row per (lens = exit head, rule, threshold, token class): ``n`` reads, ``layers_used``
    (mean exit layer), ``fraction`` (of the L blocks), ``agreement`` with the model's
    greedy token and its 95 % Wilson interval, ``exited`` (share that stopped before L).

    ``reads``: per head (lens name) ``{"top1", "maxprob" [N, L+1], "final" [N]}`` over the
    same N reads; ``classes``: token class → boolean mask [N] (a read may be in several)."""
    rows = []
    for head, r in reads.items():
        top1, maxprob, final = r["top1"], r["maxprob"], r["final"]
        L = top1.shape[1] - 1
        for rule in RULES:
            for thr in thresholds[rule]:
                exits = exit_layers(top1, maxprob, rule=rule, threshold=thr)
                agree = exited_tokens(top1, final, exits) == final
                for cls, mask in classes.items():
                    mask = np.asarray(mask, dtype=bool)
                    n = int(mask.sum())
                    k = int(agree[mask].sum())
                    lo, hi = wilson(k, n)
                    rows.append({
                        "lens": head, "rule": rule, "threshold": float(thr), "token_class": cls,
                        "n": n, "num_layers": L,
                        "layers_used": float(exits[mask].mean()) if n else float("nan"),
                        "fraction": float(exits[mask].mean() / L) if n else float("nan"),
                        "agreement": k / n if n else float("nan"),
                        "agreement_lo": lo, "agreement_hi": hi,
                        "exited": float((exits[mask] < L).mean()) if n else float("nan")})
    return pd.DataFrame(rows)


def best_points(curves: pd.DataFrame, *, min_agreement: float = 0.98,
                token_class: str = "all") -> pd.DataFrame:
    """Per (head, rule) the threshold with the fewest layers used whose agreement is at
    least ``min_agreement`` in ``token_class`` (none: the row is left out)."""
    sub = curves[(curves.token_class == token_class) & (curves.agreement >= min_agreement)]
    if sub.empty:
        return sub
    return (sub.sort_values(["lens", "rule", "fraction"])
            .groupby(["lens", "rule"], as_index=False).head(1).reset_index(drop=True))


def exit_figure(curves: pd.DataFrame, model_name: str):
    """Agreement against the fraction of layers used, one line per head and rule, one panel
    per token class (methods §4.10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(curves.token_class))
    fig, axes = plt.subplots(1, len(classes), figsize=(4.2 * len(classes), 3.6), squeeze=False,
                             sharey=True)
    for ax, cls in zip(axes[0], classes, strict=True):
        sub = curves[curves.token_class == cls]
        for (head, rule), g in sub.groupby(["lens", "rule"], sort=False):
            g = g.sort_values("fraction")
            ax.plot(g.fraction, g.agreement, marker="o" if rule == "confidence" else "s",
                    ms=3, lw=1.2, ls="-" if head == "tuned" else "--", label=f"{head}, {rule}")
            ax.fill_between(g.fraction, g.agreement_lo, g.agreement_hi, alpha=0.12)
        ax.axhline(0.98, color="grey", lw=0.6, ls=":")
        n = int(sub.n.max()) if len(sub) else 0
        ax.set(title=f"{cls} (n={n})", xlabel="fraction of layers used", xlim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("agreement with the full model's token")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{model_name}: simulated early exit (lens as exit head)", fontsize=10)
    fig.tight_layout()
    return fig
