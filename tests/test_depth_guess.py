"""The early-guess hallucination probe (docs/methods.md §4.11) against per-read loops."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.depth.guess import STATISTICS, guess_reads, probe_table


def _loop(top1_row, y, early_frac):
    L = len(top1_row) - 1
    depth = L + 1
    for layer in range(L, 0, -1):  # walk down while the top-1 is still y
        if top1_row[layer] != y:
            break
        depth = layer
    e = max(1, int(early_frac * L))
    return depth / L, top1_row[L // 2] == y, any(top1_row[j] == y for j in range(1, e + 1))


def test_reads_match_a_loop() -> None:
    rng = np.random.default_rng(0)
    for L in (1, 4, 9):
        top1 = rng.integers(0, 3, size=(300, L + 1))
        final = rng.integers(0, 3, size=300)
        got = guess_reads(top1, final, early_frac=0.25)
        for i in range(300):
            d, p, e = _loop(top1[i], final[i], 0.25)
            assert got.depth[i] == pytest.approx(d) and got.persists[i] == p
            assert got.early_guess[i] == e


def test_probe_table_diffs_and_intervals() -> None:
    rng = np.random.default_rng(1)
    top1 = rng.integers(0, 4, size=(120, 9))
    final = rng.integers(0, 4, size=120)
    correct = rng.random(120) < 0.4
    reads = guess_reads(top1, final, early_frac=0.25)
    table = probe_table({"logit": reads}, correct)
    assert list(table.statistic) == list(STATISTICS)
    for r in table.itertuples():
        v = reads[r.statistic].to_numpy(float)
        assert r.mean_correct == pytest.approx(v[correct].mean())
        assert r.mean_wrong == pytest.approx(v[~correct].mean())
        assert r.diff == pytest.approx(v[~correct].mean() - v[correct].mean())
        assert r.diff_lo <= r.diff <= r.diff_hi
        assert (r.n_correct, r.n_wrong) == (correct.sum(), (~correct).sum())
    one_sided = probe_table({"logit": reads}, np.ones(120, bool))
    assert one_sided["diff"].isna().all()
