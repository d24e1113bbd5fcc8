"""Token-level rhythm quantities (docs/methods.md §3): WAAD, FAI, Δ and the token classes
(preplan, anchor, locally dominated, intro), from the per-head reductions of
:mod:`.head_stats` and the head groups chosen by :func:`pipeline.attention.metrics.rhythm`.

Careful with the name: the package binds ``pipeline.attention.rhythm`` to the *function*
:func:`pipeline.attention.metrics.rhythm` (public API). Import from this module with
``from pipeline.attention.rhythm import waad, fai, …`` or
``importlib.import_module("pipeline.attention.rhythm")``; ``import
pipeline.attention.rhythm as m`` reads the package attribute first and gives the function.

Index convention (alignment): every ``[B, T]`` field is indexed by the attention **row**
``t`` (the query position whose input token is ``input_ids[:, t]``); ``fai[:, s]`` is the
influence of key position ``s`` (also the token ``input_ids[:, s]``).

Choices on the (open) points:

- Token sets: ``round(top_frac · |R|)`` response tokens (half up, at least 1 when
  ``|R| > 0``); ties are broken towards the earlier position.
- ``fai_empty``: FAI of a response token with empty ``T(s)`` (default 0.0; NaN ranks last).
- ``Δ_t = |WAAD_t − WAAD_{t+1}|`` when ``t+1`` is a response token, else 0.
- Dominated anchors: ``tau_waad`` / ``tau_delta`` default (None) to the medians of WAAD /
  Δ over the response (``torch.quantile(·, 0.5)``, mean of the two middles); the window
  ``[t−k, t−1]`` only counts response tokens; an anchor with no such token is not
  dominated. ``intro(t)`` = argmax of Δ there, ties → the earliest ``u``.
- Receiver score of a head (:func:`receiver_scores`): the Pearson kurtosis ``m4 / m2²``
  (population moments, not excess) of its per-head FAI ``f_h[s]`` over the response
  tokens with a non-empty ``T(s)``; NaN (ranked last) with fewer than 4 such tokens or
  when ``f_h`` is constant there.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "TokenClasses",
    "delta",
    "fai",
    "fai_counts",
    "group_mean",
    "receiver_scores",
    "token_classes",
    "top_count",
    "top_mask",
    "waad",
]


class TokenClasses(NamedTuple):
    """The token sets of one batch, bool ``[B, T]`` (``intro_of``: long)."""

    preplan: Tensor  # T_loc: top Δ
    anchor: Tensor  # T_glob: top FAI
    dominated: Tensor  # D ⊆ T_glob: locally dominated anchors
    intro_of: Tensor  # intro(t) for t ∈ D, −1 elsewhere
    intro: Tensor  # intro(D)


def top_count(frac: float, n: int) -> int:
    """``round(frac·n)`` half up, at least 1 when ``frac > 0`` and ``n > 0``, at most n."""
    if n <= 0 or frac <= 0:
        return 0
    return min(n, max(1, math.floor(frac * n + 0.5)))


def top_mask(values: Tensor, mask: Tensor, frac: float) -> Tensor:
    """Per row, the top ``top_count(frac, mask.sum())`` positions of ``values`` among
    ``mask`` (NaN lowest; ties → earlier position). bool, same shape as ``values``."""
    out = torch.zeros_like(mask, dtype=torch.bool)
    for b in range(values.shape[0]):
        pos = mask[b].nonzero().flatten()
        n = top_count(frac, pos.numel())
        if n == 0:
            continue
        vals = values[b, pos].float().nan_to_num(nan=-math.inf)
        order = torch.sort(vals, descending=True, stable=True).indices[:n]
        out[b, pos[order]] = True
    return out


def group_mean(per_head: Tensor, heads: Tensor) -> Tensor:
    """Mean over selected heads: ``per_head [B, nL, H, T]``, ``heads`` bool ``[B, nL, H]``."""
    w = heads.float()
    return (per_head * w[..., None]).sum((1, 2)) / w.sum((1, 2)).clamp(min=1)[:, None]


def waad(per_head: Tensor, local: Tensor, rm: Tensor) -> Tensor:
    """``WAAD_t``: the mean of the per-head WAAD ``[B, nL, H, T]`` over the local heads
    (``Ā_loc``), NaN outside the rows ``rm``."""
    nan = torch.full(rm.shape, math.nan, device=rm.device)
    return torch.where(rm, group_mean(per_head, local), nan)


def fai_counts(rm: Tensor, h_lo: int, h_hi: int) -> Tensor:
    """``|T(s)| = #{t ∈ R : s+H_lo ≤ t ≤ s+H_hi}`` for every s, ``[B, T]``."""
    b, t = rm.shape
    c = torch.cat([torch.zeros(b, 1, device=rm.device), rm.float().cumsum(-1)], -1)
    s = torch.arange(t, device=rm.device)
    hi = (s + h_hi + 1).clamp(max=t)
    lo = (s + h_lo).clamp(max=t)
    return c[:, hi] - c[:, lo]


def fai(per_head_sum: Tensor, glob: Tensor, rm: Tensor, h_lo: int, h_hi: int,
        fai_empty: float) -> Tensor:
    """``FAI_s``: the global heads' (``Ā_glob``) mean attention sum over ``T(s)`` (per-head
    sums ``[B, nL, H, T]``) divided by ``|T(s)|``; ``fai_empty`` where ``T(s)`` is empty,
    NaN outside the rows ``rm``."""
    nan = torch.full(rm.shape, math.nan, device=rm.device)
    count = fai_counts(rm, h_lo, h_hi)
    num = group_mean(per_head_sum, glob)
    out = torch.where(count > 0, num / count.clamp(min=1), torch.full_like(nan, fai_empty))
    return torch.where(rm, out, nan)


def receiver_scores(per_head_sum: Tensor, rm: Tensor, h_lo: int, h_hi: int) -> Tensor:
    """Receiver score of every head, fp64 ``[B, nL, H]``: the kurtosis ``m4 / m2²``
    (population central moments, Pearson, not excess) of the per-head FAI
    ``f_h[s] = fai_sum_h[s] / |T(s)|`` (per-head sums ``[B, nL, H, T]``) over the response
    tokens s with ``|T(s)| > 0``. NaN when there are fewer than 4 such tokens or ``f_h`` is
    constant over them (zero variance, tested exactly as max = min)."""
    b_n, n_layers, n_heads, _ = per_head_sum.shape
    count = fai_counts(rm, h_lo, h_hi)
    out = torch.full((b_n, n_layers, n_heads), math.nan, dtype=torch.float64,
                     device=per_head_sum.device)
    for b in range(b_n):  # one sequence at a time: fp64 temporaries stay [nL, H, |S|]
        pos = (rm[b] & (count[b] > 0)).nonzero().flatten()
        if pos.numel() < 4:
            continue
        f = per_head_sum[b][..., pos].double() / count[b, pos].double()
        dev = f - f.mean(-1, keepdim=True)
        m2 = dev.square().mean(-1)
        m4 = dev.square().square().mean(-1)
        varies = f.amax(-1) > f.amin(-1)
        out[b] = torch.where(varies, m4 / torch.where(varies, m2, 1.0).square(), math.nan)
    return out


def delta(waad: Tensor, rm: Tensor) -> Tensor:
    """``Δ_t = |WAAD_t − WAAD_{t+1}|`` (0 when ``t+1`` is not in R), NaN outside R."""
    nxt = torch.zeros_like(waad)
    nxt_ok = torch.zeros_like(rm)
    nxt[:, :-1], nxt_ok[:, :-1] = waad[:, 1:], rm[:, 1:]
    d = torch.where(nxt_ok, (waad - nxt).abs(), torch.zeros_like(waad))
    return torch.where(rm, d, torch.full_like(waad, math.nan))


def _tau(x: Tensor, rm: Tensor, tau: float | None) -> Tensor:
    if tau is not None:
        return torch.full((x.shape[0],), float(tau), device=x.device)
    out = torch.full((x.shape[0],), math.nan, device=x.device)
    for b in range(x.shape[0]):
        if rm[b].any():
            out[b] = torch.quantile(x[b, rm[b]], 0.5)
    return out


def _dominated(
    anchor: Tensor,
    waad: Tensor,
    delta: Tensor,
    rm: Tensor,
    k: int,
    tau_waad: float | None,
    tau_delta: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Locally dominated anchors D, ``intro_of`` (−1 outside D) and the intro set."""
    b, t = delta.shape
    filled = torch.where(rm, delta, torch.full_like(delta, -math.inf))
    best = torch.full_like(delta, -math.inf)
    arg = torch.full((b, t), -1, dtype=torch.long, device=delta.device)
    pos = torch.arange(t, device=delta.device)[None].expand(b, t)
    for j in range(k, 0, -1):  # u = t−j, earliest first so ties keep the earliest u
        prev = torch.full_like(delta, -math.inf)
        prev[:, j:] = filled[:, :-j]
        better = prev > best
        best = torch.where(better, prev, best)
        arg = torch.where(better, pos - j, arg)
    tw, td = _tau(waad, rm, tau_waad), _tau(delta, rm, tau_delta)
    dom = anchor & (arg >= 0) & (waad <= tw[:, None]) & (best >= td[:, None])
    intro_of = torch.where(dom, arg, torch.full_like(arg, -1))
    intro = torch.zeros_like(dom)
    for i in range(b):
        intro[i, intro_of[i][dom[i]]] = True
    return dom, intro_of, intro


def token_classes(
    waad: Tensor,
    fai: Tensor,
    delta: Tensor,
    rm: Tensor,
    *,
    top_frac: float,
    k: int,
    tau_waad: float | None,
    tau_delta: float | None,
) -> TokenClasses:
    """Preplan tokens (top Δ), anchors (top FAI), the locally dominated anchors and their
    introductory tokens (see the module docstring for the choices)."""
    preplan = top_mask(delta, rm, top_frac)
    anchor = top_mask(fai, rm, top_frac)
    dominated, intro_of, intro = _dominated(anchor, waad, delta, rm, k, tau_waad, tau_delta)
    return TokenClasses(preplan, anchor, dominated, intro_of, intro)
