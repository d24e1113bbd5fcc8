"""Evaluation runner: summaries recomputed by hand from the kept samples; MMLU letter
scoring against an unbatched forward; balanced shots; prompt rendering."""

from __future__ import annotations

import itertools
from math import comb

import pandas as pd
import pytest
import torch

from pipeline.evaluation import items as bench
from pipeline.evaluation.run import evaluate_generative, evaluate_multiple_choice, summarize
from pipeline.tasks import countdown

SPEC = {"n_samples": 4, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16, "k": [1, 2, 4],
        "batch_size": 8, "verify_mode": "symbolic", "shots": 2, "n_problems": None}


def test_summarize_matches_brute_force():
    rows = [{"mode": "greedy", "problem": p, "correct": p == 0, "num_tokens": 3,
             "finished": True} for p in range(3)]
    pattern = {0: [1, 1, 0, 0], 1: [0, 0, 0, 1], 2: [0, 0, 0, 0]}
    for p, cs in pattern.items():
        rows += [{"mode": "sample", "problem": p, "correct": bool(c), "num_tokens": 5 + j,
                  "finished": j < 3} for j, c in enumerate(cs)]
    out = summarize(pd.DataFrame(rows), [1, 2, 4])
    assert out["greedy_accuracy"] == pytest.approx(1 / 3)
    assert out["avg@4"] == pytest.approx((0.5 + 0.25 + 0) / 3)
    for k in (1, 2, 4):  # brute force over all k-subsets of each problem's samples
        per = [sum(any(s) for s in itertools.combinations(cs, k)) / comb(4, k)
               for cs in pattern.values()]
        assert out[f"pass@{k}"] == pytest.approx(sum(per) / 3)
    assert out["mean_response_tokens"] == pytest.approx(6.5)
    assert out["finished_fraction"] == pytest.approx(0.75)


def test_generative_countdown_rescoring(tiny_model, char_tokenizer):
    problems = countdown.generate(5, seed=2)
    items = [{"id": str(i), **p.to_dict()} for i, p in enumerate(problems)]
    table, summary = evaluate_generative(tiny_model, char_tokenizer, "countdown", items, SPEC,
                                         style="builtin", progress=False)
    assert len(table) == 5 * (1 + 4)
    for _, r in table.iterrows():  # every stored verdict is the verifier's on the response
        p = problems[r["problem"]]
        assert r["correct"] == countdown.verify(p.numbers, p.target, r["response"])
    assert summary["num_problems"] == 5 and summary["n_samples"] == 4


def _mmlu_items(n):
    return [{"id": str(i), "question": f"Question {i}: pick one?",
             "choices": [f"opt{i}{c}" for c in "abcd"], "answer": "ABCD"[i % 4]}
            for i in range(n)]


def test_balanced_shots():
    items = _mmlu_items(12)
    shots, rest = bench.balanced_shots(items, 4)
    assert [s["answer"] for s in shots] == ["A", "B", "C", "D"]
    assert len(rest) == 8 and not {s["id"] for s in shots} & {r["id"] for r in rest}


def test_mmlu_letter_scoring_matches_unbatched_forward(tiny_model, char_tokenizer):
    items = _mmlu_items(9)
    spec = {**SPEC, "batch_size": 3}
    table, summary = evaluate_multiple_choice(tiny_model, char_tokenizer, items, spec,
                                              progress=False)
    shots, rest = bench.balanced_shots(items, 2)
    letter_ids = [char_tokenizer(f" {L}", add_special_tokens=False).input_ids[-1]
                  for L in "ABCD"]
    for it, (_, row) in zip(rest, table.iterrows(), strict=True):
        ids = char_tokenizer(bench.mmlu_prompt(it, shots), return_tensors="pt").input_ids
        with torch.no_grad():
            logits = tiny_model(ids).logits[0, -1]
        assert row["pred"] == "ABCD"[int(logits[letter_ids].argmax())]
        assert row["logit_A"] == pytest.approx(float(logits[letter_ids[0]]), abs=1e-4)
    assert summary["accuracy"] == pytest.approx(table["correct"].mean())
    assert summary["shots"] == 2 and summary["num_problems"] == 7


def test_prompts(char_tokenizer):
    p = countdown.Problem((3, 4, 5), 27)
    assert bench.render_prompt("countdown", p.to_dict(), char_tokenizer, "builtin") == \
        "Numbers: 3 4 5\nTarget: 27\n"
    chat = bench.render_prompt("countdown", p.to_dict(), char_tokenizer, "chat")
    assert chat.startswith("<|im_start|>user\n") and chat.endswith("<|im_start|>assistant\n")
    m = bench.render_prompt("math", {"problem": "1+1?"}, char_tokenizer, "chat")
    assert "\\boxed{}" in m
    ex = bench.render_prompt("math", {"problem": "Calculate 3 + 4."}, char_tokenizer,
                             "chat_example")
    question, answer = bench.MATH_EXAMPLE
    # the worked exchange first, then the problem as the last user turn, then the reply
    assert ex == (f"<|im_start|>user\n{question}\n{bench.MATH_INSTRUCTION}<|im_end|>\n"
                  f"<|im_start|>assistant\n{answer}<|im_end|>\n"
                  f"<|im_start|>user\nCalculate 3 + 4.\n{bench.MATH_INSTRUCTION}<|im_end|>\n"
                  "<|im_start|>assistant\n")
    text = bench.mmlu_prompt(_mmlu_items(2)[1], _mmlu_items(1))
    assert text.endswith("D. opt1d\nAnswer:") and "Answer: A\n\n" in text
    with pytest.raises(ValueError, match="unknown evaluation task"):
        bench.load_items({"task": "poetry"}, data=None, cache_dir=None)
