"""Attention rhythm: head groups, WAAD, FAI, preplan/anchor tokens (methods.md §3).

Index convention (alignment): every ``[B, T]`` field is indexed by the attention **row**
``t``, i.e. the query position whose *input* token is ``input_ids[:, t]`` ("the literal
reading" of methods.md §3). ``fai[:, s]`` is the influence of key position ``s`` (also the
token ``input_ids[:, s]``). :func:`pipeline.attention.credit_weights` maps rows to the
tokens whose log-probs get the weights (``shift``).

Choices on the (open) points, all keyword arguments:

- Head groups (``group_scope``): ``"pooled"`` (default) ranks the ``n_layers·H`` heads of
  the chosen layers together, per sequence; ``"per_layer"`` ranks within each layer.
  Either way ``Ā_loc`` / ``Ā_glob`` is the plain mean of the maps of all selected heads
  (with ``"per_layer"`` equal to the mean over layers of per-layer group means).
  Group size ``round(head_frac · n)`` (half up, at least 1).
- Token sets: ``round(top_frac · |R|)`` response tokens (half up, at least 1 when
  ``|R| > 0``); ties are broken towards the earlier position.
- ``fai_empty``: FAI of a response token with empty ``T(s)`` (default 0.0; NaN ranks last).
- ``Δ_t = |WAAD_t − WAAD_{t+1}|`` when ``t+1`` is a response token, else 0.
- Dominated anchors: ``tau_waad`` / ``tau_delta`` default (None) to the medians of WAAD /
  Δ over the response (``torch.quantile(·, 0.5)``, mean of the two middles); the window
  ``[t−k, t−1]`` only counts response tokens; an anchor with no such token is not
  dominated. ``intro(t)`` = argmax of Δ there, ties → the earliest ``u``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.attention.capture import DEFAULT_ATTN_PATTERN, run_capture, sliding_window_of
from pipeline.attention.head_stats import DEFAULT_CHUNK_BYTES, HeadStats, head_stats

GROUP_SCOPES = ("pooled", "per_layer")


@dataclass
class Rhythm:
    """Result of :func:`rhythm`; float fields are fp32, NaN outside the response."""

    layers: tuple[int, ...]  # 0-based decoder blocks, ascending
    head_distance: Tensor  # [B, n_layers, H]
    local_heads: Tensor  # bool [B, n_layers, H]
    global_heads: Tensor  # bool [B, n_layers, H]
    waad: Tensor  # [B, T]
    fai: Tensor  # [B, T]
    delta: Tensor  # [B, T]
    preplan: Tensor  # bool [B, T]: T_loc
    anchor: Tensor  # bool [B, T]: T_glob
    dominated: Tensor  # bool [B, T]: D ⊆ T_glob
    intro: Tensor  # bool [B, T]: intro(D)
    intro_of: Tensor  # long [B, T]: intro(t) for t ∈ D, −1 elsewhere
    response_mask: Tensor  # bool [B, T]: the rows R the metrics were computed on
    top_frac: float
    params: dict[str, Any] = field(default_factory=dict)


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


def check_masks(input_ids: Tensor, response_mask: Tensor, attention_mask: Tensor) -> None:
    """Shapes match, response ⊆ real tokens, real tokens contiguous (left/right padding)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got {tuple(input_ids.shape)}")
    for name, m in (("response_mask", response_mask), ("attention_mask", attention_mask)):
        if m.shape != input_ids.shape:
            raise ValueError(f"{name} shape {tuple(m.shape)} != input_ids {tuple(input_ids.shape)}")
    am, rm = attention_mask.bool(), response_mask.bool()
    if (rm & ~am).any():
        raise ValueError("response_mask marks padding positions")
    n_real = am.sum(-1)
    first = am.float().argmax(-1)
    span = torch.arange(am.shape[1], device=am.device)[None]
    contiguous = (span >= first[:, None]) & (span < (first + n_real)[:, None])
    if (contiguous != am).any():
        raise ValueError("attention_mask must be one contiguous run per row (left/right padding)")


def _groups(d: Tensor, frac: float, scope: str, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Bottom / top ``frac`` heads by distance, per sequence (and per layer if asked)."""
    b, n_layers, h = d.shape
    flat = d.reshape(b, 1, n_layers * h) if scope == "pooled" else d
    loc = torch.zeros_like(flat, dtype=torch.bool)
    glob = torch.zeros_like(flat, dtype=torch.bool)
    n = top_count(frac, flat.shape[-1])
    for i in range(b):
        if not valid[i]:
            continue
        for j in range(flat.shape[1]):
            up = torch.sort(flat[i, j], stable=True).indices[:n]
            down = torch.sort(flat[i, j], descending=True, stable=True).indices[:n]
            loc[i, j, up] = True
            glob[i, j, down] = True
    return loc.reshape(b, n_layers, h), glob.reshape(b, n_layers, h)


def _group_mean(per_head: Tensor, heads: Tensor) -> Tensor:
    """Mean over selected heads: ``per_head [B, nL, H, T]``, ``heads`` bool ``[B, nL, H]``."""
    w = heads.float()
    return (per_head * w[..., None]).sum((1, 2)) / w.sum((1, 2)).clamp(min=1)[:, None]


def _fai_counts(rm: Tensor, h_lo: int, h_hi: int) -> Tensor:
    """``|T(s)| = #{t ∈ R : s+H_lo ≤ t ≤ s+H_hi}`` for every s, ``[B, T]``."""
    b, t = rm.shape
    c = torch.cat([torch.zeros(b, 1, device=rm.device), rm.float().cumsum(-1)], -1)
    s = torch.arange(t, device=rm.device)
    hi = (s + h_hi + 1).clamp(max=t)
    lo = (s + h_lo).clamp(max=t)
    return c[:, hi] - c[:, lo]


def _delta(waad: Tensor, rm: Tensor) -> Tensor:
    nxt = torch.zeros_like(waad)
    nxt_ok = torch.zeros_like(rm)
    nxt[:, :-1], nxt_ok[:, :-1] = waad[:, 1:], rm[:, 1:]
    delta = torch.where(nxt_ok, (waad - nxt).abs(), torch.zeros_like(waad))
    return torch.where(rm, delta, torch.full_like(waad, math.nan))


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


def rhythm(
    model: nn.Module,
    input_ids: Tensor,
    response_mask: Tensor,
    attention_mask: Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    window: int = 10,
    h_lo: int = 10,
    h_hi: int = 100,
    head_frac: float = 0.3,
    top_frac: float = 0.4,
    group_scope: str = "pooled",
    k: int = 3,
    tau_waad: float | None = None,
    tau_delta: float | None = None,
    fai_empty: float = 0.0,
    chunk_size: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    attn_pattern: str = DEFAULT_ATTN_PATTERN,
) -> Rhythm:
    """Attention-rhythm metrics of a batch (methods.md §3) from one early-stopped forward.

    ``input_ids``, ``response_mask`` (the rows R), ``attention_mask`` are ``[B, T]``, left
    or right padded. ``layers``: 0-based decoder blocks, ``None`` = 5 evenly spaced from
    ⌊L/3⌋ to ⌊2L/3⌋. Memory: ``O(B·H·chunk·T)`` per chunk (:mod:`.head_stats`) plus
    ``O(n_layers·B·H·T)`` for the per-head reductions.
    """
    if group_scope not in GROUP_SCOPES:
        raise ValueError(f"unknown group_scope {group_scope!r}; known: {list(GROUP_SCOPES)}")
    if not (0 <= h_lo <= h_hi) or window < 1 or k < 1:
        raise ValueError("need 0 ≤ h_lo ≤ h_hi, window ≥ 1, k ≥ 1")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    check_masks(input_ids, response_mask, attention_mask)
    am, rm = attention_mask.bool(), response_mask.bool()

    stats: dict[int, HeadStats] = {}

    def on_layer(layer: int, module: nn.Module, q: Tensor, kk: Tensor) -> None:
        stats[layer] = head_stats(
            q,
            kk,
            am,
            rm,
            scaling=float(module.scaling),
            window=window,
            h_lo=h_lo,
            h_hi=h_hi,
            chunk_size=chunk_size,
            sliding_window=sliding_window_of(module),
            chunk_bytes=chunk_bytes,
        )

    chosen = run_capture(model, input_ids, am.long(), layers, on_layer, pattern=attn_pattern)
    rm = rm.to(stats[chosen[0]].waad.device)
    n_resp = rm.sum(-1)
    valid = n_resp > 0
    d = torch.stack([stats[i].dist_sum for i in chosen], 1) / n_resp[:, None, None]
    local, glob = _groups(d, head_frac, group_scope, valid)

    nan = torch.full(rm.shape, math.nan, device=rm.device)
    waad_h = torch.stack([stats[i].waad for i in chosen], 1)
    waad = torch.where(rm, _group_mean(waad_h, local), nan)
    del waad_h
    fai_h = torch.stack([stats[i].fai_sum for i in chosen], 1)
    count = _fai_counts(rm, h_lo, h_hi)
    fai_num = _group_mean(fai_h, glob)
    del fai_h
    fai = torch.where(count > 0, fai_num / count.clamp(min=1), torch.full_like(nan, fai_empty))
    fai = torch.where(rm, fai, nan)
    delta = _delta(waad, rm)

    preplan = top_mask(delta, rm, top_frac)
    anchor = top_mask(fai, rm, top_frac)
    dominated, intro_of, intro = _dominated(anchor, waad, delta, rm, k, tau_waad, tau_delta)
    params = dict(
        window=window,
        h_lo=h_lo,
        h_hi=h_hi,
        head_frac=head_frac,
        top_frac=top_frac,
        group_scope=group_scope,
        k=k,
        tau_waad=tau_waad,
        tau_delta=tau_delta,
        fai_empty=fai_empty,
    )
    return Rhythm(
        layers=tuple(chosen),
        head_distance=d,
        local_heads=local,
        global_heads=glob,
        waad=waad,
        fai=fai,
        delta=delta,
        preplan=preplan,
        anchor=anchor,
        dominated=dominated,
        intro=intro,
        intro_of=intro_of,
        response_mask=rm,
        top_frac=top_frac,
        params=params,
    )
