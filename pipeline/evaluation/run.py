"""Evaluate one model on one benchmark: per-sample table + summary (docs/methods.md §5).

Generative tasks: greedy decoding plus ``n_samples`` samples per problem → greedy
accuracy, avg@n, unbiased pass@k. Multiple choice (MMLU): the answer letter with the
highest next-token logit among `` A``…`` D`` (accuracy; no sampling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.evaluation import items as bench
from pipeline.evaluation.metrics import mean_ci, pass_at_k
from pipeline.generation import Generation, generate
from pipeline.settings import Benchmark, Responses


def evaluate_generative(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    items: Sequence[dict],
    spec: Benchmark | Mapping[str, Any],
    *,
    style: str,
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Greedy + sampled responses, each scored; the table keeps every response. ``spec``:
    the benchmark's section (a mapping is completed with the schema's defaults)."""
    b = spec if isinstance(spec, Benchmark) else Benchmark.of({"task": task, **spec})
    prompts = [bench.render_prompt(task, it, tokenizer, style) for it in items]
    rows = []
    runs = [("greedy", 1, 0.0)]
    if b.n_samples > 0:
        runs.append(("sample", b.n_samples, b.temperature))
    for mode, n, temp in runs:
        for g, correct in generate_scored(model, tokenizer, task, items, prompts, b, n=n,
                                          temperature=temp, seed=seed, progress=progress,
                                          desc=f"{task} {mode}", verify_mode=b.verify_mode):
            rows.append({
                "mode": mode, "problem": g.prompt_index,
                "item_id": str(items[g.prompt_index]["id"]), "sample": g.sample_index,
                "response": g.text, "num_tokens": g.num_tokens, "finished": g.finished,
                "correct": correct,
            })
    table = pd.DataFrame(rows)
    return table, summarize(table, b.k)


def generate_scored(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: str,
                    items: Sequence[dict], prompts: list[str], spec: Benchmark | Responses, *,
                    n: int, temperature: float, seed: int, progress: bool, desc: str,
                    verify_mode: str = "symbolic") -> list[tuple[Generation, bool]]:
    """``n`` responses to each prompt (``prompts[i]`` renders ``items[i]``) with the
    sampling settings of ``spec`` (``top_p``, ``max_new_tokens``, ``batch_size``,
    ``sample_dtype``), each with its correctness; shared by the evaluation and the
    analysed responses (:func:`pipeline.responses.sample_responses`)."""
    gens = generate(model, tokenizer, prompts, n=n, temperature=temperature, top_p=spec.top_p,
                    max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
                    seed=seed, progress=progress, desc=desc, dtype=spec.sample_dtype)
    return [(g, bench.score(task, items[g.prompt_index], g.text, verify_mode=verify_mode))
            for g in gens]


def summarize(table: pd.DataFrame, k: Sequence[int]) -> dict[str, Any]:
    """Greedy accuracy, avg@n, pass@k (means over problems, 95 % CIs over problems)."""
    greedy = table[table["mode"] == "greedy"]
    out: dict[str, Any] = {
        "num_problems": int(greedy["problem"].nunique()),
        "greedy_accuracy": float(greedy["correct"].mean()),
        "greedy_finished_fraction": float(greedy["finished"].mean()),
    }
    _, lo, hi = mean_ci(greedy["correct"].astype(float).to_numpy())
    out["greedy_accuracy_ci95"] = [lo, hi]
    sample = table[table["mode"] == "sample"]
    if len(sample):
        per_problem = sample.groupby("problem")["correct"].agg(["size", "sum", "mean"])
        n = int(per_problem["size"].min())
        out["n_samples"] = n
        out[f"avg@{n}"] = float(per_problem["mean"].mean())
        _, lo, hi = mean_ci(per_problem["mean"].to_numpy())
        out[f"avg@{n}_ci95"] = [lo, hi]
        out["mean_response_tokens"] = float(sample["num_tokens"].mean())
        out["finished_fraction"] = float(sample["finished"].mean())
        for kk in k:
            if kk <= n:
                vals = [pass_at_k(int(r["size"]), int(r["sum"]), kk)
                        for _, r in per_problem.iterrows()]
                out[f"pass@{kk}"] = float(sum(vals) / len(vals))
    return out


@torch.inference_mode()
def evaluate_multiple_choice(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[dict],
    spec: Benchmark | Mapping[str, Any],
    *,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """k-shot MMLU by the next-token logits of `` A``…`` D`` at the end of the prompt."""
    b = spec if isinstance(spec, Benchmark) else Benchmark.of({"task": "mmlu", **spec})
    shots, rest = bench.balanced_shots(list(items), b.shots)
    if b.n_problems is not None:
        rest = rest[: b.n_problems]
    letter_ids = [tokenizer(f" {L}", add_special_tokens=False).input_ids[-1]
                  for L in bench.LETTERS]
    if len(set(letter_ids)) != 4:
        raise ValueError("tokenizer does not give four distinct answer-letter tokens")
    device = next(model.parameters()).device
    rows = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        bs = b.batch_size
        prompts = {id(it): bench.mmlu_prompt(it, shots) for it in rest}
        ordered = sorted(rest, key=lambda it: len(prompts[id(it)]))  # less padding
        for start in tqdm(range(0, len(ordered), bs), desc="mmlu", disable=not progress):
            chunk = ordered[start:start + bs]
            enc = tokenizer([prompts[id(it)] for it in chunk], return_tensors="pt",
                            padding=True).to(device)
            logits = model(**enc, logits_to_keep=1).logits[:, -1, :].float()
            letter_logits = logits[:, letter_ids]
            top = logits.argmax(-1)
            for it, ll, t in zip(chunk, letter_logits, top, strict=True):
                pred = bench.LETTERS[int(ll.argmax())]
                rows.append({"item_id": str(it["id"]), "answer": it["answer"], "pred": pred,
                             "correct": pred == it["answer"],
                             "letter_is_top1": int(t) in letter_ids,
                             **{f"logit_{L}": float(v) for L, v in zip(bench.LETTERS, ll,
                                                                       strict=True)}})
    finally:
        tokenizer.padding_side = side
    order = {str(it["id"]): i for i, it in enumerate(rest)}
    table = pd.DataFrame(rows).sort_values("item_id", key=lambda c: c.map(order))
    table = table.reset_index(drop=True)
    acc = table["correct"].astype(float).to_numpy()
    _, lo, hi = mean_ci(acc)
    summary = {"num_problems": len(table), "shots": len(shots), "accuracy": float(acc.mean()),
               "accuracy_ci95": [lo, hi],
               "letter_top1_fraction": float(table["letter_is_top1"].mean()),
               "answer_distribution": table["answer"].value_counts().to_dict()}
    return table, summary
