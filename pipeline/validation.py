"""Full validation of a config (docs/architecture.md §5): the schema with its defaults
(:func:`pipeline.config.validate_schema`), then the cross-key checks a JSON schema cannot
express, all in the main Snakemake process before any job starts. One-line errors name
the key path and the allowed range. Imports no torch or transformers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, read_yaml, schema_defaults, validate_schema
from pipeline.depth.spec import depth_spec
from pipeline.model_shape import model_shape
from pipeline.rl.config import RLConfig
from pipeline.settings import Benchmark, BuiltinModel, Config, GgufModel, Model
from pipeline.tracking import resolve_tracking_uri

#: ``rl.trainer`` keys the DAG sets itself (from ``rl.methods``, ``seeds``, ``rl.bupo_layer``).
DAG_SET = ("method", "seed", "bupo_layer")


def validate(config: dict[str, Any], schema: dict | None = None, *,
             semantics: bool = True) -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults) and return it.

    ``semantics=False`` checks the schema only (the same defaults are filled) and skips the
    cross-key checks: the Snakefile passes it in the Snakemake process that runs each job on
    a cluster, whose config the main process has already checked."""
    rl = config.get("rl") if isinstance(config, dict) else None
    trainer = rl.get("trainer") if isinstance(rl, dict) else None
    for key in DAG_SET if isinstance(trainer, dict) else ():
        if key in trainer:
            raise ConfigError(f"config error at rl.trainer.{key}: set by the DAG "
                              "(methods, seeds, rl.bupo_layer)")
    validate_schema(config, schema)
    if semantics:
        _check_semantics(config)
    return config


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Read each config file strictly (:func:`pipeline.config.read_yaml`): a duplicate key,
    which Snakemake's own reader lets the last one win, is a one-line error with both
    lines."""
    for path in paths:
        read_yaml(path)


def load(path: str | Path) -> dict[str, Any]:
    """Read (strictly: file, line and column of a YAML error; duplicate keys refused) and
    validate a YAML config file."""
    return validate(read_yaml(path) or {})


def _check_semantics(config: dict[str, Any]) -> None:
    """Constraints a JSON schema cannot express, over the typed tree."""
    c = Config.of(config)
    for name, model in c.models.items():
        _check_model(name, model)
    cd = c.tasks.countdown
    for lo, hi in (("min_number", "max_number"), ("min_target", "max_target")):
        if getattr(cd, lo) > getattr(cd, hi):
            raise ConfigError(f"config error at tasks.countdown.{lo}: {getattr(cd, lo)} > "
                              f"{hi} {getattr(cd, hi)}")
    rl = c.rl
    if rl.distributed == "fsdp":
        raise ConfigError("config error at rl.distributed: 'fsdp' is now 'fsdp2' (the trainer "
                          "shards with FSDP2 itself)")
    if unknown := [m for m in rl.models if m not in c.models]:
        raise ConfigError(f"config error at rl.models: unknown models {unknown}")
    if rl.task == "math" and not (rl.dataset or rl.path):
        raise ConfigError("config error at rl.dataset: task math needs a dataset or a path")
    if rl.enabled:
        if unknown := [b for b in rl.evaluate if b not in c.evaluation.benchmarks]:
            raise ConfigError(f"config error at rl.evaluate: unknown benchmarks {unknown}")
        try:
            trainer = RLConfig.from_dict({**rl.trainer.to_dict(), "bupo_layer": 1})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"config error at rl.trainer: {exc}") from None
        if rl.task == "countdown" and rl.split not in cd.splits:
            raise ConfigError(f"config error at rl.split: {rl.split!r} is not a split of "
                              f"tasks.countdown.splits {sorted(cd.splits)}")
        if trainer.temperature == 0 and trainer.group_size > 1:
            raise ConfigError("config error at rl.trainer.temperature: 0 (greedy) gives a "
                              "group identical rollouts, so every advantage is 0")
    try:
        depth_spec(c.analysis.depth)
    except ValueError as exc:
        raise ConfigError(f"config error at analysis.depth: {exc}") from None
    for where, chosen in (("analysis.models", c.analysis.models),
                          *((f"evaluation.benchmarks.{b}.models", bench.models)
                            for b, bench in c.evaluation.benchmarks.items())):
        if unknown := [m for m in c.model_names(chosen) if m not in c.models]:
            raise ConfigError(f"config error at {where}: unknown models {unknown}; "
                              f"known: {sorted(c.models)}")
    for name, bench in c.evaluation.benchmarks.items():
        _check_benchmark(f"config error at evaluation.benchmarks.{name}", bench, cd.splits)
    _check_layers(c)
    rhythm, knobs = c.rl.trainer.rhythm, schema_defaults("analysis", "attention")
    for where, lo, hi in (("analysis.attention", c.analysis.attention.h_lo,
                           c.analysis.attention.h_hi),
                          ("rl.trainer.rhythm",  # unset: pipeline.attention.rhythm's defaults
                           rhythm.h_lo if rhythm and rhythm.h_lo is not None else knobs["h_lo"],
                           rhythm.h_hi if rhythm and rhythm.h_hi is not None else knobs["h_hi"])):
        if lo > hi:
            raise ConfigError(f"config error at {where}.h_lo: {lo} > h_hi {hi} (FAI reads "
                              "the window s+h_lo..s+h_hi)")
    if rl.enabled and c.comparison.baseline not in (*rl.methods, "base"):
        raise ConfigError(f"config error at comparison.baseline: {c.comparison.baseline!r} is "
                          f"not one of rl.methods {list(rl.methods)} (or 'base')")
    try:
        resolve_tracking_uri(c.mlflow.tracking_uri, c.results_dir)
    except ValueError as exc:
        raise ConfigError(f"config error at mlflow.tracking_uri: {exc}") from None


def _check_model(name: str, model: Model) -> None:
    at = f"config error at models.{name}"
    if isinstance(model, GgufModel):
        local, wheel = model.path is not None, model.package is not None
        missing = [k for k in ("file", "sha256") if getattr(model, k) is None]
        if local == wheel or (wheel and missing):
            raise ConfigError(f"{at}: a gguf model needs either `path` or `package` + "
                              f"`file` + `sha256`, not both"
                              + (f" (missing {', '.join(missing)})" if missing else ""))
    if not isinstance(model, BuiltinModel):
        return
    if model.head_dim is None and model.hidden_size % model.num_heads:
        raise ConfigError(f"{at}.num_heads: {model.num_heads} does not divide "
                          f"hidden_size {model.hidden_size} (or set head_dim)")
    if model.num_heads % model.num_kv_heads:
        raise ConfigError(f"{at}.num_kv_heads: {model.num_kv_heads} does not divide "
                          f"num_heads {model.num_heads}")


def _check_benchmark(at: str, bench: Benchmark, splits: dict[str, int]) -> None:
    if bench.task == "countdown" and bench.split not in splits:
        raise ConfigError(f"{at}.split: {bench.split!r} is not a split of "
                          f"tasks.countdown.splits {sorted(splits)}")
    if bench.task in ("math", "mmlu") and not (bench.dataset or bench.path):
        raise ConfigError(f"{at}.dataset: a {bench.task} benchmark needs a dataset")
    if bench.task == "mmlu":
        return
    if too_big := [k for k in bench.k if k > bench.n_samples]:
        raise ConfigError(f"{at}.k: {too_big} exceed n_samples {bench.n_samples}")
    if bench.temperature == 0 and bench.n_samples > 1:
        raise ConfigError(f"{at}.temperature: 0 (greedy) makes the {bench.n_samples} "
                          "samples identical, so avg@n / pass@k would not be samples; "
                          "set temperature > 0 or n_samples: 1")


def _layers_of(c: Config, model: str) -> int | None:
    """Blocks of a model when known without a download (builtin sizes, a local or cached
    config.json, the planner's table), else None (checked when the job runs)."""
    try:
        return model_shape(c.models[model], name=model).layers
    except (ValueError, KeyError, OSError):
        return None


def _check_layers(c: Config) -> None:
    """Layer indices against every model they apply to (1-based k ≤ L; 0-based < L)."""
    rl, k = c.rl, c.rl.bupo_layer
    if any(m.startswith("bupo") for m in rl.methods) and isinstance(k, int):
        for m in rl.models:
            n = _layers_of(c, m)
            if n is not None and k > n:
                raise ConfigError(f"config error at rl.bupo_layer: {k} > the {n} blocks of "
                                  f"{m} (k is 1-based, 1..{n})")
    rhythm = rl.trainer.rhythm
    for where, layers, models in (
            ("analysis.attention.layers", c.analysis.attention.layers,
             c.model_names(c.analysis.models)),
            ("rl.trainer.rhythm.layers", rhythm.layers if rhythm else None, rl.models)):
        if not isinstance(layers, list):
            continue
        for m in models:
            n = _layers_of(c, m)
            if n is not None and (bad := [x for x in layers if not 0 <= x < n]):
                raise ConfigError(f"config error at {where}: {bad} outside the {n} blocks of "
                                  f"{m} (0-based, 0..{n - 1})")
