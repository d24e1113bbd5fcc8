"""Advantages and the clipped policy surrogate of GRPO-style training (docs/methods.md §2, §3).

Rewards are one scalar per response, ordered so that each prompt's ``group_size``
responses are contiguous (``rewards[g*G:(g+1)*G]`` is group ``g``). Advantages are per
response ``[N]`` and broadcast to the response tokens, or per token ``[N, T]`` once shaped
by attention credit (``Ã_t = γ_t·Â_t``, docs/methods.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 1e-6


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """``rewards`` [N] as [N/G, G] fp32; ValueError if N is not a multiple of G."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.float().reshape(-1, group_size)


def group_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """GRPO: ``Â_i = (R_i − mean(R_grp)) / (std(R_grp) + 1e-6)``, unbiased std; a group of
    one gets 0 and a constant group 0 (docs/methods.md §2). Returns fp32 [N]."""
    r = _groups(rewards, group_size)
    if group_size == 1:
        return torch.zeros_like(r).reshape(-1)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=True, keepdim=True) + EPS)
    return adv.reshape(-1)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO: ``A_i = R_i − mean_{j≠i} R_j`` = ``G/(G−1)·(R_i − mean(R_grp))`` (leave-one-out
    baseline, no scaling by the std); a group of one gets 0. fp32 [N]."""
    r = _groups(rewards, group_size)
    if group_size == 1:
        return torch.zeros_like(r).reshape(-1)
    return ((r - r.mean(1, keepdim=True)) * group_size / (group_size - 1)).reshape(-1)


def reinforce_pp_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    lengths: Tensor | None = None,
    group_baseline: bool = False,
) -> Tensor:
    """REINFORCE++ (Hu, arXiv 2501.03262) for outcome rewards without a KL term.

    Reading: REINFORCE++ uses no critic and no group baseline; the per-token return is the
    (KL-penalised) outcome reward, and advantages are whitened over the *whole batch*:
    ``A_i = (R_i − mean_batch(R)) / (std_batch(R) + 1e-6)`` with the population std, as
    OpenRLHF's ``masked_whiten``. With ``lengths`` [N] the batch statistics are
    token-weighted (OpenRLHF whitens over all response tokens; the return is constant
    along a response, so this is a length-weighted mean/std over responses); without them
    each response counts once. ``group_baseline=True`` first subtracts the group mean
    (the "REINFORCE++-baseline" variant). ``group_size`` only shapes the groups; a
    constant batch gets 0. fp32 [N].
    """
    r = _groups(rewards, group_size)
    if group_baseline:
        r = r - r.mean(1, keepdim=True)
    r = r.reshape(-1)
    w = torch.ones_like(r) if lengths is None else lengths.float().to(r.device).clamp(min=0)
    if w.shape != r.shape:
        raise ValueError(f"lengths shape {tuple(w.shape)} != rewards {tuple(r.shape)}")
    w = w / w.sum().clamp(min=EPS)
    mean = (w * r).sum()
    std = (w * (r - mean) ** 2).sum().sqrt()
    return (r - mean) / (std + EPS)


ADVANTAGES = {
    "grpo": group_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
}


@dataclass
class LossStats:
    """:func:`policy_loss_stats` result: the loss and diagnostics over the masked tokens."""

    loss: Tensor  # scalar, differentiable
    clip_frac: float  # tokens where the clipped branch is active (gradient zeroed)
    clip_low_frac: float  # ratio < 1 − ε_low with Â < 0
    clip_high_frac: float  # ratio > 1 + ε_high with Â > 0
    ratio_mean: float
    num_tokens: int


def policy_loss_stats(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    num_tokens: float | None = None,
) -> LossStats:
    """Clipped surrogate ``−min(ρ·Â, clip(ρ, 1−ε_low, 1+ε_high)·Â)``, ``ρ = exp(logp −
    old_logp)``, summed over the masked tokens of the batch and divided by their number
    (token-mean, docs/methods.md §2). ``logp``, ``old_logp``, ``mask``: [B, T]; ``advantages``
    [B] (broadcast over tokens) or [B, T]. ``num_tokens`` overrides the divisor (gradient
    accumulation: pass the token count of the whole minibatch to every micro-batch)."""
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"shapes differ: logp {tuple(logp.shape)}, old_logp "
                         f"{tuple(old_logp.shape)}, mask {tuple(mask.shape)}")
    adv = advantages.to(logp.device, torch.float32)
    if adv.dim() == 1:
        adv = adv[:, None]
    elif adv.shape != logp.shape:
        raise ValueError(f"advantages must be [B] or {tuple(logp.shape)}, got {tuple(adv.shape)}")
    m = mask.to(logp.device).bool()
    ratio = torch.exp(logp.float() - old_logp.detach().float())
    surr = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(surr, clipped)
    n = int(m.sum())
    denom = float(num_tokens) if num_tokens is not None else max(n, 1)
    loss = torch.where(m, per_token, torch.zeros_like(per_token)).sum() / denom
    with torch.no_grad():
        r = ratio.detach()
        low = (r < 1.0 - clip_low) & (adv < 0) & m
        high = (r > 1.0 + clip_high) & (adv > 0) & m
        k = max(n, 1)
        stats = LossStats(
            loss=loss,
            clip_frac=float((low | high).sum()) / k,
            clip_low_frac=float(low.sum()) / k,
            clip_high_frac=float(high.sum()) / k,
            ratio_mean=float(r[m].mean()) if n else 1.0,
            num_tokens=n,
        )
    return stats


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *,
                clip_low: float = 0.2, clip_high: float = 0.2,
                num_tokens: float | None = None) -> Tensor:
    """Token-mean clipped surrogate (docs/methods.md §2); see :func:`policy_loss_stats`."""
    return policy_loss_stats(logp, old_logp, advantages, mask, clip_low=clip_low,
                             clip_high=clip_high, num_tokens=num_tokens).loss
