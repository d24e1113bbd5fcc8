"""Stages that make the inputs: ``countdown-data`` (the Countdown splits) and ``provision``
(one model: builtin build + SFT, GGUF conversion, hub snapshot)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.commands.common import (
    CACHE_DIR,
    JOB,
    SPEC,
    THREADS,
    arg,
    job_of,
    set_threads,
    stage,
)
from pipeline.settings import BuiltinModel, Countdown, HubModel, model_of


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

    spec = Countdown.of(ns.spec)
    with job_run(job_of(ns)) as run:
        splits = countdown.make_splits(spec.splits, seed=spec.seed, **spec.generator())
        out = Path(ns.out_dir)
        for name, problems in splits.items():
            io.write_jsonl(out / f"{name}.jsonl", [p.to_dict() for p in problems])
        run.params(ns.spec)
        run.metrics({f"n_{k}": len(v) for k, v in splits.items()})


@stage(
    "provision",
    arg("--name", required=True),
    SPEC,
    arg("--data", help="Countdown train split (builtin models)"),
    arg("--out", required=True, help="model directory"),
    arg("--summary", required=True, help="summary JSON"),
    CACHE_DIR,
    THREADS,
    JOB,
)
def provision(ns: argparse.Namespace) -> None:
    """Provision one model (builtin: build + SFT; hub: pinned snapshot)."""
    from pipeline import io
    from pipeline.models import provision as prov
    from pipeline.tasks import countdown
    from pipeline.tracking import job_run

    set_threads(ns)
    spec = model_of(ns.spec)
    with job_run(job_of(ns)) as run:
        run.params({"model": ns.name, **ns.spec})
        if isinstance(spec, BuiltinModel):
            if not ns.data:
                raise SystemExit("provision: builtin models need --data (Countdown train split)")
            train = [countdown.Problem.from_dict(d) for d in io.read_jsonl(ns.data)]
            summary = prov.provision_builtin(
                spec, train, ns.out,
                on_log=lambda step, rec: run.metrics({"sft_loss": rec["loss"],
                                                     "sft_lr": rec["lr"]}, step=step),
            )
            _sft_figure(run, ns.name, summary["sft_history"], Path(ns.summary).parent)
        elif isinstance(spec, HubModel):
            summary = prov.provision_hub(spec, ns.out)
        else:
            from pipeline.models.gguf import provision_gguf

            summary = provision_gguf(spec, ns.out, cache_dir=ns.cache_dir)
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
