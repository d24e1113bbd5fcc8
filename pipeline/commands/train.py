"""``train``: RL of one model with one method and seed (docs/methods.md §2, §3)."""

from __future__ import annotations

import argparse

from pipeline.commands.common import (
    CACHE_DIR,
    JOB,
    SOURCE,
    SPEC,
    THREADS,
    arg,
    job_of,
    set_threads,
    stage,
)
from pipeline.config import resolve_prompt_style
from pipeline.settings import RL


@stage(
    "train",
    arg("--name", required=True, help="base model name"),
    arg("--method", required=True),
    arg("--seed", type=int, required=True),
    arg("--model-dir", required=True, help="starting model directory"),
    SPEC,
    arg("--data", default=None, help="Countdown training split (jsonl; task countdown)"),
    SOURCE,
    CACHE_DIR,
    arg("--boundary", default=None, help="decomposition boundary.json (bupo_layer: boundary)"),
    arg("--out-dir", required=True, help="run directory: model/, history.json, checkpoint/"),
    arg("--distributed", default="ddp", choices=("ddp", "fsdp2"),
        help="several processes: data parallel (ddp) or sharded (fsdp2)"),
    THREADS,
    JOB,
)
def train(ns: argparse.Namespace) -> None:
    """RL training of one model with one method and seed (docs/methods.md §2, §3); resumes from
    the run directory's checkpoint when a killed job is rerun."""
    from pipeline import io
    from pipeline.evaluation import items as bench
    from pipeline.models import load
    from pipeline.rl import distributed
    from pipeline.rl.config import RLConfig
    from pipeline.rl.trainer import task_fns
    from pipeline.rl.trainer import train as rl_train
    from pipeline.tracking import job_run

    set_threads(ns)
    spec = RL.of(ns.spec)  # the train spec leaves out the job lists: the schema's [] fill them
    style = resolve_prompt_style(spec.prompt_style, ns.source)
    k = spec.bupo_layer
    if k == "boundary":
        k = io.read_json(ns.boundary)["boundary_layer"] if ns.boundary else None
    cfg = RLConfig.from_dict({**spec.trainer.to_dict(), "method": ns.method, "seed": ns.seed,
                              "bupo_layer": k})
    dist = distributed.init(ns.distributed)  # accelerate launch: one process per GPU/CPU slot
    with job_run(job_of(ns) if dist.main else None) as run:
        run.params({**cfg.to_dict(), "base_model": ns.name, "prompt_style": style})
        items = bench.load_items(spec.items_spec(), data=ns.data, cache_dir=ns.cache_dir)
        # sdpa: no [T, T] attention probabilities kept for backward (the γ pass of attention
        # credit computes its own, memory-bounded, from q and k)
        # fsdp2: loaded on the CPU; fully_shard moves only each process's shards to its GPU
        model, tokenizer = load(ns.model_dir, attn_implementation="sdpa",
                                device="cpu" if dist.fsdp else dist.device)
        prompt_fn, reward_fn = task_fns(spec.task, tokenizer, style)
        rl_train(model, tokenizer, items, reward_fn, cfg, prompt_fn=prompt_fn,
                 out_dir=ns.out_dir, run=run, resume=True, distributed_mode=ns.distributed)
