"""Stages that sample from a model: ``evaluate`` (benchmarks) and ``responses`` (the
responses the analyses share)."""

from __future__ import annotations

import argparse

from pipeline.commands.common import (
    CACHE_DIR,
    JOB,
    MODEL_DIR,
    NAME,
    SOURCE,
    SPEC,
    THREADS,
    arg,
    job_of,
    set_threads,
    stage,
)
from pipeline.config import resolve_prompt_style
from pipeline.settings import Benchmark, Responses

SAMPLING = (
    MODEL_DIR,
    SPEC,
    arg("--data", default=None, help="Countdown split (jsonl), for countdown tasks"),
    SOURCE,
    arg("--seed", type=int, default=0),
    CACHE_DIR,
    THREADS,
    JOB,
)


def _setup(ns: argparse.Namespace, section: type[Benchmark | Responses]
           ) -> tuple[Benchmark | Responses, str]:
    """Thread count; the typed spec and its prompt style resolved for the model's source."""
    set_threads(ns)
    spec = section.of(ns.spec)
    return spec, resolve_prompt_style(spec.prompt_style, ns.source)


@stage(
    "evaluate",
    NAME,
    arg("--benchmark", required=True, help="benchmark name (config key)"),
    arg("--out-table", required=True),
    arg("--out-summary", required=True),
    *SAMPLING,
)
def evaluate(ns: argparse.Namespace) -> None:
    """Evaluate one model on one benchmark (greedy, avg@n, pass@k; MMLU accuracy)."""
    from pipeline import io
    from pipeline.evaluation import items as bench
    from pipeline.evaluation.run import evaluate_generative, evaluate_multiple_choice
    from pipeline.models import load
    from pipeline.tracking import job_run

    spec, style = _setup(ns, Benchmark)
    with job_run(job_of(ns)) as run:
        run.params({**ns.spec, "benchmark": ns.benchmark, "resolved_prompt_style": style,
                    "seed": ns.seed})
        items = bench.load_items(spec, data=ns.data, cache_dir=ns.cache_dir)
        # decoding: eager attention (fast for one-token steps on CPU); scoring long k-shot
        # prompts in one forward: the default (sdpa)
        attn = None if spec.task == "mmlu" else "eager"
        model, tokenizer = load(ns.model_dir, attn_implementation=attn)
        if spec.task == "mmlu":
            table, summary = evaluate_multiple_choice(model, tokenizer, items, spec)
        else:
            table, summary = evaluate_generative(model, tokenizer, spec.task, items, spec,
                                                 style=style, seed=ns.seed)
        summary = {"model": ns.name, "benchmark": ns.benchmark, "task": spec.task,
                   "seed": ns.seed, **summary}
        if spec.task == "math":  # answers past the verification budget, scored wrong
            from pipeline.tasks.bounded import timeouts
            summary["verify_timeouts"] = timeouts()
        io.write_table(ns.out_table, table)
        io.write_json(ns.out_summary, summary)
        run.metrics({k: v for k, v in summary.items()
                     if isinstance(v, float | int) and k != "seed"})
        run.table(table, f"{ns.benchmark}_samples.parquet")


@stage("responses", NAME, arg("--out", required=True, help="responses table (parquet)"),
       *SAMPLING)
def responses(ns: argparse.Namespace) -> None:
    """Sample the responses the analyses share (token ids kept)."""
    from pipeline import io
    from pipeline.evaluation import items as bench
    from pipeline.models import load
    from pipeline.responses import sample_responses
    from pipeline.tracking import job_run

    spec, style = _setup(ns, Responses)
    with job_run(job_of(ns)) as run:
        run.params({**ns.spec, "resolved_prompt_style": style, "seed": ns.seed})
        items = bench.load_items(spec.items_spec(), data=ns.data, cache_dir=ns.cache_dir)
        model, tokenizer = load(ns.model_dir, attn_implementation="eager")
        table = sample_responses(model, tokenizer, spec.task, items, spec, style=style,
                                 seed=ns.seed)
        io.write_table(ns.out, table)
        run.metrics({"num_responses": len(table),
                     "mean_response_tokens": float(table["num_response_tokens"].mean()),
                     "accuracy": float(table["correct"].mean()),
                     "finished_fraction": float(table["finished"].mean())})
        run.table(table.drop(columns=["prompt_ids", "response_ids"]), "responses.parquet")
