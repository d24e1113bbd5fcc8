"""Benchmark: RL step time of each method on one and the same rollout batch.

``python -m pipeline.bench rl [--model DIR] [--data JSONL] [--methods ...] [--repeats 3]``

One rollout batch (``--prompts`` Countdown prompts × ``--group`` samples) is sampled once;
then every method's update step — :func:`pipeline.rl.trainer.prepare` (old log-probs,
diagnostics, attention credit) + :func:`pipeline.rl.trainer.update` (forward, backward,
optimizer step) — runs on a fresh copy of the same model and optimizer state, interleaved
over ``--repeats`` rounds (best of each: the machine may be shared). BuPO is timed in its
IPA phase (step ≤ s_inter: π^k log-probs, forward stopped after block k) and its GRPO
phase. Prints each method's time and its ratio to GRPO; issue targets: BuPO-IPA / GRPO
≤ 1.0, attention credit / GRPO ≤ 1.15 (docs/methods.md §2, §3). The sampling time of the batch
is printed too, for ratios of whole steps (sampling is the same for every method).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from pipeline.evaluation import items as bench
from pipeline.models import load
from pipeline.rl.config import RLConfig
from pipeline.rl.trainer import make_optimizer, prepare, rollout, task_fns, update

DEFAULT_METHODS = ["grpo", "bupo", "rhythm_coupled", "rhythm_local", "credit_entropy",
                   "bupo+rhythm_coupled"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="results/default/models/qwen3-tiny/model")
    p.add_argument("--data", default="results/default/data/countdown/train.jsonl")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--bupo-layer", type=int, default=None,
                   help="k (1-based); default: half the model's depth")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="sequences per forward/backward (RLConfig.micro_batch_size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--style", default="builtin", help="prompt style (builtin | chat)")


def _time_step(model, cfg: RLConfig, ro, step: int) -> float:
    m = copy.deepcopy(model)
    opt = make_optimizer(m, cfg)
    t0 = time.perf_counter()
    prep = prepare(m, ro, cfg, step)
    update(m, opt, ro, prep, cfg, step)
    return time.perf_counter() - t0


def run(a: argparse.Namespace) -> int:
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = load(a.model, attn_implementation="eager")
    k = a.bupo_layer or max(1, model.config.num_hidden_layers // 2)
    items = bench.load_items({"task": "countdown", "n_problems": a.prompts}, data=a.data,
                             cache_dir=None)
    prompt_fn, reward_fn = task_fns("countdown", tok, a.style)
    base = {"prompts_per_step": a.prompts, "group_size": a.group, "seed": 0,
            "max_new_tokens": a.max_new_tokens, "bupo_layer": k, "s_inter": 1,
            "micro_batch_size": a.micro_batch}
    t0 = time.perf_counter()
    ro = rollout(model, tok, items, prompt_fn, reward_fn, RLConfig.from_dict(base), step=1)
    t_gen = time.perf_counter() - t0
    n_tok = int(ro.response_mask.sum())
    # (label, method, step): BuPO's step 1 is its IPA phase (s_inter=1), step 2 its GRPO phase
    cases = [(m, m, 1) for m in a.methods if not m.startswith("bupo")]
    for m in (m for m in a.methods if m.startswith("bupo")):
        cases += [(f"{m} (ipa)", m, 1), (f"{m} (grpo phase)", m, 2)]
    cfgs = {label: RLConfig.from_dict({**base, "method": m}) for label, m, _ in cases}
    best = {label: float("inf") for label, _, _ in cases}
    for label, _, step in cases:  # warm-up
        _time_step(model, cfgs[label], ro, step)
    for _ in range(a.repeats):
        for label, _, step in cases:
            best[label] = min(best[label], _time_step(model, cfgs[label], ro, step))
    ref = best.get("grpo")
    print(f"model {a.model} ({model.config.num_hidden_layers} layers, BuPO k={k}); batch "
          f"{a.prompts}x{a.group} sequences, {n_tok} response tokens; torch threads "
          f"{torch.get_num_threads()}; best of {a.repeats}")
    print(f"sampling the batch: {t_gen:.2f} s (same for every method)")
    print(f"{'method':<28} {'update s':>9} {'/ grpo':>7} {'step s':>7} {'/ grpo':>7}")
    for label, _, _ in cases:
        t = best[label]
        r = f"{t / ref:7.2f}" if ref else "      -"
        rs = f"{(t + t_gen) / (ref + t_gen):7.2f}" if ref else "      -"
        print(f"{label:<28} {t:9.3f} {r} {t + t_gen:7.2f} {rs}")
    return 0
