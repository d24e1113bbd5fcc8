"""Aggregation over response tokens (docs/methods.md §1.1 "Aggregation")."""

from __future__ import annotations

import torch
from torch import Tensor


def aggregate(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Token-weighted and per-sample means of ``values`` [B, L, T] over ``mask`` [B, T].

    ``mask`` marks the response tokens to average over. Non-finite entries (NaN padding)
    are skipped. Returns ``(token_mean [L], per_sample_mean [B, L])``, float32: the first
    weights every selected token equally across the batch (docs/methods.md §1.1), the second is
    one mean per sample (for confidence intervals). An empty selection gives NaN.
    """
    if values.dim() != 3 or mask.shape != (values.shape[0], values.shape[2]):
        raise ValueError(f"expected values [B, L, T] and mask [B, T], got "
                         f"{tuple(values.shape)} and {tuple(mask.shape)}")
    v = values.float()
    keep = mask.bool().to(v.device).unsqueeze(1) & torch.isfinite(v)
    v = torch.where(keep, v, torch.zeros((), dtype=v.dtype, device=v.device))
    count_bl = keep.sum(-1).float()
    sum_bl = v.sum(-1)
    nan = torch.tensor(torch.nan, device=v.device)
    per_sample = torch.where(count_bl > 0, sum_bl / count_bl.clamp(min=1), nan)
    count_l, sum_l = count_bl.sum(0), sum_bl.sum(0)
    token_mean = torch.where(count_l > 0, sum_l / count_l.clamp(min=1), nan)
    return token_mean, per_sample
