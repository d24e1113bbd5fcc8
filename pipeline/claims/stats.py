"""Intervals of the claims table (docs/methods.md §9.2–§9.4): percentile bootstrap over
units (samples, prompts, responses), paired bootstrap of a mean difference, Student-t
interval over seeds, and the sample size at which an interval would clear a boundary."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

CONF = 0.95
N_BOOT = 2000
_CHUNK = 4_000_000  # resample indices drawn per block (rows of the [B, n] index matrix)


@dataclass(frozen=True)
class Interval:
    """``value`` with its interval ``[low, high]`` from ``n`` units. ``kind`` is
    ``"bootstrap"`` or ``"t"``; ``se`` the standard error (s/√n, or the SD of the bootstrap
    replicates for a generic statistic), used for :func:`n_needed` (§9.4)."""

    value: float
    low: float
    high: float
    n: int
    kind: str
    se: float = math.nan
    conf: float = CONF

    @property
    def sd(self) -> float:
        """Per-unit SD equivalent: ``se · √n`` (NaN when ``n`` is 0)."""
        return self.se * math.sqrt(self.n) if self.n > 0 else math.nan


def finite(values: Any) -> np.ndarray:
    """The finite entries of ``values`` as a flat float64 array (NaN/inf units dropped)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def _check_conf(conf: float) -> None:
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must be in (0, 1), got {conf!r}")


def resample_indices(n: int, n_boot: int = N_BOOT,
                     seed: int | np.random.Generator = 0) -> np.ndarray:
    """The ``[n_boot, n]`` matrix of resample indices, ``rng.integers(0, n, (n_boot, n))``
    with ``rng = np.random.default_rng(seed)`` (§9.2). Every bootstrap here draws exactly
    these rows, in order (in blocks, which give the same stream)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _boot_blocks(n: int, n_boot: int, seed: int | np.random.Generator):
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // max(n, 1))
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def percentile(replicates: np.ndarray, conf: float = CONF) -> tuple[float, float]:
    """The ``(1−conf)/2`` and ``(1+conf)/2`` quantiles of the replicates (linear
    interpolation, numpy's default)."""
    lo, hi = np.quantile(replicates, [(1.0 - conf) / 2.0, (1.0 + conf) / 2.0])
    return float(lo), float(hi)


def _prepare(values, kind: str, conf: float) -> tuple[np.ndarray, int, Interval | None]:
    """Finite values, their count, and the interval of n = 0 (all NaN) or n = 1 (the value
    with NaN bounds), else None."""
    _check_conf(conf)
    arr = finite(values)
    n = arr.size
    if n == 0:
        return arr, 0, Interval(math.nan, math.nan, math.nan, 0, kind, conf=conf)
    if n == 1:
        return arr, 1, Interval(float(arr[0]), math.nan, math.nan, 1, kind, conf=conf)
    return arr, n, None


def bootstrap_mean_ci(values: Any, *, n_boot: int = N_BOOT, conf: float = CONF,
                      seed: int | np.random.Generator = 0) -> Interval:
    """Percentile bootstrap interval of the mean over the finite units (§9.2): ``n_boot``
    resamples with replacement (:func:`resample_indices`), the mean of each, and their
    ``(1±conf)/2`` quantiles. ``se`` = s/√n (ddof=1). n = 0 → all NaN; n = 1 → the value
    with NaN bounds."""
    arr, n, small = _prepare(values, "bootstrap", conf)
    if small is not None:
        return small
    mean = float(arr.mean())
    reps = np.concatenate([arr[idx].mean(axis=1) for idx in _boot_blocks(n, n_boot, seed)])
    lo, hi = percentile(reps, conf)
    se = float(arr.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, lo, hi, n, "bootstrap", se, conf)


def bootstrap_ci(units: Sequence[Any] | np.ndarray, statistic: Callable[[Any], float], *,
                 n_boot: int = N_BOOT, conf: float = CONF,
                 seed: int | np.random.Generator = 0) -> Interval:
    """Percentile bootstrap interval of a generic ``statistic`` of resampled units (§9.2).
    Units are resampled along axis 0 (rows of an array, or items of a sequence, passed to
    ``statistic`` as an array / list in resample order); the same index rows as
    :func:`bootstrap_mean_ci`. Non-finite replicates are dropped (NaN bounds if none is
    left). ``se`` = SD of the replicates (ddof=1). No NaN filtering of the units."""
    _check_conf(conf)
    n = len(units)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "bootstrap", conf=conf)
    value = float(statistic(units))
    if n == 1:
        return Interval(value, math.nan, math.nan, 1, "bootstrap", conf=conf)
    is_array = isinstance(units, np.ndarray)
    reps = []
    for block in _boot_blocks(n, n_boot, seed):
        for idx in block:
            reps.append(statistic(units[idx] if is_array else [units[i] for i in idx]))
    reps_arr = finite(reps)
    if reps_arr.size < 2:
        return Interval(value, math.nan, math.nan, n, "bootstrap", conf=conf)
    lo, hi = percentile(reps_arr, conf)
    return Interval(value, lo, hi, n, "bootstrap", float(reps_arr.std(ddof=1)), conf)


def paired_bootstrap_diff_ci(a: Any, b: Any, *, n_boot: int = N_BOOT, conf: float = CONF,
                             seed: int | np.random.Generator = 0) -> Interval:
    """Paired percentile bootstrap of ``mean(a − b)`` (§9.2): ``a[i]`` and ``b[i]`` are the
    same unit (prompt, problem) and are resampled together; pairs with a non-finite side
    are dropped. Equal to :func:`bootstrap_mean_ci` of the differences."""
    a_arr = np.asarray(a, dtype=np.float64).ravel()
    b_arr = np.asarray(b, dtype=np.float64).ravel()
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired values need equal lengths, got {a_arr.size} and {b_arr.size}")
    return bootstrap_mean_ci(a_arr - b_arr, n_boot=n_boot, conf=conf, seed=seed)


def t_quantile(conf: float, df: float) -> float:
    """Two-sided Student-t quantile ``t_{(1+conf)/2, df}``."""
    return float(student_t.ppf((1.0 + conf) / 2.0, df))


def t_interval(values: Any, conf: float = CONF) -> Interval:
    """Student-t interval of the mean over the finite values (per-seed values, §9.3):
    ``mean ± t_{(1+conf)/2, n−1} · s/√n``, s with ddof=1 (as §7). n = 0 → all NaN;
    n = 1 → the value with NaN bounds."""
    arr, n, small = _prepare(values, "t", conf)
    if small is not None:
        return small
    mean = float(arr.mean())
    se = float(arr.std(ddof=1)) / math.sqrt(n)
    half = t_quantile(conf, n - 1) * se
    return Interval(mean, mean - half, mean + half, n, "t", se, conf)


def half_width(sd: float, n: int, *, conf: float = CONF, approx: str = "z") -> float:
    """Half-width of the interval of a mean from ``n`` units of per-unit SD ``sd`` (§9.4):
    ``q · sd/√n`` with ``q = z_{(1+conf)/2}`` (``approx="z"``, ≈ 1.96) or
    ``t_{(1+conf)/2, n−1}`` (``approx="t"``, needs n ≥ 2)."""
    if n < 1 or (approx == "t" and n < 2):
        return math.inf
    if approx == "z":
        q = float(norm.ppf((1.0 + conf) / 2.0))
    elif approx == "t":
        q = t_quantile(conf, n - 1)
    else:
        raise ValueError(f"approx must be 'z' or 't', got {approx!r}")
    return q * sd / math.sqrt(n)


def n_needed(effect: float, sd: float, boundary: float, *, conf: float = CONF,
             approx: str = "z", max_n: int = 10**9) -> int | None:
    """Smallest n with ``half_width(sd, n) < |effect − boundary|`` (§9.4): the sample size
    at which the interval around the observed ``effect`` would exclude ``boundary`` if the
    per-unit SD stayed ``sd``. z: ``n = ⌊(z·sd/d)²⌋ + 1``; t: the smallest n ≥ that with the
    t quantile. None when it cannot be computed (non-finite input, effect on the boundary,
    or n > ``max_n``); 1 (z) / 2 (t) when ``sd`` is 0."""
    d = abs(effect - boundary)
    if not (math.isfinite(d) and math.isfinite(sd)) or d == 0.0:
        return None
    sd = abs(sd)
    n_min = 2 if approx == "t" else 1
    if half_width(sd, n_min, conf=conf, approx=approx) < d:
        return n_min
    z = float(norm.ppf((1.0 + conf) / 2.0))
    guess = (z * sd / d) ** 2
    if guess > max_n:
        return None

    def clears(n: int) -> bool:
        return half_width(sd, n, conf=conf, approx=approx) < d

    lo, hi = n_min, max(n_min + 1, int(math.floor(guess)) + 1)
    while not clears(hi):  # t ≥ z: the t answer lies above the z one
        lo, hi = hi, 2 * hi
        if hi > 2 * max_n:
            return None
    while hi - lo > 1:  # half-width decreases in n: bisect for the first n that clears
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if clears(mid) else (mid, hi)
    return hi if hi <= max_n else None
