"""Stages over all runs: ``summarize`` (one table and figure of every evaluation) and
``compare`` (models × methods × seeds, before/after RL)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.commands.common import (
    JOB,
    SPEC,
    arg,
    job_of,
    stage,
)


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

    with job_run(job_of(ns)) as run:
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

    with job_run(job_of(ns)) as run:
        run_comparison(ns.spec, ns.root, ns.out_dir, run=run)


def metric_key(rec: Any, records: Sequence[Any]) -> str:
    """``claim.<id>/<run>``, plus ``/<split>`` (MLflow's name characters only) when another
    record has the same id and run (e.g. the Table 2 statistics under other peak rules)."""
    key = f"claim.{rec.claim_id}/{rec.run}"
    if sum(r.claim_id == rec.claim_id and r.run == rec.run for r in records) > 1:
        key += "/" + re.sub(r"[^\w.\- /:]", "", rec.split)
    return key


@stage(
    "claims",
    arg("--root", required=True, help="results/<experiment> directory the DAG wrote"),
    arg("--models", nargs="*", default=[], help="base models whose stage outputs to read"),
    arg("--runs", nargs="*", default=[], help="trained runs <model>/<method>/seed<s>"),
    arg("--families", nargs="*", default=[],
        help="model=qwen|llama|other overrides of the claims family ('-' = none)"),
    arg("--out-csv", required=True),
    arg("--out-parquet", required=True),
    arg("--out-figure", required=True),
    arg("--out-html", required=True),
    JOB,
)
def claims(ns: argparse.Namespace) -> None:
    """Every paper claim as a verdict with an interval (docs/methods.md §9): one table from
    the stage and comparison outputs, a forest figure and an HTML page; the table is an
    MLflow artifact and each record's value a ``claim.<id>/<run>`` metric of the parent run."""
    import math

    from pipeline.claims import VERDICTS, write_claims
    from pipeline.claims.collect import collect, parse_families
    from pipeline.claims.registry import annotate
    from pipeline.claims.report import claims_html, forest_figure
    from pipeline.claims.rl import rl_claims
    from pipeline.tracking import job_run

    with job_run(job_of(ns)) as run:
        families = parse_families(ns.families)
        records = annotate(collect(ns.root, models=ns.models, runs=ns.runs,
                                   families=families) + rl_claims(ns.root))
        if not records:
            raise ValueError(f"claims: no stage output under {ns.root} yields a claim")
        fig = forest_figure(records)
        Path(ns.out_html).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(ns.out_figure, dpi=110)
        Path(ns.out_html).write_text(claims_html(records))
        write_claims(records, ns.out_csv, ns.out_parquet)  # the table last: it is the target
        run.figure(fig, Path(ns.out_figure).name)
        run.artifact(ns.out_csv, "tables")
        run.artifact(ns.out_html)
        metrics = {metric_key(r, records): r.value for r in records
                   if math.isfinite(r.value)}
        counts = {f"claims.{v.replace(' ', '_')}": sum(r.verdict == v for r in records)
                  for v in VERDICTS}
        run.metrics({**metrics, **counts})
        run.parent().metrics({**metrics, **counts})
        run.parent().artifact(ns.out_csv, "claims")
