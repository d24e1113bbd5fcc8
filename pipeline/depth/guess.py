"""The early-guess hallucination probe (docs/methods.md §4.11; extension): do wrong first
answer tokens come from early guesses the later layers fail to correct?

On the fact set's first-answer-token reads (teacher-forced prompt, one read per fact),
split by whether the model's greedy token is the gold token (``correct``) or not
(``wrong``). Per read, from the lens's top-1 at h[0]..h[L] and the model's token ``y``:

- ``depth``: decision depth of the model's own token, the first layer l ≥ 1 from which
  the lens's top-1 is ``y`` through h[L] (L + 1 if never; relative: / L);
- ``persists``: the top-1 at h[⌊L/2⌋] is already ``y`` (guess persistence);
- ``early_guess``: ``y`` is the top-1 of some early layer h[1]..h[e], e = max(1,
  ⌊early_frac·L⌋) (for a wrong read: the wrong answer was an early guess).

Per lens and statistic: the mean in each group and ``wrong − correct`` with a 95 %
bootstrap interval over facts (each fact one unit; 2,000 resamples, seeded).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from pipeline.claims.stats import bootstrap_ci

STATISTICS = ("depth", "persists", "early_guess")


def guess_reads(top1: np.ndarray, final: np.ndarray, *, early_frac: float) -> pd.DataFrame:
    """Per read [N]: ``depth`` (relative, 1..L over L), ``persists``, ``early_guess``."""
    top1, final = np.asarray(top1), np.asarray(final)
    L = top1.shape[1] - 1
    hit = top1[:, 1:] == final[:, None]                        # h[1]..h[L]
    # first l from which every later layer also hits: after the last miss
    miss = ~hit
    last_miss = np.where(miss.any(1), L - np.argmax(miss[:, ::-1], 1), 0)  # 1-based layer
    depth = last_miss + 1                                      # L + 1: never settles
    e = max(1, int(early_frac * L))
    return pd.DataFrame({"depth": depth / L, "persists": top1[:, L // 2] == final,
                         "early_guess": hit[:, :e].any(1)})


def probe_table(reads: Mapping[str, pd.DataFrame], correct: np.ndarray, *,
                seed: int = 0) -> pd.DataFrame:
    """Per lens and statistic: ``mean_correct``, ``mean_wrong``, ``diff`` (wrong − correct)
    with ``diff_lo`` / ``diff_hi`` (bootstrap over facts), ``n_correct``, ``n_wrong``."""
    correct = np.asarray(correct, dtype=bool)
    rows = []
    for lens, r in reads.items():
        for stat in STATISTICS:
            v = r[stat].to_numpy(dtype=float)
            units = np.column_stack([v, correct.astype(float)])

            def diff(u: np.ndarray) -> float:
                ok = u[:, 1] > 0.5
                if ok.all() or not ok.any():
                    return float("nan")
                return float(u[~ok, 0].mean() - u[ok, 0].mean())

            ci = bootstrap_ci(units, diff, seed=seed)
            rows.append({"lens": lens, "statistic": stat,
                         "mean_correct": float(v[correct].mean()) if correct.any() else np.nan,
                         "mean_wrong": float(v[~correct].mean()) if (~correct).any() else np.nan,
                         "diff": ci.value, "diff_lo": ci.low, "diff_hi": ci.high,
                         "n_correct": int(correct.sum()), "n_wrong": int((~correct).sum())})
    return pd.DataFrame(rows)
