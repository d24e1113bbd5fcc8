"""Post-RoPE queries and keys of chosen decoder layers, read with hooks (methods.md §3).

How q/k are obtained: a forward **pre**-hook (``with_kwargs=True``) on each chosen
layer's attention module receives exactly the ``hidden_states`` (already input-normed)
and ``position_embeddings`` ``(cos, sin)`` that the module's own forward gets, and
recomputes ``q``/``k`` the way HF's Llama/Qwen2/Qwen3/Mistral-family modules do
(transformers 5.23 ``modeling_llama.py`` / ``modeling_qwen3.py``): the module's own
``q_proj``/``k_proj``, its optional ``q_norm``/``k_norm`` (per head as in Qwen3/Gemma3,
or full width as in OLMo2), then the ``apply_rotary_pos_emb`` function of the module's
own modeling file. KV heads stay unexpanded here (``[B, KV, T, D]``); consumers expand
them (query head ``h`` reads KV head ``h // (H // KV)``, as ``repeat_kv``).

Why a pre-hook and not a patched attention interface: the interface is dispatched through
``config._attn_implementation``, which also selects the mask format, and registering a
wrapper changes a process-wide table; the pre-hook leaves the model untouched, works
with whatever attention backend it runs (sdpa, eager, flash), costs two small
projections per chosen layer, and lets the hook of the last chosen layer stop the
forward *before* that layer computes its own attention. The recomputation is checked
against eager ``output_attentions`` in ``tests/test_attention.py``.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

DEFAULT_ATTN_PATTERN = r"(?:^|\.)layers\.(\d+)\.self_attn$"
"""Regex over ``model.named_modules()`` names; group 1 is the 0-based block index."""

OnLayer = Callable[[int, nn.Module, Tensor, Tensor], None]


class _StopForward(Exception):
    """Raised from the last chosen layer's hook to end the forward early."""


def find_attention_modules(
    model: nn.Module, pattern: str = DEFAULT_ATTN_PATTERN
) -> dict[int, nn.Module]:
    """Attention modules by 0-based decoder-block index; ValueError if none match."""
    rx = re.compile(pattern)
    found: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        m = rx.search(name)
        if m:
            if int(m.group(1)) in found:
                raise ValueError(
                    f"pattern {pattern!r} matches block {m.group(1)} twice ({name}); "
                    "pass a more specific attn_pattern"
                )
            found[int(m.group(1))] = module
    if not found:
        raise ValueError(f"no attention module matches the pattern {pattern!r}")
    return dict(sorted(found.items()))


def default_layers(n_layers: int, n: int = 5) -> list[int]:
    """methods.md §3: ``n`` evenly spaced 0-based blocks from ⌊L/3⌋ to ⌊2L/3⌋ (deduplicated)."""
    lo, hi = n_layers // 3, min((2 * n_layers) // 3, n_layers - 1)
    if n == 1 or hi == lo:
        return [lo]
    return sorted({int(lo + (hi - lo) * i / (n - 1) + 0.5) for i in range(n)})


def resolve_layers(
    model: nn.Module, layers: Sequence[int] | None, pattern: str = DEFAULT_ATTN_PATTERN
) -> list[int]:
    """Sorted unique 0-based layers (``None`` → :func:`default_layers`), validated."""
    modules = find_attention_modules(model, pattern)
    n_layers = max(modules) + 1
    chosen = default_layers(n_layers) if layers is None else sorted(set(int(x) for x in layers))
    if not chosen:
        raise ValueError("layers is empty")
    missing = [x for x in chosen if x not in modules]
    if missing:
        raise ValueError(
            f"layers {missing} have no attention module matching {pattern!r} "
            f"(model has blocks 0..{n_layers - 1})"
        )
    return chosen


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids counted over real tokens (as ``generate`` does under left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _rope_fn(module: nn.Module) -> Callable:
    fn = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as fn
    return fn


def _head_dim(module: nn.Module) -> int:
    hd = getattr(module, "head_dim", None)
    if hd is None:
        cfg = module.config
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(hd)


def post_rope_qk(
    module: nn.Module, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """Recompute ``(q [B, H, T, D], k [B, KV, T, D])`` after q/k-norm and RoPE, in the
    model's dtype, exactly as the module's forward does."""
    for name in ("q_proj", "k_proj"):
        if not isinstance(getattr(module, name, None), nn.Module):
            raise ValueError(
                f"{type(module).__name__} has no {name}: only separate q_proj/k_proj "
                "attention modules (Llama, Qwen2/3, Mistral, …) are supported"
            )
    if getattr(getattr(module, "config", None), "attn_logit_softcapping", None):
        raise NotImplementedError("attention logit soft-capping is not supported")
    head_dim = _head_dim(module)
    shape = (*hidden_states.shape[:-1], -1, head_dim)

    def project(lin: nn.Module, norm: nn.Module | None) -> Tensor:
        x = lin(hidden_states)
        per_head = (
            norm is not None
            and getattr(norm, "weight", None) is not None
            and (norm.weight.shape[-1] == head_dim)
        )
        if norm is not None and not per_head:
            x = norm(x)  # full-width q/k norm (OLMo2 style)
        x = x.view(shape)
        if per_head:
            x = norm(x)  # per-head q/k norm (Qwen3 style)
        return x.transpose(1, 2)

    q = project(module.q_proj, getattr(module, "q_norm", None))
    k = project(module.k_proj, getattr(module, "k_norm", None))
    cos, sin = position_embeddings
    return _rope_fn(module)(q, k, cos, sin)


def sliding_window_of(module: nn.Module) -> int | None:
    """The module's sliding window (keys with ``t − s ≥ window`` are masked), if any."""
    if hasattr(module, "sliding_window"):
        return module.sliding_window
    return getattr(getattr(module, "config", None), "sliding_window", None)


def run_capture(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    layers: Sequence[int] | None,
    on_layer: OnLayer,
    *,
    pattern: str = DEFAULT_ATTN_PATTERN,
    position_ids: Tensor | None = None,
) -> list[int]:
    """One no-grad forward calling ``on_layer(layer, module, q, k)`` for each chosen layer
    (ascending), stopped by a private exception right after the last one. Returns the
    resolved layers. Position ids default to :func:`positions_from_mask`."""
    chosen = resolve_layers(model, layers, pattern)
    modules = find_attention_modules(model, pattern)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask)
    last = chosen[-1]

    def make_hook(layer: int, module: nn.Module):
        sig = inspect.signature(module.forward)
        var_kw = next(
            (n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD),
            None,
        )

        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            bound = sig.bind_partial(*args, **kwargs).arguments
            extra = bound.get(var_kw, {}) if var_kw else {}
            hidden = bound.get("hidden_states", extra.get("hidden_states"))
            pos_emb = bound.get("position_embeddings", extra.get("position_embeddings"))
            if hidden is None or pos_emb is None:
                raise ValueError(
                    f"{type(mod).__name__} was not called with hidden_states and "
                    "position_embeddings (cos, sin); this architecture is not supported"
                )
            q, k = post_rope_qk(mod, hidden, pos_emb)
            on_layer(layer, mod, q, k)
            if layer == last:
                raise _StopForward

        return hook

    handles = [
        modules[i].register_forward_pre_hook(make_hook(i, modules[i]), with_kwargs=True)
        for i in chosen
    ]
    stopped = False
    try:
        with torch.no_grad():
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
    except _StopForward:
        stopped = True
    finally:
        for h in handles:
            h.remove()
    if not stopped:
        raise RuntimeError(f"layer {last}'s attention module was never called")
    return chosen


def capture_qk(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    layers: Sequence[int] | None = None,
    *,
    pattern: str = DEFAULT_ATTN_PATTERN,
    position_ids: Tensor | None = None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """``{layer: (q [B, H, T, D], k [B, KV, T, D])}``, post-RoPE, KV heads unexpanded."""
    out: dict[int, tuple[Tensor, Tensor]] = {}
    run_capture(
        model,
        input_ids,
        attention_mask,
        layers,
        lambda i, _m, q, k: out.__setitem__(i, (q, k)),
        pattern=pattern,
        position_ids=position_ids,
    )
    return out
