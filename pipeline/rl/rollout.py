"""One RL step's rollouts (docs/methods.md §2): ``group_size`` responses per problem from a
:class:`~pipeline.rl.rollout_engine.RolloutEngine`, scored by the verifier, as one
right-padded batch (:class:`Rollout`), and its row subsets for micro-batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from pipeline.responses import batch_from_table
from pipeline.rl.config import RLConfig
from pipeline.rl.distributed import rank_seed
from pipeline.rl.rollout_engine import RolloutEngine, Sampling, StaticDecoderEngine
from pipeline.tasks.bounded import timeouts as verify_timeouts

RewardFn = Callable[[Any, str], float]
PromptFn = Callable[[Any], str]


def _step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step) * 8 + salt


@dataclass
class Rollout:
    """Right-padded prompt+response batch, groups contiguous (``group_size`` rows each)."""

    input_ids: Tensor  # [N, T]
    attention_mask: Tensor  # [N, T]
    response_mask: Tensor  # bool [N, T]
    rewards: Tensor  # [N] fp32
    lengths: Tensor  # [N] response tokens
    finished: Tensor  # bool [N]
    group_size: int
    texts: list[str]
    verify_timeouts: int = 0  # answers of this rollout past the verification budget (§5)


def rollout(engine: RolloutEngine | nn.Module, tokenizer: PreTrainedTokenizerBase,
            items: Sequence[Any], prompt_fn: PromptFn, reward_fn: RewardFn, cfg: RLConfig,
            step: int, *, rank: int = 0, device: torch.device | None = None) -> Rollout:
    """Sample ``group_size`` responses per item with ``engine`` (a model: the default
    :class:`StaticDecoderEngine` on it) and score them (process ``rank``'s seed); the
    batch goes to ``device`` (default: the engine model's)."""
    if isinstance(engine, nn.Module):
        engine = StaticDecoderEngine(engine, tokenizer)
    prompts = [prompt_fn(it) for it in items]
    sampling = Sampling(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size,
                        seed=rank_seed(_step_seed(cfg.seed, step), rank),
                        dtype=cfg.sample_dtype)
    gens = engine.generate(prompts, sampling).generations
    prompt_ids = tokenizer(prompts, add_special_tokens=False).input_ids
    table = pd.DataFrame({"prompt_ids": [prompt_ids[g.prompt_index] for g in gens],
                          "response_ids": [g.token_ids for g in gens]})
    batch = batch_from_table(table, tokenizer.pad_token_id, padding_side="right")
    if device is None:
        device = next(engine.model.parameters()).device  # type: ignore[attr-defined]
    before = verify_timeouts()
    rewards = torch.tensor([float(reward_fn(items[g.prompt_index], g.text)) for g in gens])
    timeouts = verify_timeouts() - before
    return Rollout(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        response_mask=batch["response_mask"].to(device),
        rewards=rewards,
        lengths=torch.tensor([g.num_tokens for g in gens]),
        finished=torch.tensor([g.finished for g in gens]),
        group_size=cfg.group_size,
        verify_timeouts=timeouts,
        texts=[g.text for g in gens],
    )


def _micro(ro: Rollout, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """A row subset trimmed to its longest sequence (right padding): ids, mask, resp, width."""
    width = int(ro.attention_mask[rows].sum(-1).max())
    return (ro.input_ids[rows, :width], ro.attention_mask[rows, :width],
            ro.response_mask[rows, :width], width)


def _chunks(rows: Tensor, size: int | None) -> list[Tensor]:
    return list(rows.split(size)) if size else [rows]
