"""Per-head attention statistics from q/k in query-row chunks (docs/methods.md §3.11 Memory).

Never materialises a full ``[H, N, N]`` map: for each chunk of query rows
``[t0, t1)`` it recomputes ``A = softmax(q kᵀ · scaling)`` in fp32 over keys ``[0, t1)``
(causal + padding + optional sliding-window mask) and reduces it at once to, per head:

- ``dist_sum[b, h] = Σ_{t∈R} Σ_s A[t,s]·(t−s)`` (head distance numerator; ``Σ_s A·s`` is
  one mat-vec per row),
- ``waad[b, h, t] = Σ_{s≤t} A[t,s]·min(t−s, W)`` through the diagonal identity
  ``W − Σ_{d<W} A[t,t−d]·(W−d)`` (only W diagonals are read),
- ``fai_sum[b, h, s] = Σ_{t∈R, H_lo ≤ t−s ≤ H_hi} A[t,s]`` (only diagonals
  ``H_lo..H_hi`` are read).

All three are linear in ``A``, so group means (``Ā_loc``, ``Ā_glob``) are means of these
per-head values. Peak memory is ``O(B·H·chunk·N)``; only rows between the first and last
row of ``row_mask`` are computed. Index distances equal distances between real tokens
because the attention mask is contiguous per row (left or right padding; checked by the
caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

DEFAULT_CHUNK_BYTES = 256 * 2**20


@dataclass
class HeadStats:
    """Reductions of one layer's attention (fp32); see the module docstring."""

    dist_sum: Tensor  # [B, H]
    waad: Tensor  # [B, H, T]; 0 outside the computed rows
    fai_sum: Tensor  # [B, H, T]


def exp_scores(
    q: Tensor,
    k: Tensor,
    key_mask: Tensor,
    t0: int,
    t1: int,
    *,
    scaling: float,
    sliding_window: int | None = None,
) -> Tensor:
    """Unnormalised fp32 ``exp(q kᵀ·scaling − rowmax)`` of query rows ``[t0, t1)`` over
    keys ``[0, t1)``: ``[B, H, t1−t0, t1]`` (one block, computed in place). ``q [B, H, T,
    D]``, ``k [B, KV, T, D]`` (GQA: query head ``h`` uses KV head ``h // (H // KV)``),
    ``key_mask [B, T]`` bool. Masked scores are set to the fp32 minimum (as HF's eager
    mask): rows without any real key (padding queries) come out uniform instead of NaN,
    real rows get exact zeros there."""
    b, h, _, d = q.shape
    kv = k.shape[1]
    n = t1 - t0
    qc = (q[:, :, t0:t1].float() * scaling).reshape(b, kv, (h // kv) * n, d)
    scores = torch.matmul(qc, k[:, :, :t1].float().transpose(-1, -2)).view(b, h, n, t1)
    neg = torch.finfo(torch.float32).min
    rows = torch.arange(t0, t1, device=q.device)[:, None]
    cols = torch.arange(t0, t1, device=q.device)[None, :]
    scores[..., t0:t1].masked_fill_(cols > rows, neg)  # causal part: the diagonal block only
    keys = key_mask[:, :t1].bool()
    if not bool(keys.all()):
        scores.masked_fill_(~keys[:, None, None, :], neg)
    if sliding_window is not None and t1 > t0 - sliding_window + 1:
        all_cols = torch.arange(t1, device=q.device)[None, :]
        scores.masked_fill_(rows - all_cols >= sliding_window, neg)
    return scores.sub_(scores.amax(-1, keepdim=True)).exp_()


def attention_rows(q: Tensor, k: Tensor, key_mask: Tensor, t0: int, t1: int,
                   **kwargs: Any) -> Tensor:
    """Attention probabilities ``A[t, s]`` of rows ``[t0, t1)``: :func:`exp_scores` (same
    arguments, ``scaling`` and ``sliding_window`` by keyword) normalised per row."""
    e = exp_scores(q, k, key_mask, t0, t1, **kwargs)
    return e.div_(e.sum(-1, keepdim=True))


def head_stats(
    q: Tensor,
    k: Tensor,
    key_mask: Tensor,
    row_mask: Tensor,
    *,
    scaling: float,
    window: int,
    h_lo: int,
    h_hi: int,
    chunk_size: int | None = None,
    sliding_window: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> HeadStats:
    """Chunked reductions for one layer (docs/methods.md §3). ``row_mask [B, T]`` bool marks the
    query rows ``R`` (response tokens); ``chunk_size=None`` sizes chunks so one fp32 score
    block ``[B, H, chunk, N]`` stays under ``chunk_bytes``. The block is never normalised:
    one skinny matmul ``E @ [1, s]`` gives the row sums ``Z`` and ``Σ_s E·s`` together, and
    only the diagonals read for WAAD/FAI are divided by ``Z``."""
    b, h, t, _ = q.shape
    dev = q.device
    dist_sum = torch.zeros(b, h, device=dev)
    waad = torch.zeros(b, h, t, device=dev)
    fai_sum = torch.zeros(b, h, t, device=dev)
    rows = row_mask.any(0).nonzero().flatten()
    if rows.numel() == 0:
        return HeadStats(dist_sum, waad, fai_sum)
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    if chunk_size is None:
        chunk_size = max(1, chunk_bytes // (4 * b * h * r1))
    idx = torch.arange(r1, device=dev, dtype=torch.float32)
    basis = torch.stack([torch.ones_like(idx), idx], -1)  # [r1, 2]: row sum, Σ_s E·s
    rw_all = row_mask.float()
    for t0 in range(r0, r1, chunk_size):
        t1 = min(t0 + chunk_size, r1)
        e = exp_scores(q, k, key_mask, t0, t1, scaling=scaling, sliding_window=sliding_window)
        zm = torch.matmul(e, basis[:t1])  # [B, H, n, 2]
        inv_z = zm[..., 0].reciprocal()
        rw = rw_all[:, t0:t1]  # [B, n]
        # head distance: Σ_s A[t,s](t−s) = t − Σ_s A[t,s]·s
        dist = idx[t0:t1] - zm[..., 1] * inv_z
        dist_sum += (dist * rw[:, None]).sum(-1)
        # WAAD via the diagonal identity: W − Σ_{d<W} A[t,t−d]·(W−d)
        acc = torch.zeros_like(dist)
        for dd in range(min(window, t1)):
            diag = e.diagonal(offset=t0 - dd, dim1=-2, dim2=-1)
            start = max(0, dd - t0)
            acc[..., start : start + diag.shape[-1]] += (window - dd) * diag
        waad[:, :, t0:t1] = window - acc * inv_z
        # FAI numerator: diagonals H_lo..H_hi, row t adds A[t, t−dd] to key t−dd
        row_w = rw[:, None] * inv_z  # [B, H, n]
        for dd in range(h_lo, min(h_hi, t1 - 1) + 1):
            diag = e.diagonal(offset=t0 - dd, dim1=-2, dim2=-1)
            start = max(0, dd - t0)
            m = diag.shape[-1]
            if m == 0:
                continue
            s0 = t0 + start - dd
            fai_sum[:, :, s0 : s0 + m] += diag * row_w[..., start : start + m]
        del e
    return HeadStats(dist_sum, waad, fai_sum)
