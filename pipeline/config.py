"""Configuration: load a YAML, validate it against the JSON schema and fill defaults.

Errors are one line naming the key path, e.g.
``config error at models.qwen3-tiny.hidden_size: 'big' is not of type 'integer'``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
CACHE_ENV = "PIPELINE_CACHE"
DEPRECATED_CACHE_ENV = "PIPELINE_DATA_CACHE"  # still read, with a warning, for one release


class ConfigError(ValueError):
    """The configuration is malformed; the message names the offending key path."""


def _with_defaults(validator_cls):
    validate_properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
                elif key in instance and isinstance(instance[key], str):
                    instance[key] = _as_number(instance[key], sub)
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _types(sub: Mapping[str, Any]) -> set[str]:
    t = sub.get("type", [])
    out = set([t] if isinstance(t, str) else t)
    for alt in sub.get("oneOf", []) + sub.get("anyOf", []):
        out |= _types(alt)
    return out


def _as_number(value: str, sub: Mapping[str, Any]) -> Any:
    """A string where the schema wants a number is read as the number it spells (PyYAML
    reads ``1e-4`` as a string: YAML 1.1 floats need a dot); other strings are kept."""
    types = _types(sub)
    if "string" in types or not types & {"number", "integer"} or not _NUMBER.fullmatch(value):
        return value
    x = float(value)
    return int(x) if "integer" in types and "number" not in types and x.is_integer() else x


def _wrong_type(value: Any, annotation: str) -> str | None:
    """What ``value`` should have been for a dataclass field annotated ``annotation``
    (``"float"``, ``"int | None"``, …), or None when it fits (or the type is not simple)."""
    kinds = {t.strip() for t in annotation.split("|")}
    if value is None:
        return None if "None" in kinds else f"a {annotation}"
    if kinds & {"float", "int"} and not kinds & {"str", "Any"}:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if "float" not in kinds:
            ok = ok and isinstance(value, int)
        return None if ok else ("a number" if "float" in kinds else "an integer")
    if kinds == {"bool"} and not isinstance(value, bool):
        return "true or false"
    return None


def coerce_numbers(d: dict[str, Any], fields: Mapping[str, type]) -> dict[str, Any]:
    """``d`` with strings that spell numbers read as numbers where ``fields`` (name → the
    dataclass field's type) wants an int or a float (the free ``rl.trainer`` section)."""
    out = dict(d)
    for k, v in d.items():
        t = str(fields.get(k, ""))
        if isinstance(v, str) and _NUMBER.fullmatch(v) and ("float" in t or "int" in t) \
                and "str" not in t:
            x = float(v)
            out[k] = int(x) if "float" not in t and x.is_integer() else x
    return out


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def schema_defaults(*path: str, schema: dict | None = None) -> dict[str, Any]:
    """The defaults validation fills into an empty mapping at ``path`` of the config, e.g.
    ``schema_defaults("analysis", "attention")``: the schema is the one place a default
    is written, stages that also run without a config read theirs from here."""
    schema = schema or load_schema()
    node = schema
    for key in path:
        node = node["properties"][key]
    instance: dict[str, Any] = {}
    for _ in _Validator({**node, "$defs": schema.get("$defs", {})}).iter_errors(instance):
        pass  # only the defaults are wanted; {} of a section with required keys is invalid
    return instance


def cache_dir(configured: str | os.PathLike[str] | None = None) -> Path:
    """The download cache (registry wheels, data sources): ``configured`` (the config's
    ``cache_dir``) > ``$PIPELINE_CACHE`` > ``$PIPELINE_DATA_CACHE`` (deprecated; a
    warning) > ``~/.cache/reasoning-inside``."""
    if configured:
        return Path(configured)
    env = os.environ.get(CACHE_ENV)
    if not env and (env := os.environ.get(DEPRECATED_CACHE_ENV)):
        warnings.warn(f"${DEPRECATED_CACHE_ENV} is deprecated and will be ignored in the next "
                      f"release: set ${CACHE_ENV} instead", FutureWarning, stacklevel=2)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reasoning-inside"


def is_builtin(model: Mapping[str, Any]) -> bool:
    """Whether a model (its ``models.<name>`` entry) is a builtin tiny model, decided by
    its ``source`` alone: builtin models are provisioned by SFT on the Countdown train
    split, sampled with the builtin response settings and prompt format, and analysed on
    their own Countdown text."""
    return model["source"] == "builtin"


def resolve_prompt_style(style: str, source: str) -> str:
    """A ``prompt_style`` for a model of ``source``: ``auto`` = the builtin format for
    builtin models, the chat template otherwise; any other style is kept."""
    if style != "auto":
        return style
    return "builtin" if is_builtin({"source": source}) else "chat"


def _path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate(config: dict[str, Any], schema: dict | None = None, *,
             semantics: bool = True) -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults) and return it.

    ``semantics=False`` checks the schema only (the same defaults are filled) and skips the
    cross-key checks, which import torch: the Snakefile passes it in the Snakemake process
    that runs each job on a cluster, whose config the main process has already checked."""
    if not isinstance(config, dict):
        raise ConfigError(f"config error: expected a mapping, got {type(config).__name__}")
    schema = schema or load_schema()
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (-len(e.absolute_path), e.path))
    if errors:
        # the deepest error is the most specific one
        err = jsonschema.exceptions.best_match(errors) if len(errors) > 1 else errors[0]
        deepest = max(errors, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) > len(err.absolute_path):
            err = deepest
        raise ConfigError(f"config error at {_path(err)}: {err.message}")
    if semantics:
        _check_semantics(config)
    return config


def _check_semantics(config: dict[str, Any]) -> None:
    """Constraints a JSON schema cannot express."""
    for name, spec in config["models"].items():
        at = f"config error at models.{name}"
        if spec["source"] == "gguf":
            local, wheel = "path" in spec, "package" in spec
            missing = [k for k in ("file", "sha256") if k not in spec]
            if local == wheel or (wheel and missing):
                raise ConfigError(f"{at}: a gguf model needs either `path` or `package` + "
                                  f"`file` + `sha256`, not both"
                                  + (f" (missing {', '.join(missing)})" if missing else ""))
        if not is_builtin(spec):
            continue
        if spec["head_dim"] is None and spec["hidden_size"] % spec["num_heads"]:
            raise ConfigError(f"{at}.num_heads: {spec['num_heads']} does not divide "
                              f"hidden_size {spec['hidden_size']} (or set head_dim)")
        if spec["num_heads"] % spec["num_kv_heads"]:
            raise ConfigError(f"{at}.num_kv_heads: {spec['num_kv_heads']} does not divide "
                              f"num_heads {spec['num_heads']}")
    cd = config["tasks"]["countdown"]
    for lo, hi in (("min_number", "max_number"), ("min_target", "max_target")):
        if cd[lo] > cd[hi]:
            raise ConfigError(f"config error at tasks.countdown.{lo}: {cd[lo]} > {hi} {cd[hi]}")
    rl = config["rl"]
    if rl["distributed"] == "fsdp":
        raise ConfigError("config error at rl.distributed: 'fsdp' is now 'fsdp2' (the trainer "
                          "shards with FSDP2 itself)")
    if unknown := [m for m in rl["models"] if m not in config["models"]]:
        raise ConfigError(f"config error at rl.models: unknown models {unknown}")
    if rl["task"] == "math" and not (rl["dataset"] or rl["path"]):
        raise ConfigError("config error at rl.dataset: task math needs a dataset or a path")
    if rl["models"] and rl["methods"]:
        benches = config["evaluation"]["benchmarks"]
        if unknown := [b for b in rl["evaluate"] if b not in benches]:
            raise ConfigError(f"config error at rl.evaluate: unknown benchmarks {unknown}")
        from dataclasses import fields

        from pipeline.rl.config import RLConfig

        types = {f.name: str(f.type) for f in fields(RLConfig)}
        rl["trainer"] = coerce_numbers(rl["trainer"], types)
        for key, v in rl["trainer"].items():
            if (bad := _wrong_type(v, types.get(key, ""))) is not None:
                raise ConfigError(f"config error at rl.trainer.{key}: {v!r} is not {bad}")
        for key in ("method", "seed", "bupo_layer"):
            if key in rl["trainer"]:
                raise ConfigError(f"config error at rl.trainer.{key}: set by the DAG "
                                  "(methods, seeds, rl.bupo_layer)")
        try:
            RLConfig.from_dict({**rl["trainer"], "bupo_layer": 1})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"config error at rl.trainer: {exc}") from None
    from pipeline.depth.spec import resolve_spec

    try:
        resolve_spec(config["analysis"]["depth"])
    except ValueError as exc:
        raise ConfigError(f"config error at analysis.depth: {exc}") from None
    am = config["analysis"]["models"]
    if am != "all" and (unknown := [m for m in am if m not in config["models"]]):
        raise ConfigError(f"config error at analysis.models: unknown models {unknown}; "
                          f"known: {sorted(config['models'])}")
    for bname, bench in config["evaluation"]["benchmarks"].items():
        at = f"config error at evaluation.benchmarks.{bname}"
        if bench["models"] != "all":
            unknown = [m for m in bench["models"] if m not in config["models"]]
            if unknown:
                raise ConfigError(f"{at}.models: unknown models {unknown}; "
                                  f"known: {sorted(config['models'])}")
        if bench["task"] == "countdown" and bench["split"] not in cd["splits"]:
            raise ConfigError(f"{at}.split: {bench['split']!r} is not a split of "
                              f"tasks.countdown.splits {sorted(cd['splits'])}")
        if bench["task"] in ("math", "mmlu") and not (bench["dataset"] or bench["path"]):
            raise ConfigError(f"{at}.dataset: a {bench['task']} benchmark needs a dataset")
        too_big = [k for k in bench["k"] if k > bench["n_samples"]]
        if too_big and bench["task"] != "mmlu":
            raise ConfigError(f"{at}.k: {too_big} exceed n_samples {bench['n_samples']}")
        if bench["task"] != "mmlu" and bench["temperature"] == 0 and bench["n_samples"] > 1:
            raise ConfigError(f"{at}.temperature: 0 (greedy) makes the {bench['n_samples']} "
                              "samples identical, so avg@n / pass@k would not be samples; "
                              "set temperature > 0 or n_samples: 1")
    _check_rl_split(config)
    _check_layers(config)
    _check_tracking(config)


def _check_rl_split(config: dict[str, Any]) -> None:
    rl, splits = config["rl"], config["tasks"]["countdown"]["splits"]
    if rl["models"] and rl["methods"] and rl["task"] == "countdown" \
            and rl["split"] not in splits:
        raise ConfigError(f"config error at rl.split: {rl['split']!r} is not a split of "
                          f"tasks.countdown.splits {sorted(splits)}")
    tr = rl["trainer"]
    if rl["models"] and rl["methods"] and tr.get("temperature", 1.0) == 0 \
            and tr.get("group_size", 2) > 1:
        raise ConfigError("config error at rl.trainer.temperature: 0 (greedy) gives a group "
                          "identical rollouts, so every advantage is 0")


def _layers_of(config: dict[str, Any], model: str) -> int | None:
    """Blocks of a model when known without a download (builtin sizes, a local or cached
    config.json, the planner's table), else None (checked when the job runs)."""
    from pipeline.memory_plan import model_shape

    try:
        return model_shape(config["models"][model], name=model).layers
    except (ValueError, KeyError, OSError):
        return None


def _check_layers(config: dict[str, Any]) -> None:
    """Layer indices against every model they apply to (1-based k ≤ L; 0-based < L)."""
    rl, am = config["rl"], config["analysis"]["models"]
    analysed = list(config["models"]) if am == "all" else list(am)
    k = rl["bupo_layer"]
    if rl["methods"] and any(m.startswith("bupo") for m in rl["methods"]) \
            and isinstance(k, int):
        for m in rl["models"]:
            n = _layers_of(config, m)
            if n is not None and k > n:
                raise ConfigError(f"config error at rl.bupo_layer: {k} > the {n} blocks of "
                                  f"{m} (k is 1-based, 1..{n})")
    for where, layers, models in (
            ("analysis.attention.layers", config["analysis"]["attention"]["layers"], analysed),
            ("rl.trainer.rhythm.layers", (rl["trainer"].get("rhythm") or {}).get("layers"),
             rl["models"])):
        if not isinstance(layers, list):
            continue
        for m in models:
            n = _layers_of(config, m)
            if n is not None and (bad := [x for x in layers if not 0 <= int(x) < n]):
                raise ConfigError(f"config error at {where}: {bad} outside the {n} blocks of "
                                  f"{m} (0-based, 0..{n - 1})")


def check_writable(results_dir: str | Path) -> None:
    """``results_dir`` can be written: a probe file is created and removed in it when it
    exists, else its nearest existing parent must be writable (a dry run creates nothing)."""
    path = Path(results_dir).absolute()
    if path.is_dir():
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"config error at results_dir: cannot write in {path} "
                              f"({exc.strerror or exc})") from None
        return
    parent = next((p for p in path.parents if p.exists()), None)
    if path.exists() or parent is None or not parent.is_dir() \
            or not os.access(parent, os.W_OK | os.X_OK):
        why = "not a directory" if path.exists() else f"{parent} is not writable"
        raise ConfigError(f"config error at results_dir: cannot create {path} ({why})")


def _check_tracking(config: dict[str, Any]) -> None:
    from pipeline.tracking import resolve_tracking_uri

    try:
        resolve_tracking_uri(config["mlflow"]["tracking_uri"], config["results_dir"])
    except ValueError as exc:
        raise ConfigError(f"config error at mlflow.tracking_uri: {exc}") from None


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config error: file not found: {path}")
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config error: {path} is not valid YAML: {exc}") from None
    return validate(config or {})


def canonical_json(obj: Any) -> str:
    """Stable JSON (sorted keys) — used for params so reruns see identical values."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
