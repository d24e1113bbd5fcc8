"""Sampled responses that the analyses share (decomposition, attention rhythm).

Each model answers a prompt set (held-out Countdown in the builtin format for builtin
models; a math set through the chat template otherwise); the table keeps the exact token
ids so every analysis re-reads precisely the sequence that was sampled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.evaluation import items as bench
from pipeline.evaluation.run import generate_scored
from pipeline.settings import Responses


def sample_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: str,
                     items: list[dict], spec: Responses | Mapping[str, Any], *, style: str,
                     seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """One row per response: texts, ``prompt_ids`` / ``response_ids`` (lists), correctness.
    ``spec``: the response settings (a mapping is completed with the schema's defaults)."""
    r = spec if isinstance(spec, Responses) else Responses.of({"task": task, **spec})
    prompts = [bench.render_prompt(task, it, tokenizer, style) for it in items]
    rows = []
    for g, correct in generate_scored(model, tokenizer, task, items, prompts, r,
                                      n=r.n_samples, temperature=r.temperature,
                                      seed=seed, progress=progress, desc="responses"):
        prompt_ids = tokenizer(prompts[g.prompt_index], add_special_tokens=False).input_ids
        response_ids = g.token_ids
        rows.append({
            "prompt_index": g.prompt_index, "sample": g.sample_index,
            "item_id": str(items[g.prompt_index]["id"]), "prompt": prompts[g.prompt_index],
            "response": g.text, "prompt_ids": prompt_ids, "response_ids": response_ids,
            "num_response_tokens": len(response_ids), "finished": g.finished,
            "correct": correct,
        })
    return pd.DataFrame(rows)


def batch_from_table(
    table: pd.DataFrame, pad_id: int, *, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``response_mask`` [B, T] of prompt+response."""
    seqs = [list(p) + list(r) for p, r in zip(table["prompt_ids"], table["response_ids"],
                                               strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, p) in enumerate(zip(seqs, table["prompt_ids"], strict=True)):
        off = 0 if padding_side == "right" else width - len(s)
        ids[i, off:off + len(s)] = torch.tensor(s)
        attn[i, off:off + len(s)] = 1
        resp[i, off + len(p):off + len(s)] = True
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp}
