"""Attention-credit shaping of the advantages, ``Ã_t = γ_t·Â_t`` (docs/methods.md §3).

γ is computed with no grad on the rollout weights (the same weights that sampled the
batch) and is token-aligned (``γ[b, t]`` weighs token ``input_ids[b, t]``, see
:mod:`pipeline.attention.credit`); the log-prob tensors of :mod:`.logprobs` are shifted
(``logp[b, j]`` is token ``j+1``), so the token advantages are ``Â[b]·γ[b, 1:]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pipeline.attention import credit_weights, rhythm


def token_advantages(advantages: Tensor, gamma: Tensor | None, width: int) -> Tensor:
    """Per-token advantages ``[B, width]`` aligned with the shifted log-probs
    (``width = T−1``): ``Â[b]`` everywhere, times ``γ[b, 1:]`` when γ ``[B, T]`` is given."""
    adv = advantages.float()[:, None].expand(-1, width)
    if gamma is None:
        return adv.clone()
    if gamma.shape != (advantages.shape[0], width + 1):
        raise ValueError(f"gamma shape {tuple(gamma.shape)} != [B, T] = "
                         f"[{advantages.shape[0]}, {width + 1}]")
    return adv * gamma[:, 1:].to(adv.device, torch.float32)


@torch.no_grad()
def credit_gamma(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    method: str,
    *,
    gamma_amp: float = 1.5,
    alpha: float = 0.5,
    shift: int = 0,
    top_frac: float = 0.4,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    rhythm_kwargs: dict[str, Any] | None = None,
) -> Tensor:
    """γ ``[B, T]`` for ``method`` in ``local/global/coupled/random/entropy``.

    ``entropy``: the shifted ``[B, T−1]`` entropy of π_θ (:func:`.logprobs.policy_stats`),
    re-aligned here to tokens (``entropy_tok[:, 1:] = entropy``). ``shift=1`` computes the
    rhythm on the rows ``R−1`` (the rows whose outputs sampled the response tokens) and
    passes the token mask to ``credit_weights``, the exact shifted variant documented in
    :mod:`pipeline.attention.credit`.
    """
    tokens = response_mask.bool()
    if method in ("random", "entropy"):
        rh = _token_only_rhythm(tokens, top_frac)
    else:
        rows = tokens
        if shift == 1:
            rows = torch.zeros_like(tokens)
            rows[:, :-1] = tokens[:, 1:]
        was_training = model.training
        model.eval()
        try:
            rh = rhythm(model, input_ids, rows, attention_mask, top_frac=top_frac,
                        **(rhythm_kwargs or {}))
        finally:
            model.train(was_training)
    ent_tok = None
    if entropy is not None:
        ent_tok = torch.zeros(tokens.shape, dtype=torch.float32, device=entropy.device)
        ent_tok[:, 1:] = entropy
    return credit_weights(rh, method, gamma_amp=gamma_amp, alpha=alpha, shift=shift,
                          response_mask=tokens, entropy=ent_tok, generator=generator)


def _token_only_rhythm(tokens: Tensor, top_frac: float) -> Any:
    """A :class:`Rhythm` carrying only the response mask: the random / entropy controls
    need no attention pass."""
    from pipeline.attention import Rhythm

    z = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    nan = torch.full(tokens.shape, float("nan"), device=tokens.device)
    empty = torch.zeros((tokens.shape[0], 0, 0), dtype=torch.bool, device=tokens.device)
    return Rhythm(layers=(), head_distance=empty.float(), local_heads=empty, global_heads=empty,
                  waad=nan, fai=nan, delta=nan, preplan=z, anchor=z, dominated=z, intro=z,
                  intro_of=torch.full(tokens.shape, -1, device=tokens.device),
                  response_mask=tokens, top_frac=top_frac)
