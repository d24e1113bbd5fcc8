"""Token credit weights γ for the shaped advantage ``Ã_t = γ_t·Â_t`` (docs/methods.md §3).

Alignment — which entry multiplies which log-prob:

- ``γ[b, t]`` is the weight of **token** ``input_ids[b, t]``, i.e. of the log-prob
  ``log p(input_ids[b, t] | input_ids[b, :t]) = log_softmax(logits[b, t−1])[input_ids[b, t]]``.
  With the usual shifted log-prob tensor ``logp[b, j] = log p(input_ids[b, j+1])``
  (``[B, T−1]``, from ``logits[:, :-1]``), multiply ``logp`` by ``γ[:, 1:]``.
- ``shift=0`` (default, the literal reading): token ``t`` gets the metrics of attention
  row ``t`` — the row where ``input_ids[b, t]`` is the input.
  ``shift=1``: token ``t`` gets the metrics of row ``t−1``, the row whose output
  distribution sampled it. The first response token then has no row in R (γ=1) and the
  last row's flags are dropped; for an exact shifted variant compute the rhythm on the
  rows ``R−1`` and pass the token mask here as ``response_mask``.
- γ is 1 wherever token ``t`` is not in ``response_mask`` (default: the rhythm's) or row
  ``t−shift`` is not in the rhythm's rows.

``random`` and ``entropy`` pick tokens directly (no shift): ``entropy[b, t]`` must be
aligned with tokens, i.e. the entropy of the distribution that sampled ``input_ids[b, t]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.attention.metrics import Rhythm
from pipeline.attention.rhythm import top_count, top_mask

METHODS = ("local", "global", "coupled", "random", "entropy")


def _shifted(x: Tensor, shift: int) -> Tensor:
    if shift == 0:
        return x
    out = torch.zeros_like(x)
    out[:, shift:] = x[:, :-shift]
    return out


def credit_weights(
    rhythm: Rhythm,
    method: str,
    *,
    gamma_amp: float = 1.5,
    alpha: float = 0.5,
    shift: int = 0,
    top_frac: float | None = None,
    response_mask: Tensor | None = None,
    entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """γ ``[B, T]`` fp32, detached, 1 outside the response (docs/methods.md §3):

    - ``local``:   ``1 + (γ_amp−1)·1[t ∈ T_loc]``
    - ``global``:  ``1 + (γ_amp−1)·1[t ∈ T_glob]``
    - ``coupled``: ``1 + (γ_amp−1)·1[T_glob∖D] + (1−α)(γ_amp−1)·1[D] + α(γ_amp−1)·1[intro(D)]``
      (terms add up when a token is in several sets)
    - ``random``:  ``1 + (γ_amp−1)`` on ``top_frac`` of the response tokens drawn uniformly
      (``generator``, else ``seed``, else torch's global RNG)
    - ``entropy``: ``1 + (γ_amp−1)`` on the top ``top_frac`` response tokens by ``entropy``

    ``top_frac`` defaults to the rhythm's. See the module docstring for ``shift``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown credit method {method!r}; known: {list(METHODS)}")
    if shift not in (0, 1):
        raise ValueError(f"shift must be 0 or 1, got {shift!r}")
    tokens = (rhythm.response_mask if response_mask is None else response_mask).bool()
    tokens = tokens.to(rhythm.response_mask.device)
    frac = rhythm.top_frac if top_frac is None else top_frac
    amp = gamma_amp - 1.0
    if method in ("local", "global", "coupled"):
        rows = _shifted(rhythm.response_mask, shift)
        eligible = (tokens & rows).float()
        s = {
            name: _shifted(getattr(rhythm, name), shift).float()
            for name in ("preplan", "anchor", "dominated", "intro")
        }
        if method == "local":
            bonus = amp * s["preplan"]
        elif method == "global":
            bonus = amp * s["anchor"]
        else:
            bonus = (
                amp * s["anchor"] * (1 - s["dominated"])
                + (1 - alpha) * amp * s["dominated"]
                + alpha * amp * s["intro"]
            )
        gamma = 1.0 + bonus * eligible
    elif method == "random":
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        picked = torch.zeros_like(tokens)
        for b in range(tokens.shape[0]):
            pos = tokens[b].nonzero().flatten()
            n = top_count(frac, pos.numel())
            perm = torch.randperm(pos.numel(), generator=generator)[:n].to(pos.device)
            picked[b, pos[perm]] = True
        gamma = 1.0 + amp * picked.float()
    else:
        if entropy is None:
            raise ValueError("method 'entropy' needs the per-token entropy tensor (entropy=)")
        if entropy.shape != tokens.shape:
            raise ValueError(f"entropy shape {tuple(entropy.shape)} != {tuple(tokens.shape)}")
        picked = top_mask(entropy.detach().to(tokens.device), tokens, frac)
        gamma = 1.0 + amp * picked.float()
    return gamma.float().detach()
