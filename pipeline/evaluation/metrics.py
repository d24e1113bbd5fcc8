"""Benchmark metrics: unbiased pass@k, avg@k and t-based confidence intervals
(docs/methods.md §5)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["pass_at_k", "avg_at_k", "mean_ci"]


def _as_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (docs/methods.md §5).

    ``1 - C(n-c, k) / C(n, k)`` computed in the stable product form
    ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``; exactly 1.0 when ``n - c < k``.
    Requires ``0 <= c <= n`` and ``1 <= k <= n`` (ValueError otherwise).
    """
    n, c, k = _as_int("n", n), _as_int("c", c), _as_int("k", k)
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct: Sequence[bool] | np.ndarray | Iterable[bool]) -> float:
    """avg@k: mean pass@1 over the k samples of one problem (fraction correct,
    docs/methods.md §5)."""
    arr = np.asarray(list(correct) if not isinstance(correct, np.ndarray) else correct)
    if arr.size == 0:
        raise ValueError("avg_at_k needs at least one sample")
    return float(np.mean(arr.astype(np.float64)))


def mean_ci(values: Sequence[float] | np.ndarray, conf: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: two-sided Student-t confidence interval of the mean.

    ``mean ± t_{(1+conf)/2, n-1} · s / sqrt(n)`` with ``s`` the sample std (ddof=1).
    One value gives ``(v, nan, nan)``; no values or ``conf`` outside (0, 1) -> ValueError.
    """
    from scipy.stats import t

    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must be in (0, 1), got {conf!r}")
    arr = np.asarray(values, dtype=np.float64).ravel()
    n = arr.size
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(arr.mean())
    if n == 1:
        return mean, math.nan, math.nan
    half = float(t.ppf((1.0 + conf) / 2.0, n - 1)) * float(arr.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half
