"""Decision depth in the authors' convention (docs/methods.md §4.4): the earliest layer
ranges over blocks 1..L (h[1]..h[L]), never the embedding output h[0], and keeps the
h-index numbering. ``include_embedding=True`` is the earlier behaviour."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.depth import decision_depth_curve, earliest_layer

# [N=4, L+1=5] strict ranks over h[0]..h[4]; rows 0 and 2 are already rank ≤ 10 at h[0]
RANKS = torch.tensor([
    [3, 50, 8, 1, 1],
    [400, 30, 9, 2, 1],
    [1, 1, 1, 1, 1],
    [900, 800, 700, 600, 20],
])


def authors_earliest(ranks: np.ndarray, k: float) -> np.ndarray:
    """The authors' loop: block b = 0..L−1 (0-based) reads h[b+1]; first b with rank ≤ k.
    Returned as the h index b + 1 (−1 if never)."""
    out = []
    for row in ranks:
        hit = -1
        for b in range(len(row) - 1):
            if row[b + 1] <= k:
                hit = b + 1
                break
        out.append(hit)
    return np.array(out)


def test_default_skips_embedding_and_matches_authors():
    for k in (1, 2, 10, 25, 1000):
        ours = earliest_layer(RANKS, k).numpy()
        np.testing.assert_array_equal(ours, authors_earliest(RANKS.numpy(), k))
    # where the conventions differ: h[0] counts only with include_embedding
    assert earliest_layer(RANKS, 10).tolist() == [2, 2, 1, -1]
    assert earliest_layer(RANKS, 10, include_embedding=True).tolist() == [0, 2, 0, -1]
    assert earliest_layer(RANKS, 1, stays=True).tolist() == [3, 4, 1, -1]
    assert earliest_layer(RANKS, 1, stays=True, include_embedding=True).tolist() == [3, 4, 0, -1]


def test_curve_means_follow_the_convention():
    dd = decision_depth_curve(RANKS, [10.0])
    first = dd[dd.variant == "first"].iloc[0]
    assert first.mean_layer == np.mean([2, 2, 1]) and first.n_reached == 3
    old = decision_depth_curve(RANKS, [10.0], include_embedding=True)
    assert old[old.variant == "first"].iloc[0].mean_layer == np.mean([0, 2, 0])
    assert first.num_layers == 4 and first.mean_layer_rel == first.mean_layer / 4
