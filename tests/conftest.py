"""Shared fixtures: tiny random models of both architectures, the char tokenizer; and
``require``: skip a test whose dependency is missing, fail it under ``CI=true``."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
import torch

from pipeline.models.builtin import build_model
from pipeline.models.tokenizer import build_char_tokenizer

# Tiny models run faster on one thread, and tests must not fight over the cores.
torch.set_num_threads(1)

TINY = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=None, max_position_embeddings=256, rope_theta=10000.0,
            tie_word_embeddings=True, seed=0)


# ---------------------------------------------------------------- optional dependencies
def in_ci() -> bool:
    """``CI=true`` (or 1/yes): the CI run (.ci/run), which installs every dependency."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(condition: object, reason: str) -> None:
    """A test's dependency (a browser, a peer library) is there, or: outside CI the test
    is skipped with ``reason``; under ``CI=true`` it fails with that one line, since CI
    installs every such dependency and a skip there would hide that the check never ran."""
    __tracebackhide__ = True  # the skip / failure is reported at the test's line
    if condition:
        return
    if in_ci():
        pytest.fail(f"missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, reason: str) -> ModuleType:
    """``importlib.import_module(name)``, or :func:`require`'s skip / CI failure."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        error = str(exc)
    require(False, f"{reason} ({error})")
    raise AssertionError("not reached: require skips or fails")


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


@pytest.fixture(params=["qwen3", "llama"], scope="session")
def tiny_model(request, char_tokenizer):
    torch.manual_seed(0)
    model = build_model({**TINY, "arch": request.param}, char_tokenizer, seed=0)
    return model.eval()


# ---------------------------------------------------------------- shared model factories
ARCHS = ("qwen3", "llama", "qwen2", "mistral", "gemma2", "olmo2")


def make_hf_model(arch: str, *, vocab: int = 300, layers: int = 3, tie: bool = False,
                  seed: int = 0, attn: str = "eager", init: float = 0.2, **extra):
    """A random tiny HF causal LM of one architecture (real ``transformers`` classes):
    d=32, 4 heads / 2 KV heads of 8, large init so that distributions are far from
    uniform. ``extra`` goes to the config (e.g. ``sliding_window``)."""
    import transformers as tf

    cls = {"qwen3": "Qwen3", "llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral",
           "gemma2": "Gemma2", "olmo2": "Olmo2"}[arch]
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=8, max_position_embeddings=128, tie_word_embeddings=tie,
                  initializer_range=init, attn_implementation=attn)
    if arch == "olmo2":
        common.pop("head_dim")
    config = getattr(tf, f"{cls}Config")(**{**common, **extra})
    torch.manual_seed(seed)
    return getattr(tf, f"{cls}ForCausalLM")(config).eval()


def padded_batch(vocab: int, side: str, lengths=(7, 3, 5), *, seed: int = 0):
    """``(input_ids, attention_mask)`` [B, max(lengths)] with random ids, padded on
    ``side`` ("left" or "right") with id 0."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, sl] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, sl] = 1
    return ids, mask
