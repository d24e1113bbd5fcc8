"""Helpers the Snakefile uses, so rules stay free of logic: wildcard values, the inputs
and targets of each stage (paths from :mod:`pipeline.paths`), the JSON arguments each rule
passes to ``python -m pipeline``, and what every rule repeats (:class:`Common`)."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.config import CACHE_ENV, canonical_json, is_builtin
from pipeline.config import cache_dir as resolve_cache_dir
from pipeline.tracking import TRACKING_URI_ENV, config_hash, resolve_tracking_uri

EXPERIMENT_ENV = "PIPELINE_MLFLOW_EXPERIMENT"
CONFIG_HASH_ENV = "PIPELINE_CONFIG_HASH"


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
    """The MLflow job description a rule passes as ``--job`` (rule and wildcards). A
    ``run`` wildcard (:mod:`pipeline.paths`) of a base model becomes ``model``; that of a
    trained checkpoint stays, with its ``model`` and ``method`` added (MLflow tags)."""
    wc = dict(wildcards.items()) if wildcards is not None else {}
    if "run" in wc:
        model, method, _ = paths.parse_run(wc["run"])
        if method is None:
            del wc["run"]
        wc.update({"model": model} if method is None else {"model": model, "method": method})
    return canonical_json({"rule": rule, "wildcards": wc})


def run_source(config: dict[str, Any], run: str) -> str:
    """The ``source`` of a run's base model (builtin, gguf, hub)."""
    return config["models"][paths.parse_run(run)[0]]["source"]


def provision_inputs(config: dict[str, Any], root_dir: str, model: str) -> list[str]:
    """Builtin models train on the Countdown train split; other sources need no input."""
    if is_builtin(config["models"][model]):
        return [paths.countdown_data(root_dir, "train")]
    return []


def cache_dir(config: dict[str, Any]) -> str:
    """Download cache: config ``cache_dir`` > $PIPELINE_CACHE > ~/.cache/reasoning-inside
    (:func:`pipeline.config.cache_dir`)."""
    return str(resolve_cache_dir(config["cache_dir"]))


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
        paths.evaluation(root_dir, "summary", m, b, s)
        for b in config["evaluation"]["benchmarks"]
        for m in benchmark_models(config, b)
        for s in evaluation_seeds(config, m, b)
    ]


def evaluation_inputs(config: dict[str, Any], root_dir: str, run: str,
                      benchmark: str) -> dict[str, str]:
    """The weights of the run (base model or trained checkpoint) and the benchmark's data."""
    bench = config["evaluation"]["benchmarks"][benchmark]
    inputs = {"model": paths.run_model_dir(root_dir, run)}
    if bench["task"] == "countdown":
        inputs["data"] = paths.countdown_data(root_dir, bench["split"])
    return inputs


def analysis_inputs(root_dir: str, run: str) -> dict[str, str]:
    """An analysis (decomposition, attention) of a run reads the run's weights and the
    BASE model's responses: a trained checkpoint is analysed on the same text as its base
    model (a fair before/after, no new sampling)."""
    return {"model": paths.run_model_dir(root_dir, run),
            "responses": paths.responses(root_dir, paths.parse_run(run)[0])}


def analysis_models(config: dict[str, Any]) -> list[str]:
    models = config["analysis"]["models"]
    return list(config["models"]) if models == "all" else list(models)


def responses_spec(config: dict[str, Any], model: str) -> dict[str, Any]:
    """The response-sampling settings of a model (builtin vs pretrained)."""
    kind = "builtin" if is_builtin(config["models"][model]) else "pretrained"
    return config["analysis"]["responses"][kind]


def responses_inputs(config: dict[str, Any], root_dir: str, model: str) -> dict[str, str]:
    spec = responses_spec(config, model)
    inputs = {"model": paths.model_dir(root_dir, model)}
    if spec["task"] == "countdown":
        inputs["data"] = paths.countdown_data(root_dir, spec["split"])
    return inputs


def rl_runs(config: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(model, method, seed) of every RL job."""
    rl = config["rl"]
    return [(m, meth, s) for m in rl["models"] for meth in rl["methods"]
            for s in config["seeds"]]


def rl_inputs(config: dict[str, Any], root_dir: str, model: str, method: str) -> dict[str, str]:
    rl = config["rl"]
    inputs = {"model": paths.model_dir(root_dir, model)}
    if rl["task"] == "countdown":
        inputs["data"] = paths.countdown_data(root_dir, rl["split"])
    if method.startswith("bupo") and rl["bupo_layer"] == "boundary":
        inputs["boundary"] = paths.analysis(root_dir, "decomposition", "boundary", model)
    return inputs


def rl_evaluation_targets(config: dict[str, Any], root_dir: str) -> list[str]:
    """The evaluation summaries of every trained checkpoint (sampling seed = its seed)."""
    return [paths.evaluation(root_dir, "summary", paths.run(m, meth, s), b, s)
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


# Rules whose jobs run on a base model or a trained checkpoint (wildcard ``{run}``): a
# trained checkpoint's job takes the config's ``resources.<rule>_trained``.
RUN_RULES = ("evaluate", "decomposition", "attention")
CONDA_ENV = "../envs/pipeline.yaml"  # relative to workflow/rules/, where the rules live


def resource_key(rule: str, run: str | None = None) -> str:
    """The ``resources:`` entry of a job: the rule's, or ``<rule>_trained`` for the job of a
    rule of :data:`RUN_RULES` on a trained checkpoint."""
    if rule in RUN_RULES and run is not None and paths.is_trained(run):
        return f"{rule}_trained"
    return rule


def resource_keys() -> list[str]:
    """The ``resources:`` entries besides the rule names (the trained-checkpoint jobs)."""
    return [f"{rule}_trained" for rule in RUN_RULES]


class Common:
    """What every rule repeats, from its name and the wildcard parts of its log::

        C = pw.Common(config, "evaluate", "{run}", "{benchmark}", "seed{seed}")

        rule evaluate:
            params: job=C.job
            threads: C.threads
            resources: **C.resources
            log: C.log
            conda: C.conda

    ``threads`` and ``resources`` come from the config (:func:`threads`,
    :func:`resources`; per job for :data:`RUN_RULES`, :func:`resource_key`), the log is
    :func:`pipeline.paths.log`, ``job`` is the MLflow job description (:func:`job`)."""

    conda = CONDA_ENV

    def __init__(self, config: dict[str, Any], rule: str, *log_parts: str) -> None:
        self.config, self.rule = config, rule
        self.log = paths.log(paths.root(config), rule, *log_parts)

    @property
    def job(self) -> Callable[[Any], str]:
        return lambda wildcards: job(self.config, self.rule, wildcards)

    @property
    def threads(self) -> int | Callable[[Any], int]:
        if self.rule not in RUN_RULES:
            return threads(self.config, self.rule)
        return lambda wildcards: threads(self.config, resource_key(self.rule, wildcards.run))

    @property
    def resources(self) -> dict[str, int | Callable[[Any], int]]:
        if self.rule not in RUN_RULES:
            return resources(self.config, self.rule)
        return {name: self._per_run(name) for name in ("mem_mb", "runtime", "gpu")}

    def _per_run(self, name: str) -> Callable[[Any], int]:
        rule, config = self.rule, self.config
        return lambda wildcards: resources(config, resource_key(rule, wildcards.run))[name]


def accelerate_config(config: dict[str, Any]) -> str:
    """The accelerate config file of multi-process training (``rl.distributed``): ddp and
    fsdp2 both launch with config/accelerate/ddp.yaml (a plain MULTI_GPU launch; under
    fsdp2 the trainer shards the model itself), or a path."""
    name = config["rl"]["distributed"]
    if name in ("ddp", "fsdp2"):
        return str(ACCELERATE_DIR / "ddp.yaml")
    return str(Path(name).expanduser().resolve())


def train_mode(config: dict[str, Any]) -> str:
    """``--distributed`` of ``pipeline train``: fsdp2, or ddp (also for an accelerate
    config path)."""
    return "fsdp2" if config["rl"]["distributed"] == "fsdp2" else "ddp"


def train_processes(config: dict[str, Any], gpus: int) -> int:
    """Processes of a train job: one per GPU with more than one GPU, else
    ``rl.processes`` (CPU processes on gloo)."""
    gpus = int(gpus or 0)
    return gpus if gpus > 1 else int(config["rl"]["processes"])


#: Set by the launcher of CPU train processes (:func:`pipeline.rl.distributed.init`).
CPU_ENV = "PIPELINE_TRAIN_CPU"


def train_launcher(config: dict[str, Any], gpus: int) -> str:
    """The command that starts ``pipeline train``: ``python -m pipeline`` for one process,
    ``accelerate launch`` with :func:`train_processes` processes otherwise (the trainer's
    processes find each other through the environment accelerate sets: RANK,
    WORLD_SIZE, …; NCCL on GPUs, gloo on CPU)."""
    n = train_processes(config, gpus)
    if n <= 1:
        return "python -m pipeline"
    # CPU processes: gloo even where CUDA is visible (accelerate's own --cpu would start
    # a single process)
    cpu = ["env", f"{CPU_ENV}=1"] if int(gpus or 0) <= 1 else []
    return shlex.join([*cpu, "accelerate", "launch", "--num_processes", str(n),
                       "--num_machines", "1", "--config_file", accelerate_config(config),
                       "-m", "pipeline"])


def train_threads(config: dict[str, Any], threads: int, gpus: int) -> int:
    """torch threads of each train process: the job's threads split over its CPU
    processes (GPU processes keep them all for their data loading and decode loop)."""
    gpus = int(gpus or 0)
    n = train_processes(config, gpus)
    return max(1, int(threads) // n) if gpus <= 1 else int(threads)


def rl_train_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The ``rl`` settings a train job gets as ``--spec``: not the job lists (wildcards)
    nor how it is launched (rl.distributed), so neither reruns finished training."""
    return {k: v for k, v in config["rl"].items()
            if k not in ("models", "methods", "distributed", "processes")}


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
    from pipeline.comparison.stage import manifest, manifest_paths

    return manifest_paths(manifest(compare_spec(config), root_dir))


# --------------------------------------------------------------------------- claims


def provision_spec(model: dict[str, Any]) -> dict[str, Any]:
    """A model's config entry without the keys provisioning ignores (``claims_family``: a
    claims setting, so changing it never re-provisions the model)."""
    return {k: v for k, v in model.items() if k != "claims_family"}


def claims_families(config: dict[str, Any]) -> str:
    """``model=family`` for every model whose config sets ``claims_family`` (the others
    take the family of their architecture, docs/methods.md §9.6); ``-`` when none."""
    pairs = [f"{m}={s['claims_family']}" for m, s in config["models"].items()
             if s.get("claims_family")]
    return " ".join(pairs) or "-"


def claims_runs(config: dict[str, Any]) -> list[str]:
    """Trained runs whose analyses the claims read (those compare analyses before/after)."""
    rl = config["rl"]
    if not (rl["models"] and rl["methods"] and config["comparison"]["before_after"]):
        return []
    return [paths.run(m, meth, s) for m in rl["models"] for meth in rl["methods"]
            for s in config["seeds"]]


def claims_inputs(config: dict[str, Any], root_dir: str) -> dict[str, list[str]]:
    """What ``pipeline claims`` reads: every analysis model's decomposition, attention and
    depth summaries, the models' decomposition overlay (a record's figure is named only once
    it exists, so every figure a record can name is an input) and the comparison (which
    needs the trained runs' analyses)."""
    models = analysis_models(config)
    return {
        "decomposition": [paths.analysis(root_dir, "decomposition", run_id=m) for m in models],
        "decomposition_compare": [paths.decomposition_compare(root_dir)] if models else [],
        "attention": [paths.analysis(root_dir, "attention", run_id=m) for m in models],
        "depth": [paths.depth(root_dir, m) for m in models],
        "compare": [paths.compare(root_dir, "summary")],
    }
