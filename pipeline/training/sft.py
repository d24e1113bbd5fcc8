"""Supervised fine-tuning on (prompt, completion) pairs — how the builtin models learn
the task format and a first policy before RL. Loss: token-mean cross-entropy over
completion tokens (prompt tokens masked with -100), AdamW, linear warm-up, cosine decay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    """Token ids of prompt and of completion + EOS, without other special tokens."""
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False).input_ids
    completions = tokenizer([c for _, c in pairs], add_special_tokens=False).input_ids
    return [(p, c + [tokenizer.eos_token_id]) for p, c in zip(prompts, completions, strict=True)]


def collate(
    batch: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (prompt/pad = -100)."""
    width = max(len(p) + len(c) for p, c in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (p, c) in enumerate(batch):
        seq = p + c
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(p) : len(seq)] = torch.tensor(c)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lr_lambda(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.01,
    warmup_steps: int = 50,
    grad_clip: float = 1.0,
    seed: int = 0,
    log_every: int = 25,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train in place for ``steps`` optimizer steps; returns the logged loss history."""
    data = encode_pairs(tokenizer, pairs)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warmup_steps, steps))
    model.train()
    order: list[int] = []
    history: list[dict[str, float]] = []
    running, count = 0.0, 0
    bar = tqdm(range(1, steps + 1), desc="sft", disable=not progress)
    for step in bar:
        if len(order) < batch_size:
            order += torch.randperm(len(data), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        batch = collate([data[i] for i in idx], tokenizer.pad_token_id)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"sft: non-finite loss {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        running += loss.item()
        count += 1
        if step % log_every == 0 or step == steps:
            rec = {"step": step, "loss": running / count, "lr": sched.get_last_lr()[0]}
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}")
            if on_log:
                on_log(step, rec)
            running, count = 0.0, 0
    model.eval()
    return history
