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
from pipeline.config import CACHE_ENV, canonical_json
from pipeline.config import cache_dir as resolve_cache_dir
from pipeline.settings import Config, Responses, RuleResources, Section
from pipeline.tracking import TRACKING_URI_ENV, config_hash, resolve_tracking_uri

#: The config as the Snakefile's ``config`` (a validated mapping) or its typed tree
#: (:class:`pipeline.settings.Config`); every helper takes either.
AnyConfig = Config | dict[str, Any]

EXPERIMENT_ENV = "PIPELINE_MLFLOW_EXPERIMENT"
CONFIG_HASH_ENV = "PIPELINE_CONFIG_HASH"


def tracking_uri(config: AnyConfig) -> str:
    c = Config.of(config)
    return resolve_tracking_uri(c.mlflow.tracking_uri, c.results_dir)


def alternatives(names: list[str]) -> str:
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(n) for n in names)


def spec(obj: Any) -> str:
    """A config slice (a typed section or a mapping) as canonical JSON (stable → no
    spurious reruns): the ``--spec`` a rule passes."""
    return canonical_json(obj.to_dict() if isinstance(obj, Section) else obj)


def export_env(config: AnyConfig) -> None:
    """Environment every job inherits: tracking URI, MLflow experiment, config hash.
    They travel outside the rules' params so that changing them triggers no rerun."""
    c = Config.of(config)
    os.environ[TRACKING_URI_ENV] = tracking_uri(c)
    os.environ[EXPERIMENT_ENV] = c.mlflow.experiment_name
    os.environ[CONFIG_HASH_ENV] = config_hash(c.to_dict())
    os.environ[CACHE_ENV] = cache_dir(c)


def job(config: AnyConfig, rule: str, wildcards: Any = None) -> str:
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


def run_source(config: AnyConfig, run: str) -> str:
    """The ``source`` of a run's base model (builtin, gguf, hub)."""
    return Config.of(config).models[paths.parse_run(run)[0]].source


def provision_inputs(config: AnyConfig, root_dir: str, model: str) -> list[str]:
    """Builtin models train on the Countdown train split; other sources need no input."""
    if Config.of(config).models[model].source == "builtin":
        return [paths.countdown_data(root_dir, "train")]
    return []


def cache_dir(config: AnyConfig) -> str:
    """Download cache: config ``cache_dir`` > $PIPELINE_CACHE > ~/.cache/reasoning-inside
    (:func:`pipeline.config.cache_dir`)."""
    return str(resolve_cache_dir(Config.of(config).cache_dir))


def benchmark_models(config: AnyConfig, benchmark: str) -> list[str]:
    c = Config.of(config)
    return c.model_names(c.evaluation.benchmarks[benchmark].models)


def evaluation_seeds(config: AnyConfig, model: str, benchmark: str) -> list[int]:
    """Seeds a base model is evaluated with: every seed where its trained checkpoints are
    evaluated on this benchmark (the comparison pairs base and trained runs by seed), else
    the first seed only (another sampling seed would repeat the work for no comparison)."""
    c = Config.of(config)
    if model in c.rl.models and c.rl.methods and benchmark in c.rl.evaluate:
        return list(c.seeds)
    return list(c.seeds[:1])


def evaluation_targets(config: AnyConfig, root_dir: str) -> list[str]:
    """Every (model, benchmark, seed) evaluation summary the config asks for."""
    c = Config.of(config)
    return [
        paths.evaluation(root_dir, "summary", m, b, s)
        for b in c.evaluation.benchmarks
        for m in benchmark_models(c, b)
        for s in evaluation_seeds(c, m, b)
    ]


def evaluation_inputs(config: AnyConfig, root_dir: str, run: str,
                      benchmark: str) -> dict[str, str]:
    """The weights of the run (base model or trained checkpoint) and the benchmark's data."""
    bench = Config.of(config).evaluation.benchmarks[benchmark]
    inputs = {"model": paths.run_model_dir(root_dir, run)}
    if bench.task == "countdown":
        inputs["data"] = paths.countdown_data(root_dir, bench.split)
    return inputs


def analysis_inputs(root_dir: str, run: str) -> dict[str, str]:
    """An analysis (decomposition, attention) of a run reads the run's weights and the
    BASE model's responses: a trained checkpoint is analysed on the same text as its base
    model (a fair before/after, no new sampling)."""
    return {"model": paths.run_model_dir(root_dir, run),
            "responses": paths.responses(root_dir, paths.parse_run(run)[0])}


def analysis_models(config: AnyConfig) -> list[str]:
    c = Config.of(config)
    return c.model_names(c.analysis.models)


def responses_spec(config: AnyConfig, model: str) -> Responses:
    """The response-sampling settings of a model (builtin vs pretrained)."""
    c = Config.of(config)
    responses = c.analysis.responses
    return responses.builtin if c.models[model].source == "builtin" else responses.pretrained


def responses_inputs(config: AnyConfig, root_dir: str, model: str) -> dict[str, str]:
    spec = responses_spec(config, model)
    inputs = {"model": paths.model_dir(root_dir, model)}
    if spec.task == "countdown":
        inputs["data"] = paths.countdown_data(root_dir, spec.split)
    return inputs


def rl_runs(config: AnyConfig) -> list[tuple[str, str, int]]:
    """(model, method, seed) of every RL job."""
    c = Config.of(config)
    return [(m, meth, s) for m in c.rl.models for meth in c.rl.methods for s in c.seeds]


def rl_inputs(config: AnyConfig, root_dir: str, model: str, method: str) -> dict[str, str]:
    rl = Config.of(config).rl
    inputs = {"model": paths.model_dir(root_dir, model)}
    if rl.task == "countdown":
        inputs["data"] = paths.countdown_data(root_dir, rl.split)
    if method.startswith("bupo") and rl.bupo_layer == "boundary":
        inputs["boundary"] = paths.analysis(root_dir, "decomposition", "boundary", model)
    return inputs


def rl_evaluation_targets(config: AnyConfig, root_dir: str) -> list[str]:
    """The evaluation summaries of every trained checkpoint (sampling seed = its seed)."""
    c = Config.of(config)
    return [paths.evaluation(root_dir, "summary", paths.run(m, meth, s), b, s)
            for m, meth, s in rl_runs(c) for b in c.rl.evaluate]


# --------------------------------------------------------------------------- resources

RESOURCE_KEYS = ("mem_mb", "runtime", "threads", "gpu")
ACCELERATE_DIR = Path(__file__).resolve().parent.parent / "config" / "accelerate"


def rule_resources(config: AnyConfig, rule: str) -> RuleResources:
    """``resources.default`` overridden field by field by ``resources.<rule>``."""
    res = Config.of(config).resources
    own = res.rule(rule)
    return RuleResources(**{k: v for k, v in {**res.default.to_dict(),
                                              **(own.to_dict() if own else {})}.items()})


def threads(config: AnyConfig, rule: str) -> int:
    """A rule's ``threads:`` (Snakemake caps it at --cores; on Slurm --cpus-per-task)."""
    return int(rule_resources(config, rule).threads)


def resources(config: AnyConfig, rule: str) -> dict[str, int]:
    """A rule's ``resources:`` (``mem_mb``, ``runtime`` in minutes, ``gpu``): the names the
    Slurm executor plugin turns into --mem, --time and --gpus; ``gpu`` is also what
    ``snakemake --resources gpu=N`` limits locally."""
    r = rule_resources(config, rule)
    return {"mem_mb": int(r.mem_mb), "runtime": int(r.runtime), "gpu": int(r.gpu)}


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

    def __init__(self, config: AnyConfig, rule: str, *log_parts: str) -> None:
        self.config, self.rule = Config.of(config), rule
        self.log = paths.log(paths.root(self.config), rule, *log_parts)

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


def accelerate_config(config: AnyConfig) -> str:
    """The accelerate config file of multi-process training (``rl.distributed``): ddp and
    fsdp2 both launch with config/accelerate/ddp.yaml (a plain MULTI_GPU launch; under
    fsdp2 the trainer shards the model itself), or a path."""
    name = Config.of(config).rl.distributed
    if name in ("ddp", "fsdp2"):
        return str(ACCELERATE_DIR / "ddp.yaml")
    return str(Path(name).expanduser().resolve())


def train_mode(config: AnyConfig) -> str:
    """``--distributed`` of ``pipeline train``: fsdp2, or ddp (also for an accelerate
    config path)."""
    return "fsdp2" if Config.of(config).rl.distributed == "fsdp2" else "ddp"


def train_processes(config: AnyConfig, gpus: int) -> int:
    """Processes of a train job: one per GPU with more than one GPU, else
    ``rl.processes`` (CPU processes on gloo)."""
    gpus = int(gpus or 0)
    return gpus if gpus > 1 else int(Config.of(config).rl.processes)


#: Set by the launcher of CPU train processes (:func:`pipeline.rl.distributed.init`).
CPU_ENV = "PIPELINE_TRAIN_CPU"


def train_launcher(config: AnyConfig, gpus: int) -> str:
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


def train_threads(config: AnyConfig, threads: int, gpus: int) -> int:
    """torch threads of each train process: the job's threads split over its CPU
    processes (GPU processes keep them all for their data loading and decode loop)."""
    gpus = int(gpus or 0)
    n = train_processes(config, gpus)
    return max(1, int(threads) // n) if gpus <= 1 else int(threads)


def rl_train_spec(config: AnyConfig) -> dict[str, Any]:
    """The ``rl`` settings a train job gets as ``--spec``: not the job lists (wildcards)
    nor how it is launched (rl.distributed), so neither reruns finished training."""
    return {k: v for k, v in Config.of(config).rl.to_dict().items()
            if k not in ("models", "methods", "distributed", "processes")}


# --------------------------------------------------------------------------- comparison


def compare_spec(config: AnyConfig) -> dict[str, Any]:
    """What ``pipeline compare`` gets as ``--spec``: the run lists (base evaluations,
    RL runs, before/after analyses) it reads, the baseline method."""
    c = Config.of(config)
    rl, comp, benches = c.rl, c.comparison, c.evaluation.benchmarks
    return {
        "benchmarks": {b: benchmark_models(c, b) for b in benches},
        "seeds": list(c.seeds),
        "eval_seeds": {b: {m: evaluation_seeds(c, m, b) for m in benchmark_models(c, b)}
                       for b in benches},
        "rl": {"models": list(rl.models) if rl.enabled else [],
               "methods": list(rl.methods) if rl.enabled else [],
               "evaluate": list(rl.evaluate)},
        "baseline": comp.baseline,
        "before_after": list(comp.before_after),
    }


def compare_inputs(config: AnyConfig, root_dir: str) -> dict[str, list[str]]:
    """The files ``pipeline compare`` reads (named lists, for ``input:``)."""
    from pipeline.comparison.stage import manifest, manifest_paths

    return manifest_paths(manifest(compare_spec(config), root_dir))


# --------------------------------------------------------------------------- claims


def provision_spec(model: Section | dict[str, Any]) -> dict[str, Any]:
    """A model's config entry without the keys provisioning ignores (``claims_family``: a
    claims setting, so changing it never re-provisions the model)."""
    entry = model.to_dict() if isinstance(model, Section) else model
    return {k: v for k, v in entry.items() if k != "claims_family"}


def claims_families(config: AnyConfig) -> str:
    """``model=family`` for every model whose config sets ``claims_family`` (the others
    take the family of their architecture, docs/methods.md §9.6); ``-`` when none."""
    pairs = [f"{m}={s.claims_family}" for m, s in Config.of(config).models.items()
             if s.claims_family]
    return " ".join(pairs) or "-"


def claims_runs(config: AnyConfig) -> list[str]:
    """Trained runs whose analyses the claims read (those compare analyses before/after)."""
    c = Config.of(config)
    if not (c.rl.enabled and c.comparison.before_after):
        return []
    return [paths.run(m, meth, s) for m, meth, s in rl_runs(c)]


def claims_inputs(config: AnyConfig, root_dir: str) -> dict[str, list[str]]:
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
