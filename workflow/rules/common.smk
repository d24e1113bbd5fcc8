import os

import pipeline.workflow as pw
from pipeline import paths, tracking

R = paths.root(CFG)
MODELS = list(CFG.models)
SEEDS = CFG.seeds
ANALYSIS_MODELS = pw.analysis_models(CFG)
METHOD = r"[A-Za-z0-9_+]+"


# Every path comes from pipeline.paths. A {run} is a base model (<model>) or a trained
# checkpoint (<model>/<method>/seed<seed>): evaluate, decomposition and attention run on
# both (pipeline.paths, docstring).
wildcard_constraints:
    model=pw.alternatives(MODELS),
    run=paths.run_constraint(pw.alternatives(MODELS), METHOD),
    seed=r"\d+",
    benchmark=pw.alternatives(list(CFG.evaluation.benchmarks)),
    split=r"[A-Za-z0-9_]+",
    method=METHOD,


onstart:
    tracking.init_store(pw.tracking_uri(CFG), CFG.mlflow.experiment_name)
    tracking.start_parent_run(
        pw.tracking_uri(CFG),
        CFG.mlflow.experiment_name,
        config=config,
        run_name=f"snakemake[{CFG.experiment}]",
        command=" ".join(sys.argv),
    )


onsuccess:
    tracking.end_parent_run("FINISHED")


onerror:
    tracking.end_parent_run("FAILED")
