"""Batched sampling: the one function every stage uses to generate responses.

Prompts are sorted by length (less padding), left-padded, and generated in batches with
``model.generate`` and a KV cache; ``n`` samples per prompt are drawn by repeating the
prompt inside the batch. Greedy when ``temperature == 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Generation:
    prompt_index: int
    sample_index: int
    text: str
    num_tokens: int
    finished: bool  # ended with EOS rather than the length limit
    token_ids: list[int]  # the sampled tokens, EOS included when finished


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    desc: str = "generate",
    **generate_kwargs,
) -> list[Generation]:
    """``n`` responses per prompt; results ordered by (prompt_index, sample_index)."""
    if n < 1 or batch_size < 1:
        raise ValueError("generate: n and batch_size must be >= 1")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    items = [(i, j) for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
             for j in range(n)]
    eos = tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[Generation] = []
    sample = temperature > 0
    kwargs = dict(do_sample=sample, max_new_tokens=max_new_tokens, eos_token_id=eos,
                  pad_token_id=tokenizer.pad_token_id)
    if sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    kwargs.update(generate_kwargs)
    try:
        bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="seq")
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            enc = tokenizer([prompts[i] for i, _ in chunk], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            seqs = model.generate(**enc, **kwargs)
            new = seqs[:, enc["input_ids"].shape[1]:]
            for (i, j), row in zip(chunk, new, strict=True):
                ids = row.tolist()
                finished = eos in ids
                if finished:
                    ids = ids[: ids.index(eos)]
                else:
                    ids = [t for t in ids if t != tokenizer.pad_token_id]
                token_ids = ids + [eos] if finished else ids
                out.append(Generation(i, j, tokenizer.decode(ids, skip_special_tokens=False),
                                      len(token_ids), finished, token_ids))
            bar.update(len(chunk))
        bar.close()
    finally:
        tokenizer.padding_side = side
    out.sort(key=lambda g: (g.prompt_index, g.sample_index))
    return out
