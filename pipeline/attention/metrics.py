"""Attention rhythm of a batch (docs/methods.md §3): capture, head groups, the :class:`Rhythm`.

The batch entry point :func:`rhythm` and its result :class:`Rhythm`: one early-stopped
forward captures q/k of the chosen layers (:mod:`.capture`), :mod:`.head_stats` reduces
each layer's attention per head, the heads are grouped by distance here, and
:mod:`pipeline.attention.rhythm` (the module) turns the group means into WAAD, FAI, Δ and
the token classes. (The function keeps the public name ``rhythm``; the package binds it
over the module of the same name.)

Index convention (alignment): every ``[B, T]`` field is indexed by the attention **row**
``t``, i.e. the query position whose *input* token is ``input_ids[:, t]`` ("the literal
reading" of docs/methods.md §3). ``fai[:, s]`` is the influence of key position ``s`` (also the
token ``input_ids[:, s]``). :func:`pipeline.attention.credit_weights` maps rows to the
tokens whose log-probs get the weights (``shift``).

Head groups (``group_scope``): ``"pooled"`` (default) ranks the ``n_layers·H`` heads of
the chosen layers together, per sequence; ``"per_layer"`` ranks within each layer.
Either way ``Ā_loc`` / ``Ā_glob`` is the plain mean of the maps of all selected heads
(with ``"per_layer"`` equal to the mean over layers of per-layer group means). Group size
``round(head_frac · n)`` (half up, at least 1). The token-level choices (token sets,
``fai_empty``, Δ, dominated anchors) are listed in :mod:`pipeline.attention.rhythm`.

Receiver heads (docs/methods.md §3.13, after the Thought Anchors paper): the group of the
same size and ``group_scope`` with the largest receiver score (kurtosis of the head's
per-token FAI, :func:`pipeline.attention.rhythm.receiver_scores`); ``fai_receiver`` is the
FAI of that group (arXiv:2510.13554 Table 2 compares its peaks with the global heads').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.attention.capture import DEFAULT_ATTN_PATTERN, run_capture, sliding_window_of
from pipeline.attention.head_stats import DEFAULT_CHUNK_BYTES, HeadStats, head_stats
from pipeline.attention.rhythm import delta as token_delta
from pipeline.attention.rhythm import fai as token_fai
from pipeline.attention.rhythm import receiver_scores, token_classes, top_count
from pipeline.attention.rhythm import waad as token_waad

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
    # appended with defaults so that hand-made Rhythms (token-only RL controls) still build;
    # rhythm() always fills them
    receiver_heads: Tensor | None = None  # bool [B, n_layers, H]: top receiver score
    fai_receiver: Tensor | None = None  # [B, T]: FAI of the receiver heads


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


def _top_heads(score: Tensor, frac: float, scope: str, valid: Tensor, *,
               descending: bool) -> Tensor:
    """The ``top_count(frac)`` heads with the largest (``descending``) or smallest scores,
    per sequence (and per layer with ``scope="per_layer"``); stable sort, so ties go to the
    lower index; sequences not ``valid`` get none."""
    b, n_layers, h = score.shape
    flat = score.reshape(b, 1, n_layers * h) if scope == "pooled" else score
    out = torch.zeros_like(flat, dtype=torch.bool)
    n = top_count(frac, flat.shape[-1])
    for i in range(b):
        if not valid[i]:
            continue
        for j in range(flat.shape[1]):
            out[i, j, torch.sort(flat[i, j], descending=descending, stable=True).indices[:n]] = True
    return out.reshape(b, n_layers, h)


def _groups(d: Tensor, frac: float, scope: str, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Bottom / top ``frac`` heads by distance, per sequence (and per layer if asked)."""
    return (_top_heads(d, frac, scope, valid, descending=False),
            _top_heads(d, frac, scope, valid, descending=True))


def _receivers(score: Tensor, frac: float, scope: str, valid: Tensor) -> Tensor:
    """Top ``frac`` heads by receiver score (NaN last, ties → lower index), as
    :func:`_groups`."""
    return _top_heads(torch.where(score.isnan(), -torch.inf, score), frac, scope, valid,
                      descending=True)


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
    """Attention-rhythm metrics of a batch (docs/methods.md §3) from one early-stopped forward.

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

    waad = token_waad(torch.stack([stats[i].waad for i in chosen], 1), local, rm)
    fai_sum = torch.stack([stats[i].fai_sum for i in chosen], 1)
    fai = token_fai(fai_sum, glob, rm, h_lo, h_hi, fai_empty)
    receiver = _receivers(receiver_scores(fai_sum, rm, h_lo, h_hi), head_frac, group_scope,
                          valid)
    fai_receiver = token_fai(fai_sum, receiver, rm, h_lo, h_hi, fai_empty)
    delta = token_delta(waad, rm)
    classes = token_classes(waad, fai, delta, rm, top_frac=top_frac, k=k, tau_waad=tau_waad,
                            tau_delta=tau_delta)
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
        preplan=classes.preplan,
        anchor=classes.anchor,
        dominated=classes.dominated,
        intro=classes.intro,
        intro_of=classes.intro_of,
        response_mask=rm,
        top_frac=top_frac,
        params=params,
        receiver_heads=receiver,
        fai_receiver=fai_receiver,
    )
