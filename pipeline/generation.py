"""Batched sampling: the one function every stage uses to generate responses.

A compact decode loop over a KV cache instead of ``model.generate``: on CPU the per-step
overhead of ``generate`` (logits processors, mask preparation, sdpa dispatch) dominates
small models (measured: ``python -m pipeline.bench generation``). Prompts are sorted by
length (less padding) and left-padded; positions follow the attention mask as in
``generate``; rows that have emitted EOS are dropped from the batch and its cache, so a
batch costs as much as its live rows. Greedy when ``temperature == 0``, else
temperature + nucleus (top-p) sampling from a seeded generator.

``dtype`` runs the decode loop on a cast copy of the model (made once per call, so a
model that is being trained is always sampled with its current weights). On CPUs with
native bf16 matmuls (AVX512-BF16 / AMX) and on GPUs, bf16 halves the weight traffic that
bounds one-token decode steps; the copy then uses ``sdpa`` attention, which measured
faster than ``eager`` in bf16 (``python -m pipeline.bench generation``). Sampling in bf16
changes the sampled distribution slightly (logits move by up to ~1 on SmolLM2): analyses
and log-probs of the sampled tokens are still computed by the fp32 model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Generation:
    prompt_index: int
    sample_index: int
    text: str
    num_tokens: int
    finished: bool  # ended with EOS rather than the length limit
    token_ids: list[int]  # the sampled tokens, EOS included when finished


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens [B] from logits [B, V]: argmax, or softmax(logits/T) restricted to the
    smallest set whose probability mass reaches ``top_p``."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before this token is enough
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sampling_model(model: PreTrainedModel, dtype: torch.dtype | str | None) -> PreTrainedModel:
    """The model the decode loop runs: ``model`` itself, or an eval-mode copy in ``dtype``
    (``sdpa`` attention when the copy is half precision)."""
    from pipeline.models import resolve_dtype

    if dtype is None:
        return model
    dtype = resolve_dtype(dtype)
    if dtype == next(model.parameters()).dtype:
        return model
    clone = copy.deepcopy(model).to(dtype).eval()
    if dtype in (torch.bfloat16, torch.float16):
        clone.set_attn_implementation("sdpa")
    return clone


@torch.inference_mode()
def _decode_batch(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  *, max_new_tokens: int, min_new_tokens: int, eos: int | None,
                  temperature: float, top_p: float,
                  generator: torch.Generator | None) -> tuple[list[list[int]], list[bool]]:
    n = input_ids.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    live = torch.arange(n)
    mask = attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=pos,
                   past_key_values=cache, use_cache=True).logits[:, -1]
    last = pos[:, -1]
    for step in range(max_new_tokens):
        if eos is not None and step < min_new_tokens:
            logits[:, eos] = -float("inf")
        nxt = sample_next(logits, temperature, top_p, generator)
        done = torch.zeros(len(live), dtype=torch.bool)
        for j, (row, tok) in enumerate(zip(live.tolist(), nxt.tolist(), strict=True)):
            out[row].append(tok)
            if tok == eos:
                finished[row] = True
                done[j] = True
        if step == max_new_tokens - 1:
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            live, nxt, mask, last = live[keep], nxt[keep], mask[keep], last[keep]
            cache.batch_select_indices(keep.to(input_ids.device))
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        last = last + 1
        logits = model(input_ids=nxt[:, None].to(input_ids.device), attention_mask=mask,
                       position_ids=last[:, None], past_key_values=cache,
                       use_cache=True).logits[:, -1]
    return out, finished


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
    min_new_tokens: int = 0,
    dtype: torch.dtype | str | None = None,
) -> list[Generation]:
    """``n`` responses per prompt; results ordered by (prompt_index, sample_index).
    ``dtype``: compute dtype of the decode loop (None: the model's own)."""
    if n < 1 or batch_size < 1:
        raise ValueError("generate: n and batch_size must be >= 1")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    items = [(i, j) for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
             for j in range(n)]
    eos = tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    sampler = sampling_model(model, dtype)
    out: list[Generation] = []
    try:
        bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="seq")
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            enc = tokenizer([prompts[i] for i, _ in chunk], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            seqs, done = _decode_batch(
                sampler, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens, eos=eos, temperature=temperature, top_p=top_p,
                generator=generator)
            for (i, j), ids, fin in zip(chunk, seqs, done, strict=True):
                text_ids = ids[:-1] if fin else ids
                out.append(Generation(i, j, tokenizer.decode(text_ids, skip_special_tokens=False),
                                      len(ids), fin, ids))
            bar.update(len(chunk))
        bar.close()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    out.sort(key=lambda g: (g.prompt_index, g.sample_index))
    return out
