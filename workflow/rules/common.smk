import os

import pipeline.workflow as pw
from pipeline import tracking

R = pw.root(config)
MODELS = list(config["models"])
SEEDS = config["seeds"]
ANALYSIS_MODELS = pw.analysis_models(config)


wildcard_constraints:
    model=pw.alternatives(MODELS),
    seed=r"\d+",
    benchmark=pw.alternatives(list(config["evaluation"]["benchmarks"])),
    split=r"[A-Za-z0-9_]+",
    method=r"[A-Za-z0-9_+]+",


onstart:
    tracking.init_store(pw.tracking_uri(config), config["mlflow"]["experiment_name"])
    tracking.start_parent_run(
        pw.tracking_uri(config),
        config["mlflow"]["experiment_name"],
        config=config,
        run_name=f"snakemake[{config['experiment']}]",
        command=" ".join(sys.argv),
    )


onsuccess:
    tracking.end_parent_run("FINISHED")


onerror:
    tracking.end_parent_run("FAILED")
