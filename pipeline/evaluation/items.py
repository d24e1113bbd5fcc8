"""Benchmark items for evaluation: loading, prompt rendering and scoring per task.

Tasks: ``countdown`` (the pipeline's own splits, docs/methods.md §5 reward), ``math``
(MATH500/AIME/AMC23/GSM8K through :mod:`pipeline.tasks.benchmarks`, or the registry
sources ``gsm_symbolic`` / ``aime`` of :mod:`pipeline.data`; last ``\\boxed{}`` checked with
math-verify), ``mmlu`` (k-shot multiple choice, scored by the answer letter's logit).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PreTrainedTokenizerBase

from pipeline import io
from pipeline.settings import Benchmark
from pipeline.tasks import countdown
from pipeline.tasks import math as math_task

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# prompt style ``chat_example``: one worked exchange before the problem, showing the answer
# format (SmolLM2-135M-Instruct boxes 12 % of its sampled answers without it, 98 % with it).
MATH_EXAMPLE = ("Calculate 27 + 48.", "27 + 48 = 75.\nThe final answer is \\boxed{75}.")
LETTERS = "ABCD"
TASKS = ("countdown", "math", "mmlu")


def load_items(spec: Benchmark | Mapping[str, Any], *, data: str | None,
               cache_dir: str | None) -> list[dict]:
    """Items of one benchmark entry of the config (``evaluation.benchmarks.<name>``; a
    mapping of its data keys, completed with the schema's defaults: the response and RL
    settings pass theirs)."""
    if not isinstance(spec, Benchmark) and spec.get("task") not in TASKS:
        raise ValueError(f"unknown evaluation task {spec.get('task')!r} (countdown, math, mmlu)")
    b = spec if isinstance(spec, Benchmark) else Benchmark.of(spec)
    task = b.task
    if task == "countdown":
        if not data:
            raise ValueError("countdown evaluation needs the split file (--data)")
        items = [{"id": str(i), **d} for i, d in enumerate(io.read_jsonl(data))]
    elif task == "math":
        from pipeline.tasks.benchmarks import BENCHMARKS, load_benchmark

        name = b.dataset
        if name in BENCHMARKS or b.path:
            items = load_benchmark(name, path=b.path, cache_dir=cache_dir)
        else:
            from pipeline.data import load_source

            items = load_source(name, cache_dir=cache_dir, seed=b.data_seed, limit=b.n_problems)
    else:  # mmlu
        from pipeline.data import load_source

        items = load_source(b.dataset, cache_dir=cache_dir, path=b.path)
    if b.n_problems is not None and task != "mmlu":  # mmlu: shots come first
        items = items[: b.n_problems]
    return items


def _chat(tokenizer: PreTrainedTokenizerBase, content: str,
          example: tuple[str, str] | None = None) -> str:
    """``content`` as a user turn of the chat template, after an optional (user, assistant)
    example exchange; plain text for tokenizers without a template."""
    turns = list(example or ())
    if not tokenizer.chat_template:
        return "".join(t + "\n" for t in turns) + content + "\n"
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
            for i, t in enumerate([*turns, content])]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def render_prompt(task: str, item: dict, tokenizer: PreTrainedTokenizerBase, style: str) -> str:
    """Prompt text: ``builtin`` = the tiny models' plain format; ``chat`` = chat template."""
    if task == "countdown":
        problem = countdown.Problem.from_dict(item)
        if style == "builtin":
            return countdown.prompt(problem, "builtin")
        return _chat(tokenizer, countdown.prompt(problem, "chat"))
    if task == "math":
        if style == "chat_example":
            question, answer = MATH_EXAMPLE
            return _chat(tokenizer, f"{item['problem']}\n{MATH_INSTRUCTION}",
                         example=(f"{question}\n{MATH_INSTRUCTION}", answer))
        return _chat(tokenizer, f"{item['problem']}\n{MATH_INSTRUCTION}")
    raise ValueError(f"task {task!r} has no generative prompt")


def score(task: str, item: dict, response: str, *, verify_mode: str = "symbolic") -> bool:
    if task == "countdown":
        return countdown.verify(item["numbers"], item["target"], response)
    if task == "math":
        return math_task.verify(response, item["answer"], mode=verify_mode)
    raise ValueError(f"task {task!r} has no generative scorer")


def mmlu_prompt(item: dict, shots: list[dict]) -> str:
    """k-shot MMLU in the usual plain format (no chat template, as in lm-eval-harness);
    the model's next token should be `` A``…`` D``."""

    def block(it: dict, with_answer: bool) -> str:
        opts = "\n".join(f"{L}. {c}" for L, c in zip(LETTERS, it["choices"], strict=True))
        ans = f" {it['answer']}\n\n" if with_answer else ""
        return f"{it['question'].strip()}\n{opts}\nAnswer:{ans}"

    text = "The following are multiple choice questions (with answers).\n\n"
    return text + "".join(block(s, True) for s in shots) + block(item, False)


def balanced_shots(items: list[dict], k: int) -> tuple[list[dict], list[dict]]:
    """``k`` demonstrations whose answer letters are as balanced as possible (taken in
    order, cycling A, B, C, D), and the remaining items to evaluate."""
    shots: list[dict] = []
    used: set[int] = set()
    for want in (LETTERS * k)[:k]:
        for i, it in enumerate(items):
            if i not in used and it["answer"] == want:
                shots.append(it)
                used.add(i)
                break
    return shots, [it for i, it in enumerate(items) if i not in used]
