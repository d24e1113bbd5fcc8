"""Tiny decoder-only models built with the real ``transformers`` classes.

``arch: qwen3`` → ``Qwen3ForCausalLM`` (q/k RMSNorm, GQA); ``arch: llama`` →
``LlamaForCausalLM``. Sizes come from the config; the vocabulary is the character-level
tokenizer's (:mod:`pipeline.models.tokenizer`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ARCHITECTURES: dict[str, tuple[type, type]] = {
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
}


def build_config(spec: dict[str, Any], tokenizer: PreTrainedTokenizerBase):
    """HF config for a builtin spec (keys as in ``workflow/schemas/config.schema.yaml``)."""
    arch = spec["arch"]
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown builtin arch {arch!r}; known: {sorted(ARCHITECTURES)}")
    config_cls, _ = ARCHITECTURES[arch]
    head_dim = spec.get("head_dim") or spec["hidden_size"] // spec["num_heads"]
    return config_cls(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"],
        head_dim=head_dim,
        max_position_embeddings=spec.get("max_position_embeddings", 512),
        rope_theta=spec.get("rope_theta", 10000.0),
        tie_word_embeddings=spec.get("tie_word_embeddings", True),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )


def build_model(
    spec: dict[str, Any], tokenizer: PreTrainedTokenizerBase, seed: int
) -> PreTrainedModel:
    """Randomly initialised model (deterministic for a given seed)."""
    config = build_config(spec, tokenizer)
    _, model_cls = ARCHITECTURES[spec["arch"]]
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
