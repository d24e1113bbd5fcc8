"""Bottom-up Policy Optimization (docs/methods.md §2): the internal policy π^k, the phase
schedule and the old-log-prob switch.

- π^k = softmax(h[k] W_Uᵀ / T) with ``h[k]`` the raw residual after block k (1-based; no
  final norm unless ``apply_final_norm``, the logit-lens variant). The forward stops
  after block k (:func:`pipeline.model_access.run` with ``stop_after=k``): blocks > k and
  the final norm get neither compute nor gradient; the embedding, blocks ≤ k and
  ``lm_head`` do.
- Phases: steps 1..s_inter (1-based global step) are IPA — the clipped surrogate with
  both the new and the old log-probs from π^k; later steps are plain GRPO on π_θ, with
  the same optimizer state (no reset). Rollouts are always sampled from the full model.

The trainer asks this module which policy a step trains (:func:`phase`), which
log-probs to take for the update (:func:`train_logprobs`) and which of the rollout's
no-grad log-probs are the "old" ones (:func:`old_logprobs`), the way it asks
:mod:`pipeline.rl.losses` for the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from pipeline.model_access import find_layout, run
from pipeline.rl.logprobs import check_layer, scatter, selection, token_logprobs, unembed

IPA, GRPO = "ipa", "grpo"


def phase(step: int, *, s_inter: int, enabled: bool = True) -> str:
    """``"ipa"`` for steps 1..s_inter (1-based) of a BuPO method, else ``"grpo"``."""
    return IPA if enabled and step <= s_inter else GRPO


def internal_token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    layer: int,
    *,
    apply_final_norm: bool = False,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Log-probs ``[B, T−1]`` of the sampled response tokens under π^k,
    ``log_softmax(h[k] W_Uᵀ)`` (``layer`` = k, 1-based; docs/methods.md §2 IPA), 0 off
    ``response_mask[:, 1:]``; differentiable when grad is enabled. The forward stops
    after block k."""
    layout = find_layout(model, need_final_norm=apply_final_norm)
    check_layer(layout, layer)
    sel, targets = selection(input_ids, response_mask)
    h_k = run(model, input_ids, attention_mask, stop_after=layer, layout=layout)
    norm = layout.final_norm if apply_final_norm else None
    logp, _ = unembed(model, layout, norm=norm, temperature=temperature,
                      chunk_tokens=chunk_tokens).target_logprobs(h_k[:, :-1][sel], targets)
    return scatter(logp, sel)


def train_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                   response_mask: Tensor, *, step_phase: str, layer: int | None,
                   apply_final_norm: bool = False, temperature: float = 1.0,
                   chunk_tokens: int | None = None) -> Tensor:
    """The differentiable log-probs a step's update trains: π^k in the IPA phase, π_θ
    otherwise (``[B, T−1]``)."""
    if step_phase == IPA:
        if layer is None:
            raise ValueError("the IPA phase needs the BuPO layer k")
        return internal_token_logprobs(model, input_ids, attention_mask, response_mask,
                                       layer, apply_final_norm=apply_final_norm,
                                       temperature=temperature, chunk_tokens=chunk_tokens)
    return token_logprobs(model, input_ids, attention_mask, response_mask,
                          temperature=temperature, chunk_tokens=chunk_tokens)


def needed_stats(step_phase: str, *, bupo: bool, diagnostics: bool, entropy_credit: bool
                 ) -> dict[str, bool]:
    """Which no-grad statistics a step's preparation needs: π_θ (``final``: outside IPA,
    for diagnostics, or for entropy credit), π^k (``internal``: IPA or diagnostics),
    ``cos(h[k], h[L])`` (``cosine_kL``) and H(π^{k−1}) for ΔH^k (``delta_k``): both
    diagnostics of a BuPO method."""
    ipa = step_phase == IPA
    diag = bupo and diagnostics
    return {"final": not ipa or diag or entropy_credit, "internal": ipa or diag,
            "cosine_kL": diag, "delta_k": diag}


def old_logprobs(stats: Mapping[str, Any], step_phase: str) -> Tensor | None:
    """The old log-probs of the ratio: π^k_old in IPA, π_θ_old otherwise."""
    return stats["logp_k"] if step_phase == IPA else stats["logp"]
