"""Statistics of the comparison (all two-sided 95 % Student-t intervals):

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

Pure functions over tidy tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.evaluation.metrics import mean_ci

BASE = "base"  # method name of the starting (base / SFT) models
SHARED_SEED = -1  # seed of a run every seed shares (the base model's analyses)
CONF = 0.95
RUN = ["method", "seed"]


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


# --------------------------------------------------------------------------- aggregation
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

