"""Shared fixtures: tiny random models of both architectures, the char tokenizer."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.builtin import build_model
from pipeline.models.tokenizer import build_char_tokenizer

# Tiny models run faster on one thread, and tests must not fight over the cores.
torch.set_num_threads(1)

TINY = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=None, max_position_embeddings=256, rope_theta=10000.0,
            tie_word_embeddings=True, seed=0)


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


@pytest.fixture(params=["qwen3", "llama"], scope="session")
def tiny_model(request, char_tokenizer):
    torch.manual_seed(0)
    model = build_model({**TINY, "arch": request.param}, char_tokenizer, seed=0)
    return model.eval()
