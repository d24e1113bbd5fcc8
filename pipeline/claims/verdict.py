"""Criteria and verdicts of the claims table (docs/methods.md §9.3–§9.4): a claim holds when
its whole interval satisfies the criterion, fails when the whole interval violates it, and
is inconclusive when the interval straddles a boundary."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.claims.record import ClaimRecord
from pipeline.claims.stats import (
    CONF,
    N_BOOT,
    Interval,
    bootstrap_ci,
    bootstrap_mean_ci,
    n_needed,
    paired_bootstrap_diff_ci,
    t_interval,
)


def _g(x: float) -> str:
    return f"{x:g}"


class Criterion:
    """Base of the criteria: NaN value → ``not measurable``; NaN bounds (no interval, e.g.
    n = 1) → ``inconclusive``; else :meth:`_decide` on the interval (§9.3)."""

    label: str | None

    @property
    def text(self) -> str:
        return self.label or self._default_text()

    @property
    def boundaries(self) -> tuple[float, ...]:
        raise NotImplementedError

    def boundary(self, value: float) -> float:
        """The boundary nearest to ``value`` (the one :func:`n_needed` must clear)."""
        return min(self.boundaries, key=lambda b: abs(value - b))

    def decide(self, value: float, ci_low: float, ci_high: float) -> str:
        if value is None or math.isnan(value):
            return "not measurable"
        if ci_low is None or ci_high is None or math.isnan(ci_low) or math.isnan(ci_high):
            return "inconclusive"
        if ci_low > ci_high:
            raise ValueError(f"ci_low {ci_low} > ci_high {ci_high}")
        return self._decide(ci_low, ci_high)

    def _default_text(self) -> str:
        raise NotImplementedError

    def _decide(self, lo: float, hi: float) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class _Threshold(Criterion):
    """A criterion with one boundary, ``threshold``."""

    threshold: float
    label: str | None = None

    @property
    def boundaries(self) -> tuple[float, ...]:
        return (self.threshold,)


@dataclass(frozen=True)
class Greater(_Threshold):
    """``x > threshold``: holds if ci_low > threshold, fails if ci_high ≤ threshold."""

    def _default_text(self) -> str:
        return f"> {_g(self.threshold)}"

    def _decide(self, lo: float, hi: float) -> str:
        if lo > self.threshold:
            return "holds"
        return "fails" if hi <= self.threshold else "inconclusive"


@dataclass(frozen=True)
class Less(_Threshold):
    """``x < threshold``: holds if ci_high < threshold, fails if ci_low ≥ threshold."""

    def _default_text(self) -> str:
        return f"< {_g(self.threshold)}"

    def _decide(self, lo: float, hi: float) -> str:
        if hi < self.threshold:
            return "holds"
        return "fails" if lo >= self.threshold else "inconclusive"


@dataclass(frozen=True)
class Between(Criterion):
    """``lo ≤ x ≤ hi`` (a band, e.g. "≈ 0" within a tolerance): holds if the interval lies
    inside the band, fails if it lies wholly below ``lo`` or above ``hi``."""

    lo: float
    hi: float
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.lo <= self.hi:
            raise ValueError(f"Between needs lo ≤ hi, got {self.lo}, {self.hi}")

    @classmethod
    def near(cls, center: float, tol: float) -> Between:
        """``|x − center| ≤ tol``, written "≈ center (±tol)"."""
        return cls(center - tol, center + tol, f"≈ {_g(center)} (±{_g(tol)})")

    @property
    def boundaries(self) -> tuple[float, ...]:
        return (self.lo, self.hi)

    def _default_text(self) -> str:
        return f"in [{_g(self.lo)}, {_g(self.hi)}]"

    def _decide(self, lo: float, hi: float) -> str:
        if self.lo <= lo and hi <= self.hi:
            return "holds"
        return "fails" if hi < self.lo or lo > self.hi else "inconclusive"


def measure(values: Any, *, kind: str = "bootstrap", paired: Any = None,
            statistic: Callable[[Any], float] | None = None, n_boot: int = N_BOOT,
            conf: float = CONF, seed: int | np.random.Generator = 0) -> Interval:
    """The interval of a claim's metric (§9.2–§9.3). ``kind="bootstrap"``: per-unit values
    → percentile bootstrap of the mean (of ``values − paired`` when ``paired`` is given,
    resampling pairs), or of ``statistic`` over resampled units. ``kind="t"``: per-seed
    values (minus ``paired``, matched by seed) → t-interval."""
    if kind == "t":
        if statistic is not None:
            raise ValueError("a t-interval is of the mean; statistic needs kind='bootstrap'")
        diff = values if paired is None else _diff(values, paired)
        return t_interval(diff, conf)
    if kind != "bootstrap":
        raise ValueError(f"kind must be 'bootstrap' or 't', got {kind!r}")
    if statistic is not None:
        if paired is not None:
            raise ValueError("paired and statistic cannot be combined")
        return bootstrap_ci(values, statistic, n_boot=n_boot, conf=conf, seed=seed)
    if paired is not None:
        return paired_bootstrap_diff_ci(values, paired, n_boot=n_boot, conf=conf, seed=seed)
    return bootstrap_mean_ci(values, n_boot=n_boot, conf=conf, seed=seed)


def _diff(a: Any, b: Any) -> np.ndarray:
    a_arr = np.asarray(a, dtype=np.float64).ravel()
    b_arr = np.asarray(b, dtype=np.float64).ravel()
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired values need equal lengths, got {a_arr.size} and {b_arr.size}")
    return a_arr - b_arr


def make_record(*, claim_id: str, paper: str, claim: str, model: str, run: str, split: str,
                metric: str, criterion: Criterion, values: Any = None,
                kind: str = "bootstrap", paired: Any = None,
                statistic: Callable[[Any], float] | None = None,
                interval: Interval | None = None, n_boot: int = N_BOOT, conf: float = CONF,
                seed: int | np.random.Generator = 0, reason: str = "",
                figure: str | None = None) -> ClaimRecord:
    """One :class:`ClaimRecord` in one call (§9): the interval from raw ``values``
    (:func:`measure`) or a precomputed ``interval`` (a stage's own), then the verdict of
    ``criterion``, and for ``inconclusive`` the n that would clear the nearest boundary at
    the observed effect (z for bootstrap, t for seeds; at least n + 1). ``values=None``, no
    finite unit or a NaN value → ``not measurable``; ``reason`` is kept and the automatic
    reason appended."""
    notes: list[str] = [reason] if reason else []
    if interval is not None:
        if values is not None:
            raise ValueError("give values or interval, not both")
        iv = interval
    elif values is None:
        iv = Interval(math.nan, math.nan, math.nan, 0, kind, conf=conf)
    else:
        iv = measure(values, kind=kind, paired=paired, statistic=statistic, n_boot=n_boot,
                     conf=conf, seed=seed)
    verdict = "not measurable" if iv.n == 0 else criterion.decide(iv.value, iv.low, iv.high)
    needed = None
    if verdict == "not measurable" and not notes:
        notes.append("no values" if values is None and interval is None
                     else "no finite values (n = 0)" if iv.n == 0 else "value is NaN")
    elif verdict == "inconclusive":
        if math.isnan(iv.low) or math.isnan(iv.high):
            notes.append(f"no interval from n = {iv.n}")
        else:
            needed = n_needed(iv.value, iv.sd, criterion.boundary(iv.value), conf=iv.conf,
                              approx="t" if iv.kind == "t" else "z")
            if needed is None:
                notes.append("n_needed undefined (no SD, effect on the boundary, or beyond 10⁹)")
            else:  # the formula is symmetric, a bootstrap interval need not be
                needed = max(needed, iv.n + 1)
    return ClaimRecord(
        claim_id=claim_id, paper=paper, claim=claim, model=model, run=run, split=split,
        metric=metric, value=iv.value, ci_low=iv.low, ci_high=iv.high, ci_kind=iv.kind,
        n=iv.n, criterion=criterion.text, verdict=verdict, reason="; ".join(notes),
        n_needed=needed, figure=figure,
        boundary=float(criterion.boundary(iv.value if math.isfinite(iv.value) else 0.0)))

