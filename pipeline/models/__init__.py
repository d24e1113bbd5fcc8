"""Model loading and provisioning. Every stage loads models through :func:`load`
(plain ``from_pretrained``), whatever their source (builtin, hub, gguf)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load(
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a provisioned model directory: ``(model.eval(), tokenizer)``.

    dtype defaults to float32 (analyses are defined in fp32); device to CUDA when
    available, else CPU. The tokenizer pads on the left (generation); pass right-padded
    batches explicitly where wanted.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"not a model directory (no config.json): {path}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"dtype": resolve_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer
