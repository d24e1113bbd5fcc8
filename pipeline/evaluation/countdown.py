"""Countdown evaluation of one model: greedy accuracy, avg@k and unbiased pass@k
(methods.md §5) from per-sample outputs that are kept as a table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.evaluation.metrics import mean_ci, pass_at_k
from pipeline.generation import generate
from pipeline.tasks import countdown


def format_prompt(problem: countdown.Problem, tokenizer: PreTrainedTokenizerBase,
                  style: str) -> str:
    """``builtin``: the tiny models' plain format; ``chat``: the TinyZero instruction
    rendered with the tokenizer's chat template."""
    if style == "builtin":
        return countdown.prompt(problem, "builtin")
    messages = [{"role": "user", "content": countdown.prompt(problem, "chat")}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def evaluate_countdown(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[countdown.Problem],
    *,
    n_samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    k: Sequence[int],
    batch_size: int,
    prompt_style: str = "builtin",
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-sample table (``mode`` greedy|sample) and a summary of the metrics."""
    prompts = [format_prompt(p, tokenizer, prompt_style) for p in problems]
    rows = []
    runs = [("greedy", 1, 0.0), ("sample", n_samples, temperature)]
    for mode, n, temp in runs:
        gens = generate(model, tokenizer, prompts, n=n, temperature=temp, top_p=top_p,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                        progress=progress, desc=f"countdown {mode}")
        for g in gens:
            p = problems[g.prompt_index]
            rows.append({
                "mode": mode, "problem": g.prompt_index, "sample": g.sample_index,
                "numbers": " ".join(map(str, p.numbers)), "target": p.target,
                "response": g.text, "num_tokens": g.num_tokens, "finished": g.finished,
                "answer": countdown.extract_answer(g.text),
                "correct": countdown.verify(p.numbers, p.target, g.text),
            })
    table = pd.DataFrame(rows)
    return table, summarize(table, k)


def summarize(table: pd.DataFrame, k: Sequence[int]) -> dict[str, Any]:
    """Greedy accuracy, avg@n, pass@k (mean over problems, with 95 % CIs over problems)."""
    greedy = table[table["mode"] == "greedy"]
    sample = table[table["mode"] == "sample"]
    per_problem = sample.groupby("problem")["correct"].agg(["size", "sum", "mean"])
    n = int(per_problem["size"].min())
    out: dict[str, Any] = {
        "num_problems": int(len(per_problem)),
        "n_samples": n,
        "greedy_accuracy": float(greedy["correct"].mean()),
        f"avg@{n}": float(per_problem["mean"].mean()),
        "mean_response_tokens": float(sample["num_tokens"].mean()),
        "finished_fraction": float(sample["finished"].mean()),
    }
    _, lo, hi = mean_ci(per_problem["mean"].to_numpy())
    out[f"avg@{n}_ci95"] = [lo, hi]
    for kk in k:
        vals = [pass_at_k(int(r["size"]), int(r["sum"]), kk) for _, r in per_problem.iterrows()]
        out[f"pass@{kk}"] = float(sum(vals) / len(vals))
    return out
