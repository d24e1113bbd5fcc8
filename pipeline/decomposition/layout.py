"""Locate the standard HF decoder-only modules that :mod:`internal` hooks (methods.md §1.1).

Works on any model with the usual layout (Llama, Qwen2/3, Mistral, Gemma 2/3, OLMo 2, …):
a stack of decoder layers, each with an attention and an MLP submodule, a final norm and
an ``lm_head``. Modules are found by name with fallbacks; a missing one raises a
``ValueError`` naming the pattern that was tried.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

LAYER_STACKS = ("layers", "h", "blocks")
ATTN_NAMES = ("self_attn", "attn", "self_attention", "attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_norm")
# Sandwich-norm blocks (Gemma 2/3, OLMo 2) add post-normed module outputs to the residual.
SANDWICH_ATTN_OUT = "post_attention_layernorm"
SANDWICH_FFN_OUT = "post_feedforward_layernorm"


@dataclass
class BlockModules:
    """The modules of one decoder block whose inputs/outputs are read.

    ``attn`` / ``mlp`` receive the block's normed inputs (their *input* is read);
    ``attn_out`` / ``ffn_out`` produce the residual contributions A^l / F^l (their *output*
    is read). For pre-norm blocks these are ``attn`` / ``mlp`` themselves; for sandwich-norm
    blocks they are the post-attention / post-feedforward norms.
    """

    block: nn.Module
    attn: nn.Module
    mlp: nn.Module
    attn_out: nn.Module
    ffn_out: nn.Module


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
    """Resolve every module :func:`internal_entropies` hooks; ``ValueError`` if one is missing."""
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
            blocks.append(BlockModules(block, attn, mlp, post_attn, post_ffn))
        else:
            blocks.append(BlockModules(block, attn, mlp, attn, mlp))
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
