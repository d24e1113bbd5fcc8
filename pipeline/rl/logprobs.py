"""Per-token log-probs of sampled tokens under the final policy π_θ, and the no-grad
policy statistics of a rollout (docs/methods.md §1.1, §2).

Alignment: every result is the usual *shifted* tensor ``[B, T−1]``:
``out[b, j] = log p(input_ids[b, j+1] | input_ids[b, :j+1])``, read from the hidden state
at position ``j``; ``token_mask = response_mask[:, 1:]`` marks the response tokens (0
elsewhere). Credit weights ``γ [B, T]`` (token-aligned) multiply it as ``γ[:, 1:]``.

Forwards go through the model-access runner (:func:`pipeline.model_access.run`, an
explicit loop that stops after block k without raising) and the chunked
:class:`pipeline.model_access.Unembed`: only the rows that predict response tokens are
unembedded, in chunks; under autograd each chunk is checkpointed, so no ``[B, T, V]``
fp32 tensor is ever held, forward or backward (docs/methods.md §1.2). The internal policy π^k
of BuPO lives in :mod:`pipeline.rl.bupo`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pipeline.model_access import (
    GRAD_CHUNK_BYTES,
    DecoderLayout,
    Point,
    Unembed,
    cosine,
    find_layout,
    run,
    softcap_of,
)


@dataclass
class PolicyStats:
    """:func:`policy_stats` result; every tensor is ``[B, T−1]`` fp32 (0 off the mask)."""

    token_mask: Tensor  # bool: positions predicting a response token
    logp: Tensor | None  # final policy π_θ
    entropy: Tensor | None  # H(π_θ)
    logp_k: Tensor | None  # internal policy π^k
    entropy_k: Tensor | None  # H(π^k)
    cos_kL: Tensor | None  # cos(h[k], h[L]) with the raw (pre-norm) h[L]
    entropy_km1: Tensor | None = None  # H(π^{k−1}) of h[k−1] (delta_k=True)


def unembed(model: nn.Module, layout: DecoderLayout, *, norm: nn.Module | None = None,
            temperature: float = 1.0, chunk_tokens: int | None = None) -> Unembed:
    """The live (trainable) :class:`Unembed` of ``model``: ``lm_head`` and its bias, an
    optional norm first, soft-cap, ``/ temperature``; 64 MiB chunks by default."""
    return Unembed(layout.lm_head, norm=norm, softcap=softcap_of(model),
                   temperature=temperature, chunk_rows=chunk_tokens,
                   chunk_bytes=GRAD_CHUNK_BYTES)


def scatter(values: Tensor, sel: Tensor) -> Tensor:
    """``values`` [N] into a zero [B, T−1] fp32 tensor at ``sel`` (differentiable)."""
    out = torch.zeros(sel.shape, dtype=torch.float32, device=values.device)
    return out.masked_scatter(sel.to(values.device), values.float())


def selection(input_ids: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``[B, T−1]`` predicting response tokens, and their target ids ``[N]``."""
    sel = response_mask[:, 1:].to(input_ids.device).bool()
    return sel, input_ids[:, 1:][sel]


def check_layer(layout: DecoderLayout, layer: int) -> None:
    """``ValueError`` unless 1 ≤ k ≤ L."""
    n = len(layout.blocks)
    if not 1 <= layer <= n:
        raise ValueError(f"internal policy layer k={layer} must be in 1..{n} (1-based)")


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Log-probs ``[B, T−1]`` of the sampled response tokens under π_θ (one forward;
    differentiable when grad is enabled). 0 off ``response_mask[:, 1:]``."""
    layout = find_layout(model)
    sel, targets = selection(input_ids, response_mask)
    hidden = run(model, input_ids, attention_mask, final_norm=True, layout=layout)
    logp, _ = unembed(model, layout, temperature=temperature, chunk_tokens=chunk_tokens
                      ).target_logprobs(hidden[:, :-1][sel], targets)
    return scatter(logp, sel)


@torch.no_grad()
def policy_stats(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    *,
    layer: int | None = None,
    final: bool = True,
    internal: bool = False,
    cosine_kL: bool = False,
    delta_k: bool = False,
    apply_final_norm: bool = False,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
) -> PolicyStats:
    """No-grad log-probs and entropies of π_θ (``final``) and π^k (``internal``, needs
    ``layer``), ``cos(h[k], h[L])`` (``cosine_kL``) and ``H(π^{k−1})`` (``delta_k``: the
    internal layer policy of ``h[k−1]``, the input of block k — the embedding output for
    k = 1 — with π^k's norm / temperature; ``ΔH^k = H(π^k) − H(π^{k−1})``), from one
    forward. The forward stops after block k when no statistic needs the later blocks;
    the cosine uses the raw ``h[L]`` (the ``resid_post`` read of the last block, not HF's
    post-norm last hidden state)."""
    layout = find_layout(model, need_final_norm=(internal or delta_k) and apply_final_norm)
    if (internal or cosine_kL or delta_k) and layer is None:
        raise ValueError("policy_stats: internal / cosine_kL / delta_k need layer=k")
    if layer is not None:
        check_layer(layout, layer)
    sel, targets = selection(input_ids, response_mask)
    got: dict[str, Tensor] = {}
    reads = {}
    if internal or cosine_kL:
        reads[Point("resid_post", layer - 1)] = lambda h: got.__setitem__("k", h[:, :-1][sel])
    if cosine_kL:
        last = Point("resid_post", len(layout.blocks) - 1)
        prev = reads.get(last)

        def read_last(h: Tensor) -> None:
            if prev is not None:
                prev(h)
            got["L"] = h[:, :-1][sel]
        reads[last] = read_last
    if delta_k:  # h[k−1], the input of block k (0-based k−1)
        reads[Point("resid_pre", layer - 1)] = lambda h: got.__setitem__("km1",
                                                                         h[:, :-1][sel])
    only_k = (internal or delta_k) and not final and not cosine_kL
    hidden = run(model, input_ids, attention_mask, read=reads, layout=layout,
                 stop_after=layer if only_k else None, final_norm=not only_k)
    res: dict[str, Tensor | None] = dict.fromkeys(
        ("logp", "entropy", "logp_k", "entropy_k", "cos_kL", "entropy_km1"))
    if final:
        lp, ent = unembed(model, layout, temperature=temperature, chunk_tokens=chunk_tokens
                          ).target_logprobs(hidden[:, :-1][sel], targets, with_entropy=True)
        res["logp"], res["entropy"] = scatter(lp, sel), scatter(ent, sel)
    norm = layout.final_norm if apply_final_norm else None
    if internal:
        lp, ent = unembed(model, layout, norm=norm, temperature=temperature,
                          chunk_tokens=chunk_tokens
                          ).target_logprobs(got["k"], targets, with_entropy=True)
        res["logp_k"], res["entropy_k"] = scatter(lp, sel), scatter(ent, sel)
    if delta_k:
        _, ent = unembed(model, layout, norm=norm, temperature=temperature,
                         chunk_tokens=chunk_tokens
                         ).target_logprobs(got["km1"], targets, with_entropy=True)
        res["entropy_km1"] = scatter(ent, sel)
    if cosine_kL:
        res["cos_kL"] = scatter(cosine(got["k"], got["L"]), sel)
    return PolicyStats(token_mask=sel, **res)
