"""Configuration: read a YAML strictly, validate it against the JSON schema and fill
defaults. The bottom of the import graph: no other pipeline module is imported here; the
cross-key checks, which read stage modules, are :mod:`pipeline.validation`'s.

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
from collections.abc import Hashable, Mapping
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
    """The validator, extended to fill defaults and to read strings that spell numbers as
    numbers wherever the schema wants a number (mapping values and array items)."""
    validate_properties = validator_cls.VALIDATORS["properties"]
    validate_items = validator_cls.VALIDATORS["items"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
                elif key in instance and isinstance(instance[key], str):
                    instance[key] = _as_number(instance[key], sub)
        yield from validate_properties(validator, properties, instance, schema)

    def read_numbers(validator, items, instance, schema):
        if isinstance(instance, list) and isinstance(items, dict):
            instance[:] = [_as_number(x, items) if isinstance(x, str) else x for x in instance]
        yield from validate_items(validator, items, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults,
                                                        "items": read_numbers})


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


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with duplicate keys refused (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, Hashable) and key in seen:
                raise ConfigError(f"config error: {key_node.start_mark.name}:{line}: duplicate "
                                  f"key {key!r} (first at line {seen[key]})")
            if isinstance(key, Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """The YAML document at ``path``; a syntax error names the file, line and column, and a
    duplicate key both lines, in one :class:`ConfigError` line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config error: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config error: cannot read {path}: {exc}") from None
    loader = _StrictLoader(text)
    loader.name = str(path)  # marks name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise ConfigError(f"config error: {where}: invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config error: {path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


def number_from_string(value: str, *, integer: bool = False) -> Any:
    """``value`` as the number it spells (an int where ``integer`` and it is whole), else
    ``value`` unchanged: :func:`_as_number` for a field typed outside the schema."""
    return _as_number(value, {"type": "integer" if integer else "number"})


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


def is_builtin(model: Any) -> bool:
    """Whether a model (its ``models.<name>`` entry, a mapping or its typed section) is a
    builtin tiny model, decided by its ``source`` alone: builtin models are provisioned by
    SFT on the Countdown train split, sampled with the builtin response settings and
    prompt format, and analysed on their own Countdown text."""
    source = model["source"] if isinstance(model, Mapping) else model.source
    return source == "builtin"


def resolve_prompt_style(style: str, source: str) -> str:
    """A ``prompt_style`` for a model of ``source``: ``auto`` = the builtin format for
    builtin models, the chat template otherwise; any other style is kept."""
    if style != "auto":
        return style
    return "builtin" if is_builtin({"source": source}) else "chat"


def _path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate_schema(config: dict[str, Any], schema: dict | None = None) -> dict[str, Any]:
    """Validate ``config`` against the schema in place, filling defaults and reading
    strings that spell numbers as numbers where the schema wants a number; one-line
    :class:`ConfigError` naming the key path. The cross-key checks are
    :func:`pipeline.validation.validate`'s."""
    if not isinstance(config, dict):
        raise ConfigError(f"config error: expected a mapping, got {type(config).__name__}")
    schema = schema or load_schema()
    errors = sorted(_Validator(schema).iter_errors(config),
                    key=lambda e: (-len(e.absolute_path), e.path))
    if errors:
        # the deepest error is the most specific one
        err = jsonschema.exceptions.best_match(errors) if len(errors) > 1 else errors[0]
        deepest = max(errors, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) > len(err.absolute_path):
            err = deepest
        raise ConfigError(f"config error at {_path(err)}: {err.message}")
    return config


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


def __getattr__(name: str) -> Any:
    """The old import paths ``pipeline.config.validate`` and ``pipeline.config.load``: the
    full validation (cross-key checks) lives in :mod:`pipeline.validation`, above the stages
    it reads, so this module stays at the bottom of the import graph (imported lazily, on
    first use; nothing in the package uses these aliases)."""
    if name in ("validate", "load"):
        import importlib

        return getattr(importlib.import_module("pipeline.validation"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def canonical_json(obj: Any) -> str:
    """Stable JSON (sorted keys) — used for params so reruns see identical values."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
