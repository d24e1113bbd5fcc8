"""Analyses of the sampled responses: ``decomposition`` (internal-policy entropies, docs/methods.md
§1), ``decomposition-compare`` and ``attention`` (attention rhythm, docs/methods.md §3)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.commands.common import (
    JOB,
    MODEL_DIR,
    NAME,
    RESPONSES,
    SPEC,
    THREADS,
    arg,
    job_of,
    set_threads,
    stage,
)
from pipeline.settings import Decomposition

ANALYSED = (NAME, MODEL_DIR, RESPONSES, SPEC)  # one model over its responses
FIG_DIR = arg("--fig-dir", required=True)


@contextmanager
def _analysis(ns: argparse.Namespace) -> Iterator[tuple[Any, Any, Any, Any]]:
    """Thread count, the job's tracking run (params: the spec), the model in fp32 and the
    responses table: ``(run, model, tokenizer, table)``."""
    import pandas as pd

    from pipeline.models import load
    from pipeline.tracking import job_run

    set_threads(ns)
    with job_run(job_of(ns)) as run:
        run.params(ns.spec)
        model, tokenizer = load(ns.model_dir, dtype="float32")
        yield run, model, tokenizer, pd.read_parquet(ns.responses)


@stage("decomposition", *ANALYSED, arg("--out-table", required=True),
       arg("--out-summary", required=True), arg("--out-boundary", required=True), FIG_DIR,
       THREADS, JOB)
def decomposition(ns: argparse.Namespace) -> None:
    """Internal-policy entropies, ΔH and the boundary layer of one model (docs/methods.md §1)."""
    import pandas as pd

    from pipeline import io
    from pipeline.decomposition import stage as dec

    spec = Decomposition.of(ns.spec)
    with _analysis(ns) as (run, model, tokenizer, table):
        offered = len(table)
        table = dec.within_token_budget(table, spec.max_response_tokens)
        tidy, summary = dec.decompose_responses(
            model, table, tokenizer.pad_token_id, model_name=ns.name,
            conventions=spec.conventions, batch_size=spec.batch_size)
        per_layer = pd.DataFrame(summary.pop("per_layer"))
        io.write_table(ns.out_table, tidy)
        per_layer_path = Path(ns.out_summary).with_name("per_layer.csv")
        io.write_table(per_layer_path, per_layer)
        conv = spec.conventions[0]
        boundary = {
            "model": ns.name, "convention": conv,
            "boundary_layer": summary[f"boundary_layer_{conv}"],
            "definition": "docs/methods.md §1.1 boundary layer; see "
                          "pipeline.decomposition.boundary_layer",
            "delta_ffn": summary[f"delta_ffn_{conv}"],
            "num_layers": model.config.num_hidden_layers,
        }
        io.write_json(ns.out_boundary, boundary)
        summary.update({"model": ns.name, "num_responses": len(table),
                        "responses_offered": offered,
                        "response_tokens": int(table["num_response_tokens"].sum())})
        io.write_json(ns.out_summary, summary)
        fig_dir = Path(ns.fig_dir)
        fig_dir.mkdir(parents=True, exist_ok=True)
        for c in spec.conventions:
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

    with job_run(job_of(ns)) as run:
        per_model = {n: pd.read_csv(p) for n, p in zip(ns.names, ns.summaries, strict=True)}
        fig = compare_figure(per_model)
        Path(ns.out_figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(ns.out_figure, dpi=130)
        run.figure(fig, Path(ns.out_figure).name)


@stage("attention", *ANALYSED, arg("--out-tokens", required=True),
       arg("--out-heads", required=True), arg("--out-summary", required=True), FIG_DIR,
       THREADS, JOB)
def attention(ns: argparse.Namespace) -> None:
    """Attention rhythm of a model's responses: head groups, WAAD, FAI, preplan/anchor
    tokens (docs/methods.md §3)."""
    import matplotlib.pyplot as plt

    from pipeline import io
    from pipeline.attention import stage as att

    spec = ns.spec
    with _analysis(ns) as (run, model, tokenizer, table):
        table = table.reset_index(drop=True)
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
