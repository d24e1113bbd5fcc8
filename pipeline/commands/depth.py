"""``depth``: the guess-then-refine depth analysis of one model (docs/methods.md §4)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.commands.common import (
    CACHE_DIR,
    JOB,
    MODEL_DIR,
    NAME,
    SPEC,
    THREADS,
    arg,
    job_of,
    set_threads,
    stage,
)


@stage(
    "depth",
    NAME,
    MODEL_DIR,
    SPEC,
    arg("--countdown", type=json.loads, default=None,
        help="tasks.countdown settings (builtin models analyse their own task text)"),
    arg("--out-dir", required=True),
    CACHE_DIR,
    THREADS,
    JOB,
)
def depth(ns: argparse.Namespace) -> None:
    """Guess-then-refine depth analysis: logit and tuned lens, decision depth, frequency
    buckets, flip rates, facts and multiple choice (docs/methods.md §4)."""
    import matplotlib.pyplot as plt

    from pipeline import io
    from pipeline.depth import stage as dep
    from pipeline.models import load
    from pipeline.settings import Countdown
    from pipeline.tracking import flatten, job_run

    set_threads(ns)
    spec = dict(ns.spec)
    if ns.countdown:  # the experiment's generator settings for builtin-task text
        builtin = dict(ns.spec.get("builtin") or {})
        spec["builtin"] = {**builtin, "countdown": Countdown.of(ns.countdown).generator()}
    out = Path(ns.out_dir)
    with job_run(job_of(ns)) as run:
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
