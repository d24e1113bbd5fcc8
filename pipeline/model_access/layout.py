"""The module finder of the model-access layer: where a decoder's parts are (docs/methods.md §1.1).

Works on any model with the usual layout (Llama, Qwen2/3, Mistral, Gemma 2/3, OLMo 2, …):
a stack of decoder layers, each with an attention and an MLP submodule, a final norm and
an ``lm_head``. Modules are found by name with fallbacks; a missing one raises a
``ValueError`` naming the pattern that was tried.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LAYER_STACKS = ("layers", "h", "blocks")
ATTN_NAMES = ("self_attn", "attn", "self_attention", "attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_norm")
# Sandwich-norm blocks (Gemma 2/3, OLMo 2) add post-normed module outputs to the residual.
SANDWICH_ATTN_OUT = "post_attention_layernorm"
SANDWICH_FFN_OUT = "post_feedforward_layernorm"
#: The pre-attention norm of pre-norm blocks (absent in post-norm blocks: OLMo 2).
ATTN_NORM = "input_layernorm"


@dataclass
class BlockModules:
    """The modules of one decoder block whose inputs/outputs are read.

    ``attn`` / ``mlp`` receive the block's normed inputs (their *input* is read);
    ``attn_out`` / ``ffn_out`` produce the residual contributions A^l / F^l (their *output*
    is read). For pre-norm blocks these are ``attn`` / ``mlp`` themselves; for sandwich-norm
    blocks they are the post-attention / post-feedforward norms. ``attn_norm``: the norm
    that turns the residual into the attention input (``input_layernorm``; None for
    post-norm blocks such as OLMo 2, whose attention reads the raw residual).
    """

    block: nn.Module
    attn: nn.Module
    mlp: nn.Module
    attn_out: nn.Module
    ffn_out: nn.Module
    attn_norm: nn.Module | None = None


@dataclass
class DecoderLayout:
    """Decoder (base model), its blocks, final norm (may be None) and the unembedding."""

    decoder: nn.Module
    blocks: list[BlockModules]
    final_norm: nn.Module | None
    lm_head: nn.Module


def _first_attr(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        sub = getattr(module, name, None)
        if isinstance(sub, nn.Module):
            return sub
    return None


def _pattern(prefix: str, names: tuple[str, ...]) -> str:
    return f"{prefix}.{{{'|'.join(names)}}}"


def find_decoder(model: nn.Module) -> nn.Module:
    """The base decoder: ``model.get_decoder()``, else ``model.model``, else ``model``."""
    candidates: list[nn.Module] = []
    if hasattr(model, "get_decoder"):
        try:
            dec = model.get_decoder()
        except (AttributeError, NotImplementedError, ValueError):
            dec = None
        if isinstance(dec, nn.Module):
            candidates.append(dec)
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        candidates.append(inner)
    candidates.append(model)
    for cand in candidates:
        stack = _first_attr(cand, LAYER_STACKS)
        if isinstance(stack, nn.ModuleList) and len(stack) > 0:
            return cand
    raise ValueError(
        "cannot find the decoder layers: tried "
        f"{_pattern('get_decoder()', LAYER_STACKS)}, {_pattern('model.model', LAYER_STACKS)} "
        f"and {_pattern('model', LAYER_STACKS)} (a non-empty nn.ModuleList)"
    )


def find_layout(model: nn.Module, *, need_final_norm: bool = False) -> DecoderLayout:
    """Resolve the decoder, its blocks (attention, MLP, the modules whose outputs are the
    residual contributions), the final norm and the unembedding; ``ValueError`` naming the
    pattern tried if one is missing."""
    decoder = find_decoder(model)
    stack = _first_attr(decoder, LAYER_STACKS)
    assert isinstance(stack, nn.ModuleList)
    blocks = []
    for i, block in enumerate(stack):
        attn = _first_attr(block, ATTN_NAMES)
        if attn is None:
            raise ValueError(f"decoder layer {i} has no attention module "
                             f"({_pattern(f'layers[{i}]', ATTN_NAMES)})")
        mlp = _first_attr(block, MLP_NAMES)
        if mlp is None:
            raise ValueError(f"decoder layer {i} has no MLP module "
                             f"({_pattern(f'layers[{i}]', MLP_NAMES)})")
        post_ffn = getattr(block, SANDWICH_FFN_OUT, None)
        post_attn = getattr(block, SANDWICH_ATTN_OUT, None)
        if isinstance(post_ffn, nn.Module):
            if not isinstance(post_attn, nn.Module):
                raise ValueError(f"decoder layer {i} has {SANDWICH_FFN_OUT} but no "
                                 f"layers[{i}].{SANDWICH_ATTN_OUT} (sandwich-norm block)")
            mods = BlockModules(block, attn, mlp, post_attn, post_ffn)
        else:
            mods = BlockModules(block, attn, mlp, attn, mlp)
        norm = getattr(block, ATTN_NORM, None)
        mods.attn_norm = norm if isinstance(norm, nn.Module) else None
        blocks.append(mods)
    final_norm = _first_attr(decoder, FINAL_NORM_NAMES)
    if need_final_norm and final_norm is None:
        raise ValueError(f"apply_final_norm=True but no final norm found "
                         f"({_pattern('get_decoder()', FINAL_NORM_NAMES)})")
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if lm_head is None:
        lm_head = getattr(model, "lm_head", None)
    weight = getattr(lm_head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("cannot find the unembedding: tried model.get_output_embeddings() "
                         "and model.lm_head (a module with a [vocab, hidden] weight)")
    return DecoderLayout(decoder, blocks, final_norm, lm_head)


# ----------------------------------------------------------------- attention q/k (§3)


def rope_fn(module: nn.Module) -> Callable:
    """``apply_rotary_pos_emb`` of the attention module's own modeling file (Llama's if
    the file has none)."""
    fn = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as fn
    return fn


def head_dim_of(module: nn.Module) -> int:
    """Per-head width of an attention module (``head_dim``, else hidden / heads)."""
    hd = getattr(module, "head_dim", None)
    if hd is None:
        cfg = module.config
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(hd)


def sliding_window_of(module: nn.Module) -> int | None:
    """The module's sliding window (keys with ``t − s ≥ window`` are masked), if any."""
    if hasattr(module, "sliding_window"):
        return module.sliding_window
    return getattr(getattr(module, "config", None), "sliding_window", None)


def post_rope_qk(
    module: nn.Module, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor]
) -> tuple[Tensor, Tensor]:
    """Recompute ``(q [B, H, T, D], k [B, KV, T, D])`` after q/k-norm and RoPE, in the
    model's dtype, exactly as an HF Llama/Qwen2/Qwen3/Mistral/Gemma/OLMo2-family attention
    module does from its (normed) ``hidden_states`` input: its own ``q_proj``/``k_proj``,
    optional ``q_norm``/``k_norm`` (per head as Qwen3/Gemma3, or full width as OLMo2),
    then the rotary function of its modeling file. KV heads stay unexpanded."""
    for name in ("q_proj", "k_proj"):
        if not isinstance(getattr(module, name, None), nn.Module):
            raise ValueError(
                f"{type(module).__name__} has no {name}: only separate q_proj/k_proj "
                "attention modules (Llama, Qwen2/3, Mistral, …) are supported"
            )
    if getattr(getattr(module, "config", None), "attn_logit_softcapping", None):
        raise NotImplementedError("attention logit soft-capping is not supported")
    head_dim = head_dim_of(module)
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
    return rope_fn(module)(q, k, cos, sin)
