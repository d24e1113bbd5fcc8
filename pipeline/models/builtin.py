"""Tiny decoder-only models built with the real ``transformers`` classes.

``arch: qwen3`` → ``Qwen3ForCausalLM`` (q/k RMSNorm, GQA); ``arch: llama`` →
``LlamaForCausalLM``. Sizes come from the config; the vocabulary is the character-level
tokenizer's (:mod:`pipeline.models.tokenizer`).
"""

from __future__ import annotations

from collections.abc import Mapping
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

from pipeline.settings import BuiltinModel

ARCHITECTURES: dict[str, tuple[type, type]] = {
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
}


def builtin_spec(spec: BuiltinModel | Mapping[str, Any]) -> BuiltinModel:
    """A builtin ``models.<name>`` entry as its typed section, the schema's defaults filled
    (``source`` may be left out)."""
    if isinstance(spec, BuiltinModel):
        return spec
    if spec.get("arch") not in ARCHITECTURES:
        raise ValueError(f"unknown builtin arch {spec.get('arch')!r}; "
                         f"known: {sorted(ARCHITECTURES)}")
    return BuiltinModel.of({"source": "builtin", **spec})


def build_config(spec: BuiltinModel | Mapping[str, Any], tokenizer: PreTrainedTokenizerBase):
    """HF config for a builtin spec (keys as in ``workflow/schemas/config.schema.yaml``)."""
    m = builtin_spec(spec)
    config_cls, _ = ARCHITECTURES[m.arch]
    return config_cls(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads,
        head_dim=m.head_dim or m.hidden_size // m.num_heads,
        max_position_embeddings=m.max_position_embeddings,
        rope_theta=m.rope_theta,
        tie_word_embeddings=m.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )


def build_model(
    spec: BuiltinModel | Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, seed: int
) -> PreTrainedModel:
    """Randomly initialised model (deterministic for a given seed)."""
    config = build_config(spec, tokenizer)
    _, model_cls = ARCHITECTURES[builtin_spec(spec).arch]
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
