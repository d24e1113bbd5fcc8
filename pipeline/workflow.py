"""Helpers the Snakefile uses, so rules stay free of logic: paths, wildcard values and
the JSON arguments each rule passes to ``python -m pipeline``."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

from pipeline.config import canonical_json
from pipeline.tracking import TRACKING_URI_ENV, config_hash, resolve_tracking_uri

EXPERIMENT_ENV = "PIPELINE_MLFLOW_EXPERIMENT"
CONFIG_HASH_ENV = "PIPELINE_CONFIG_HASH"
CACHE_ENV = "PIPELINE_CACHE"


def root(config: dict[str, Any]) -> str:
    """``<results_dir>/<experiment>``: every output of a run lives below it."""
    return str(Path(config["results_dir"]) / config["experiment"])


def tracking_uri(config: dict[str, Any]) -> str:
    return resolve_tracking_uri(config["mlflow"]["tracking_uri"], config["results_dir"])


def alternatives(names: list[str]) -> str:
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(n) for n in names)


def spec(obj: Any) -> str:
    """A config slice as canonical JSON (stable → no spurious reruns)."""
    return canonical_json(obj)


def export_env(config: dict[str, Any]) -> None:
    """Environment every job inherits: tracking URI, MLflow experiment, config hash.
    They travel outside the rules' params so that changing them triggers no rerun."""
    os.environ[TRACKING_URI_ENV] = tracking_uri(config)
    os.environ[EXPERIMENT_ENV] = config["mlflow"]["experiment_name"]
    os.environ[CONFIG_HASH_ENV] = config_hash(config)
    os.environ[CACHE_ENV] = cache_dir(config)


def job(config: dict[str, Any], rule: str, wildcards: Any = None) -> str:
    """The MLflow job description a rule passes as ``--job`` (rule and wildcards)."""
    wc = dict(wildcards.items()) if wildcards is not None else {}
    return canonical_json({"rule": rule, "wildcards": wc})


def provision_inputs(config: dict[str, Any], root_dir: str, model: str) -> list[str]:
    """Builtin models train on the Countdown train split; other sources need no input."""
    if config["models"][model]["source"] == "builtin":
        return [f"{root_dir}/data/countdown/train.jsonl"]
    return []


def cache_dir(config: dict[str, Any]) -> str:
    """Download cache: config ``cache_dir`` > $PIPELINE_CACHE > ~/.cache/reasoning-inside."""
    return str(Path(config["cache_dir"] or os.environ.get(CACHE_ENV)
                    or Path.home() / ".cache" / "reasoning-inside"))


def benchmark_models(config: dict[str, Any], benchmark: str) -> list[str]:
    models = config["evaluation"]["benchmarks"][benchmark]["models"]
    return list(config["models"]) if models == "all" else list(models)


def evaluation_seeds(config: dict[str, Any], model: str, benchmark: str) -> list[int]:
    """Seeds a base model is evaluated with: every seed where its trained checkpoints are
    evaluated on this benchmark (the comparison pairs base and trained runs by seed), else
    the first seed only (another sampling seed would repeat the work for no comparison)."""
    rl = config["rl"]
    if model in rl["models"] and rl["methods"] and benchmark in rl["evaluate"]:
        return list(config["seeds"])
    return list(config["seeds"][:1])


def evaluation_targets(config: dict[str, Any], root_dir: str) -> list[str]:
    """Every (model, benchmark, seed) evaluation summary the config asks for."""
    return [
        f"{root_dir}/eval/{m}/{b}/seed{s}/summary.json"
        for b in config["evaluation"]["benchmarks"]
        for m in benchmark_models(config, b)
        for s in evaluation_seeds(config, m, b)
    ]


def evaluation_inputs(config: dict[str, Any], root_dir: str, model: str,
                      benchmark: str) -> dict[str, str]:
    bench = config["evaluation"]["benchmarks"][benchmark]
    inputs = {"model": f"{root_dir}/models/{model}/model"}
    if bench["task"] == "countdown":
        inputs["data"] = f"{root_dir}/data/countdown/{bench['split']}.jsonl"
    return inputs


def analysis_models(config: dict[str, Any]) -> list[str]:
    models = config["analysis"]["models"]
    return list(config["models"]) if models == "all" else list(models)


def responses_spec(config: dict[str, Any], model: str) -> dict[str, Any]:
    """The response-sampling settings of a model (builtin vs pretrained)."""
    kind = "builtin" if config["models"][model]["source"] == "builtin" else "pretrained"
    return config["analysis"]["responses"][kind]


def responses_inputs(config: dict[str, Any], root_dir: str, model: str) -> dict[str, str]:
    spec = responses_spec(config, model)
    inputs = {"model": f"{root_dir}/models/{model}/model"}
    if spec["task"] == "countdown":
        inputs["data"] = f"{root_dir}/data/countdown/{spec['split']}.jsonl"
    return inputs


def rl_runs(config: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(model, method, seed) of every RL job."""
    rl = config["rl"]
    return [(m, meth, s) for m in rl["models"] for meth in rl["methods"]
            for s in config["seeds"]]


def rl_inputs(config: dict[str, Any], root_dir: str, model: str, method: str) -> dict[str, str]:
    rl = config["rl"]
    inputs = {"model": f"{root_dir}/models/{model}/model"}
    if rl["task"] == "countdown":
        inputs["data"] = f"{root_dir}/data/countdown/{rl['split']}.jsonl"
    if method.startswith("bupo") and rl["bupo_layer"] == "boundary":
        inputs["boundary"] = f"{root_dir}/decomposition/{model}/boundary.json"
    return inputs


def rl_evaluation_targets(config: dict[str, Any], root_dir: str) -> list[str]:
    return [f"{root_dir}/rl/{m}/{meth}/seed{s}/eval/{b}/summary.json"
            for m, meth, s in rl_runs(config) for b in config["rl"]["evaluate"]]


# --------------------------------------------------------------------------- resources

RESOURCE_KEYS = ("mem_mb", "runtime", "threads", "gpu")
ACCELERATE_DIR = Path(__file__).resolve().parent.parent / "config" / "accelerate"


def rule_resources(config: dict[str, Any], rule: str) -> dict[str, int]:
    """``resources.default`` overridden field by field by ``resources.<rule>``."""
    res = config["resources"]
    return {**res["default"], **res.get(rule, {})}


def threads(config: dict[str, Any], rule: str) -> int:
    """A rule's ``threads:`` (Snakemake caps it at --cores; on Slurm --cpus-per-task)."""
    return int(rule_resources(config, rule)["threads"])


def resources(config: dict[str, Any], rule: str) -> dict[str, int]:
    """A rule's ``resources:`` (``mem_mb``, ``runtime`` in minutes, ``gpu``): the names the
    Slurm executor plugin turns into --mem, --time and --gpus; ``gpu`` is also what
    ``snakemake --resources gpu=N`` limits locally."""
    r = rule_resources(config, rule)
    return {"mem_mb": int(r["mem_mb"]), "runtime": int(r["runtime"]), "gpu": int(r["gpu"])}


def accelerate_config(config: dict[str, Any]) -> str:
    """The accelerate config file of multi-GPU training (``rl.distributed``): ddp, fsdp
    (config/accelerate/<name>.yaml) or a path."""
    name = config["rl"]["distributed"]
    if name in ("ddp", "fsdp"):
        return str(ACCELERATE_DIR / f"{name}.yaml")
    return str(Path(name).expanduser().resolve())


def train_launcher(config: dict[str, Any], gpus: int) -> str:
    """The command that starts ``pipeline train``: one process for 0 or 1 GPU,
    ``accelerate launch`` with one process per GPU otherwise (the trainer's processes
    find each other through the environment accelerate sets: RANK, WORLD_SIZE, …)."""
    gpus = int(gpus or 0)
    if gpus <= 1:
        return "python -m pipeline"
    return shlex.join(["accelerate", "launch", "--num_processes", str(gpus),
                       "--num_machines", "1", "--config_file", accelerate_config(config),
                       "-m", "pipeline"])


def rl_train_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The ``rl`` settings a train job gets as ``--spec``: not the job lists (wildcards)
    nor how it is launched (rl.distributed), so neither reruns finished training."""
    return {k: v for k, v in config["rl"].items() if k not in ("models", "methods", "distributed")}


# --------------------------------------------------------------------------- comparison


def compare_spec(config: dict[str, Any]) -> dict[str, Any]:
    """What ``pipeline compare`` gets as ``--spec``: the run lists (base evaluations,
    RL runs, before/after analyses) it reads, the baseline method."""
    rl, comp = config["rl"], config["comparison"]
    jobs = bool(rl["models"] and rl["methods"])
    return {
        "benchmarks": {b: benchmark_models(config, b) for b in config["evaluation"]["benchmarks"]},
        "seeds": list(config["seeds"]),
        "eval_seeds": {b: {m: evaluation_seeds(config, m, b) for m in benchmark_models(config, b)}
                       for b in config["evaluation"]["benchmarks"]},
        "rl": {"models": list(rl["models"]) if jobs else [],
               "methods": list(rl["methods"]) if jobs else [],
               "evaluate": list(rl["evaluate"])},
        "baseline": comp["baseline"],
        "before_after": list(comp["before_after"]),
    }


def compare_inputs(config: dict[str, Any], root_dir: str) -> dict[str, list[str]]:
    """The files ``pipeline compare`` reads (named lists, for ``input:``)."""
    from pipeline.comparison import manifest, manifest_paths

    return manifest_paths(manifest(compare_spec(config), root_dir))
