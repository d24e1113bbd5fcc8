"""Stages over all runs: ``summarize`` (one table and figure of every evaluation) and
``compare`` (models × methods × seeds, before/after RL)."""

from __future__ import annotations

import argparse
from pathlib import Path

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
