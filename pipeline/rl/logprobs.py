"""Per-token log-probs of sampled tokens under the final policy π_θ and under an internal
layer policy π^k (methods.md §1.1, §2).

Alignment: every result is the usual *shifted* tensor ``[B, T−1]``:
``out[b, j] = log p(input_ids[b, j+1] | input_ids[b, :j+1])``, read from the hidden state
at position ``j``; ``token_mask = response_mask[:, 1:]`` marks the response tokens (0
elsewhere). Credit weights ``γ [B, T]`` (token-aligned) multiply it as ``γ[:, 1:]``.

Cost (methods.md §1.2): only the rows that predict response tokens are unembedded, in
chunks of ``chunk_tokens`` rows; under autograd each chunk is checkpointed (recomputed in
the backward), so no ``[B, T, V]`` fp32 tensor is ever held, forward or backward.

π^k = softmax(h[k] W_Uᵀ) (no final norm unless ``apply_final_norm``) with ``h[k]`` the raw
residual after block k (1-based). The forward is stopped by raising from a hook on block
k, so blocks > k and the final norm get no compute and no gradient; the embedding, blocks
≤ k and ``lm_head`` do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pipeline.decomposition.entropy import cosine
from pipeline.decomposition.internal import position_ids_from_mask
from pipeline.decomposition.layout import DecoderLayout, find_layout

#: Rows per unembedding chunk: one ``[chunk, V]`` fp32 buffer of about this many bytes.
CHUNK_BYTES = 64 * 2**20


class _StopAfterBlock(Exception):
    """Raised from the hook on block k to end the forward there."""


@dataclass
class PolicyStats:
    """:func:`policy_stats` result; every tensor is ``[B, T−1]`` fp32 (0 off the mask)."""

    token_mask: Tensor  # bool: positions predicting a response token
    logp: Tensor | None  # final policy π_θ
    entropy: Tensor | None  # H(π_θ)
    logp_k: Tensor | None  # internal policy π^k
    entropy_k: Tensor | None  # H(π^k)
    cos_kL: Tensor | None  # cos(h[k], h[L]) with the raw (pre-norm) h[L]


def _first(output: Any) -> Tensor:
    """A block's output: the tensor itself or the first element of a tuple."""
    return output if isinstance(output, Tensor) else output[0]


def _softcap(model: nn.Module) -> float | None:
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return float(cap) if cap else None


class Unembed:
    """``x [N, d] -> (log p(target) [N], H [N] | None)`` through ``lm_head`` (its bias,
    an optional norm first, Gemma-style soft-capping, ``/ temperature``), chunked."""

    def __init__(self, model: nn.Module, layout: DecoderLayout, *, norm: nn.Module | None,
                 temperature: float = 1.0, chunk_tokens: int | None = None) -> None:
        self.head = layout.lm_head
        self.norm = norm
        self.softcap = _softcap(model)
        self.temperature = float(temperature)
        vocab = self.head.weight.shape[0]
        self.chunk = int(chunk_tokens or max(1, CHUNK_BYTES // (4 * vocab)))

    def _logp(self, x: Tensor) -> Tensor:
        if self.norm is not None:
            x = self.norm(x)
        z = self.head(x).float()
        if self.softcap:
            z = self.softcap * torch.tanh(z / self.softcap)
        if self.temperature != 1.0:
            z = z / self.temperature
        return torch.log_softmax(z, dim=-1)

    def _gather(self, x: Tensor, targets: Tensor) -> Tensor:
        return self._logp(x).gather(-1, targets[:, None]).squeeze(-1)

    def __call__(self, x: Tensor, targets: Tensor, *, entropy: bool = False
                 ) -> tuple[Tensor, Tensor | None]:
        outs, ents = [], []
        grad = torch.is_grad_enabled() and x.requires_grad
        for s in range(0, x.shape[0], self.chunk):
            xc, tc = x[s:s + self.chunk], targets[s:s + self.chunk]
            if grad and x.shape[0] > self.chunk:
                outs.append(checkpoint(self._gather, xc, tc, use_reentrant=False))
                if entropy:
                    with torch.no_grad():
                        lp = self._logp(xc)
                        ents.append(-(lp.exp() * lp).sum(-1))
                continue
            lp = self._logp(xc)
            outs.append(lp.gather(-1, tc[:, None]).squeeze(-1))
            if entropy:
                with torch.no_grad():
                    ents.append(-(lp.detach().exp() * lp.detach()).sum(-1))
        empty = x.new_zeros(0, dtype=torch.float32)
        lp_all = torch.cat(outs) if outs else empty
        return lp_all, (torch.cat(ents) if ents else empty) if entropy else None


def _scatter(values: Tensor, sel: Tensor) -> Tensor:
    """``values`` [N] into a zero [B, T−1] fp32 tensor at ``sel`` (differentiable)."""
    out = torch.zeros(sel.shape, dtype=torch.float32, device=values.device)
    return out.masked_scatter(sel.to(values.device), values.float())


def _selection(input_ids: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``[B, T−1]`` predicting response tokens, and their target ids ``[N]``."""
    sel = response_mask[:, 1:].to(input_ids.device).bool()
    return sel, input_ids[:, 1:][sel]


def _decoder_forward(layout: DecoderLayout, input_ids: Tensor, attention_mask: Tensor,
                     hooks: dict[int, Callable[..., Any]], stop_after: int | None) -> Any:
    """Run the base decoder with forward hooks on the given blocks (0-based); when
    ``stop_after`` is set, the hook on that block raises after its own callback."""
    handles = []
    for i, fn in hooks.items():
        def hook(_m: nn.Module, _a: tuple, out: Any, fn: Callable = fn, i: int = i) -> None:
            fn(_first(out))
            if i == stop_after:
                raise _StopAfterBlock
        handles.append(layout.blocks[i].block.register_forward_hook(hook))
    mask = attention_mask.to(input_ids.device)
    try:
        return layout.decoder(input_ids=input_ids, attention_mask=mask.long(),
                              position_ids=position_ids_from_mask(mask), use_cache=False)
    except _StopAfterBlock:
        return None
    finally:
        for h in handles:
            h.remove()


def _check_layer(layout: DecoderLayout, layer: int) -> None:
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
    sel, targets = _selection(input_ids, response_mask)
    hidden = _decoder_forward(layout, input_ids, attention_mask, {}, None).last_hidden_state
    unembed = Unembed(model, layout, norm=None, temperature=temperature, chunk_tokens=chunk_tokens)
    logp, _ = unembed(hidden[:, :-1][sel], targets)
    return _scatter(logp, sel)


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
    ``log_softmax(h[k] W_Uᵀ)`` (``layer`` = k, 1-based; methods.md §2 IPA). The forward
    stops after block k: blocks > k and the final norm get neither compute nor gradient."""
    layout = find_layout(model, need_final_norm=apply_final_norm)
    _check_layer(layout, layer)
    sel, targets = _selection(input_ids, response_mask)
    got: dict[str, Tensor] = {}
    _decoder_forward(layout, input_ids, attention_mask,
                     {layer - 1: lambda h: got.__setitem__("h", h)}, layer - 1)
    norm = layout.final_norm if apply_final_norm else None
    unembed = Unembed(model, layout, norm=norm, temperature=temperature, chunk_tokens=chunk_tokens)
    logp, _ = unembed(got["h"][:, :-1][sel], targets)
    return _scatter(logp, sel)


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
    apply_final_norm: bool = False,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
) -> PolicyStats:
    """No-grad log-probs and entropies of π_θ (``final``) and π^k (``internal``, needs
    ``layer``), and ``cos(h[k], h[L])`` (``cosine_kL``), from one forward. The forward
    stops after block k when only π^k is wanted; the cosine uses the raw ``h[L]`` read
    from a hook on the last block (not HF's post-norm last hidden state)."""
    layout = find_layout(model, need_final_norm=internal and apply_final_norm)
    if (internal or cosine_kL) and layer is None:
        raise ValueError("policy_stats: internal / cosine_kL need layer=k")
    if layer is not None:
        _check_layer(layout, layer)
    sel, targets = _selection(input_ids, response_mask)
    got: dict[str, Tensor] = {}
    wanted: dict[str, int] = {}
    if internal or cosine_kL:
        wanted["k"] = layer - 1
    if cosine_kL:
        wanted["L"] = len(layout.blocks) - 1

    def reader(i: int) -> Callable[[Tensor], None]:
        def read(h: Tensor) -> None:
            for name, j in wanted.items():
                if j == i:
                    got[name] = h[:, :-1][sel]
        return read

    hooks = {i: reader(i) for i in set(wanted.values())}
    stop = layer - 1 if internal and not final and not cosine_kL else None
    out = _decoder_forward(layout, input_ids, attention_mask, hooks, stop)
    res: dict[str, Tensor | None] = dict.fromkeys(
        ("logp", "entropy", "logp_k", "entropy_k", "cos_kL"))
    if final:
        unembed = Unembed(model, layout, norm=None, temperature=temperature,
                          chunk_tokens=chunk_tokens)
        lp, ent = unembed(out.last_hidden_state[:, :-1][sel], targets, entropy=True)
        res["logp"], res["entropy"] = _scatter(lp, sel), _scatter(ent, sel)
    if internal:
        norm = layout.final_norm if apply_final_norm else None
        unembed = Unembed(model, layout, norm=norm, temperature=temperature,
                          chunk_tokens=chunk_tokens)
        lp, ent = unembed(got["k"], targets, entropy=True)
        res["logp_k"], res["entropy_k"] = _scatter(lp, sel), _scatter(ent, sel)
    if cosine_kL:
        res["cos_kL"] = _scatter(cosine(got["k"], got["L"]), sel)
    return PolicyStats(token_mask=sel, **res)
