"""Helpers shared by the stage claim functions (docs/methods.md §9.5): figure paths, a
two-sample bootstrap, records with an interval but no criterion, and reading JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.claims.record import ClaimRecord
from pipeline.claims.stats import CONF, N_BOOT, Interval, finite, percentile, resample_indices

PAPER_BUPO = "arXiv:2512.19673"
PAPER_RHYTHM = "arXiv:2510.13554"
PAPER_DEPTH = "arXiv:2510.18871"


def read_json(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def figure(root: str | Path, rel: str) -> str | None:
    """``rel`` (relative to the experiment root) when that figure exists, else None."""
    return rel if (Path(root) / rel).is_file() else None


def rel(root: str | Path, path: str | Path) -> str:
    """``path`` relative to ``root`` (as the claims table stores figure paths)."""
    return str(Path(path).relative_to(Path(root)))


def quarter(num_layers: int) -> int:
    """Layers in a quarter of the model: ``max(1, ⌊L/4⌋)`` (§9.5)."""
    return max(1, num_layers // 4)


def two_sample_ci(a: np.ndarray, b: np.ndarray,
                  statistic: Callable[[np.ndarray, np.ndarray], float], *,
                  n_boot: int = N_BOOT, conf: float = CONF, seed: int = 0) -> Interval:
    """Percentile bootstrap of ``statistic(a, b)`` with ``a`` and ``b`` resampled
    independently along axis 0 (two unpaired sets of units, §9.5): the index rows of
    :func:`resample_indices` with seeds ``seed`` (a) and ``seed + 1`` (b). ``n`` is
    ``len(a) + len(b)``; ``se`` the SD of the replicates. Fewer than 2 units on a side →
    NaN bounds."""
    a, b = np.asarray(a), np.asarray(b)
    n = len(a) + len(b)
    if len(a) == 0 or len(b) == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "bootstrap", conf=conf)
    value = float(statistic(a, b))
    if len(a) < 2 or len(b) < 2:
        return Interval(value, math.nan, math.nan, n, "bootstrap", conf=conf)
    ia = resample_indices(len(a), n_boot, seed)
    ib = resample_indices(len(b), n_boot, seed + 1)
    reps = finite([statistic(a[i], b[j]) for i, j in zip(ia, ib, strict=True)])
    if reps.size < 2:
        return Interval(value, math.nan, math.nan, n, "bootstrap", conf=conf)
    lo, hi = percentile(reps, conf)
    return Interval(value, lo, hi, n, "bootstrap", float(reps.std(ddof=1)), conf)


def with_value(iv: Interval, value: float) -> Interval:
    """``iv`` with the stage's own ``value`` in place of the recomputed one (the interval
    is the bootstrap's; §9.5: the value is never recomputed when a stage wrote it)."""
    return Interval(float(value), iv.low, iv.high, iv.n, iv.kind, iv.se, iv.conf)


def mismatch_note(stage: float, recomputed: float, what: str = "value") -> str:
    """A note when the stage's number and the one the bootstrap recomputes from the tables
    differ (they should not: the interval would then not belong to the value)."""
    if not (math.isfinite(stage) and math.isfinite(recomputed)):
        return ""
    if abs(stage - recomputed) <= 1e-6 * max(1.0, abs(stage)):
        return ""
    return f"stage {what} {stage:.6g} ≠ {recomputed:.6g} recomputed from the tables"


def unjudged(*, claim_id: str, paper: str, claim: str, model: str, run: str, split: str,
             metric: str, interval: Interval, criterion: str, reason: str,
             figure: str | None = None) -> ClaimRecord:
    """A ``descriptive`` record: a measured value, interval and n that no paper predicts,
    so no criterion judges it (§9.3)."""
    return ClaimRecord(
        claim_id=claim_id, paper=paper, claim=claim, model=model, run=run, split=split,
        metric=metric, value=interval.value, ci_low=interval.low, ci_high=interval.high,
        ci_kind=interval.kind, n=interval.n, criterion=criterion, verdict="descriptive",
        reason=reason, figure=figure)


def join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)
