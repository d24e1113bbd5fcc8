"""Rollout engines: what samples the RL trainer's responses (docs/architecture.md §7).

An engine turns prompts into sampled responses (:meth:`RolloutEngine.generate`) and
takes the trainer's current weights (:meth:`RolloutEngine.load_weights`). The trainer
never samples through anything else, so a different engine (a vLLM server in its own
process, with NCCL weight sync) plugs in here; such an engine samples from a slightly
different numerical policy than the trainer's forward and must return its per-token
log-probs so the trainer can correct for the mismatch (truncated importance weights),
which :class:`Samples` carries as ``engine_logprobs``. None ships today: vLLM does not
install beside torch 2.13 and transformers 5.23.

:class:`StaticDecoderEngine` (the default) samples with
:func:`pipeline.generation.generate` (the static-cache decoder of
:mod:`pipeline.static_decode`). Single-process and DDP training give it the training
model itself, so ``load_weights`` has nothing to do; under FSDP2 it owns an unsharded
copy (in ``sample_dtype``) that the trainer refreshes every step from the gathered full
weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from pipeline.generation import Generation, generate
from pipeline.rl.fsdp import copy_named


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``n`` responses per prompt (docs/methods.md §6)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 32
    seed: int = 0
    dtype: torch.dtype | str | None = None


@dataclass
class Samples:
    """An engine's output: generations ordered by (prompt, sample); ``engine_logprobs``
    (per generation, per token) when the engine's numerics differ from the trainer's."""

    generations: list[Generation]
    engine_logprobs: list[Tensor] | None = None


class RolloutEngine(Protocol):
    """What the trainer needs from a sampler."""

    def generate(self, prompts: list[str], sampling: Sampling) -> Samples: ...

    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None: ...


class StaticDecoderEngine:
    """Sampling with :func:`pipeline.generation.generate` on ``model``.

    ``owns_weights``: the model is the engine's own copy (FSDP2), so
    :meth:`load_weights` copies the given tensors in; otherwise it is the training model
    and the call only checks that nothing is passed."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, *,
                 owns_weights: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.owns_weights = owns_weights

    def generate(self, prompts: list[str], sampling: Sampling) -> Samples:
        gens = generate(self.model, self.tokenizer, prompts, n=sampling.n,
                        temperature=sampling.temperature, top_p=sampling.top_p,
                        max_new_tokens=sampling.max_new_tokens,
                        batch_size=sampling.batch_size, seed=sampling.seed, progress=False,
                        desc="rollout", dtype=sampling.dtype)
        return Samples(gens)

    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Copy ``(name, full tensor)`` pairs into the engine's parameters (every
        parameter must come, under its ``named_parameters`` name; tied ones once)."""
        if not self.owns_weights:
            if next(iter(named_tensors), None) is not None:
                raise ValueError("load_weights: this engine samples from the training model")
            return
        seen = copy_named(self.model, named_tensors)
        if missing := sorted({n for n, _ in self.model.named_parameters()} - seen):
            raise KeyError(f"load_weights: no weights for {missing[:3]}"
                           f"{' …' if len(missing) > 3 else ''}")
