"""Tests for pipeline.evaluation metrics (docs/methods.md §5: pass@k, avg@k, CIs)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from pipeline.evaluation import avg_at_k, mean_ci, pass_at_k


def _brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of k-subsets of n samples (c correct) that contain a correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(samples[i] for i in s) for s in subsets)
    return Fraction(hits, len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            got = pass_at_k(n, c, k)
            want = _brute_pass_at_k(n, c, k)
            assert got == pytest.approx(float(want), abs=1e-12), (n, c, k)
            if n - c < k:
                assert got == 1.0
            if c == 0:
                assert got == 0.0


def test_pass_at_k_edge_cases() -> None:
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)
    assert pass_at_k(16, 16, 16) == 1.0
    assert pass_at_k(10, 1, 10) == 1.0  # n - c = 9 < k = 10
    assert pass_at_k(10, 1, 9) == pytest.approx(0.9)
    assert isinstance(pass_at_k(np.int64(5), np.int64(2), np.int64(2)), float)


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1), (5, 2.0, 1), (5, True, 1)],
)
def test_pass_at_k_invalid(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_large_n() -> None:
    n, c, k = 1000, 3, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    got = pass_at_k(n, c, k)
    assert math.isfinite(got)
    assert got == pytest.approx(float(exact), rel=1e-12)
    # also where the naive float comb ratio would overflow
    n, c, k = 5000, 7, 2500
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_k_monotone_in_k() -> None:
    vals = [pass_at_k(32, 3, k) for k in range(1, 33)]
    assert all(a <= b for a, b in itertools.pairwise(vals))


def test_avg_at_k() -> None:
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k(np.array([0, 1, 1, 0])) == 0.5
    assert avg_at_k([False] * 16) == 0.0
    assert isinstance(avg_at_k([True]), float)
    # avg@k equals the unbiased pass@1
    flags = [True, False, False, True, True, False, False, False]
    assert avg_at_k(flags) == pytest.approx(pass_at_k(len(flags), sum(flags), 1))
    with pytest.raises(ValueError):
        avg_at_k([])


def test_mean_ci_hand_computation() -> None:
    # values 1..5: mean 3, s = sqrt(2.5), t_{0.975, 4} = 2.7764451051977987
    mean, lo, hi = mean_ci([1, 2, 3, 4, 5])
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert mean == 3.0
    assert lo == pytest.approx(3.0 - half, rel=1e-12)
    assert hi == pytest.approx(3.0 + half, rel=1e-12)
    # 90 %: t_{0.95, 4} = 2.1318467863266499
    _, lo90, hi90 = mean_ci(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), conf=0.90)
    assert hi90 - 3.0 == pytest.approx(2.1318467863266499 * math.sqrt(0.5), rel=1e-12)
    assert lo < lo90 < 3.0 < hi90 < hi


def test_mean_ci_degenerate() -> None:
    mean, lo, hi = mean_ci([0.25])
    assert mean == 0.25 and math.isnan(lo) and math.isnan(hi)
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1.0, 2.0], conf=1.0)
