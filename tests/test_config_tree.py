"""The schema and the typed sections it mirrors cannot drift (issue 25): ``rl.trainer`` has
exactly :class:`pipeline.rl.config.RLConfig`'s keys with matching types (its defaults are
written once, in RLConfig), and the attention-rhythm knobs are one ``$defs/rhythm`` shared
by ``analysis.attention`` and ``rl.trainer.rhythm``, whose defaults agree with
:func:`pipeline.attention.rhythm`'s and the credit code's."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from pipeline import config as cfg
from pipeline.rl.config import RLConfig
from pipeline.validation import DAG_SET

SCHEMA = cfg.load_schema()
TRAINER = SCHEMA["properties"]["rl"]["properties"]["trainer"]
RHYTHM = SCHEMA["$defs"]["rhythm"]
ATTENTION = SCHEMA["properties"]["analysis"]["properties"]["attention"]
_JSON = {"int": {"integer"}, "float": {"number"}, "bool": {"boolean"}, "str": {"string"},
         "None": {"null"}, "tuple[float, float]": {"array"}, "dict[str, Any]": {"object"}}


def _schema_types(sub: dict) -> set[str]:
    """JSON types a schema node admits (``enum`` members counted by their Python type)."""
    if "$ref" in sub:
        return {"object"}
    if "enum" in sub:
        names = {type(v).__name__ for v in sub["enum"]}
        return set().union(*(_JSON[{"NoneType": "None"}.get(n, n)] for n in names))
    t = sub.get("type", [])
    return set([t] if isinstance(t, str) else t)


def _field_types(annotation: str) -> set[str]:
    return set().union(*(_JSON[part.strip()] for part in annotation.split(" | ")))


def test_trainer_keys_are_rlconfig_fields() -> None:
    fields = {f.name for f in dataclasses.fields(RLConfig)} - set(DAG_SET)
    assert set(TRAINER["properties"]) == fields
    assert TRAINER["additionalProperties"] is False


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(RLConfig)
                                   if f.name not in DAG_SET], ids=lambda f: f.name)
def test_trainer_types_are_rlconfig_types(field) -> None:
    sub = TRAINER["properties"][field.name]
    assert "default" not in sub, "RLConfig holds the trainer defaults"
    want = _field_types(str(field.type))
    got = _schema_types(sub)
    if "number" in want:  # JSON "integer" values are numbers too
        got = {"number" if t == "integer" else t for t in got}
    assert got == want, (field.name, got, want)


def test_rhythm_knobs_are_shared_and_defaults_agree() -> None:
    from pipeline.attention.metrics import rhythm
    from pipeline.rl.credit import credit_gamma

    assert TRAINER["properties"]["rhythm"]["$ref"] == "#/$defs/rhythm"
    knobs = set(RHYTHM["properties"])
    assert set(ATTENTION["properties"]) == knobs | {"batch_size", "top_frac"}
    for key in knobs:  # same types and bounds in both places
        shared = {k: v for k, v in ATTENTION["properties"][key].items()
                  if k not in ("default", "description")}
        assert shared == RHYTHM["properties"][key], key
    sig = inspect.signature(rhythm).parameters
    defaults = cfg.schema_defaults("analysis", "attention")
    for key in knobs | {"top_frac"}:
        assert defaults[key] == sig[key].default, key  # layers: None in both
    top = inspect.signature(credit_gamma).parameters["top_frac"].default
    assert RLConfig().top_frac == top == defaults["top_frac"]


def test_trainer_rhythm_is_checked_before_any_job() -> None:
    config = {"experiment": "x", "models": {"m": {"source": "builtin", "arch": "qwen3"}},
              "rl": {"trainer": {"rhythm": {"windw": 3}}}}
    with pytest.raises(cfg.ConfigError, match=r"at rl\.trainer\.rhythm: Additional .*'windw'"):
        cfg.validate_schema(config)
    config["rl"]["trainer"]["rhythm"] = {"window": "12", "group_scope": "per_layer"}
    assert cfg.validate_schema(config)["rl"]["trainer"]["rhythm"]["window"] == 12


def _sections() -> list[type]:
    from pipeline import settings

    return [c for c in vars(settings).values() if isinstance(c, type)
            and issubclass(c, settings.Section) and c is not settings.Section]


def _node(pointer: str) -> dict:
    node = SCHEMA
    for part in pointer.removeprefix("#").strip("/").split("/") if pointer != "#" else ():
        node = node[part]
    return node


@pytest.mark.parametrize("cls", _sections(), ids=lambda c: c.__name__)
def test_every_section_mirrors_its_schema_node(cls) -> None:
    """Fields = the node's properties; a field without a default is one the schema always
    fills (it has a default there, or is required); no class writes a default value."""
    node = _node(cls.SCHEMA)
    props = node["properties"]
    fields = dataclasses.fields(cls)
    assert {f.name for f in fields} == set(props), cls.__name__
    for f in fields:
        if f.default is dataclasses.MISSING:
            assert "default" in props[f.name] or f.name in node.get("required", []), f.name
        else:
            assert f.default is None, f"{cls.__name__}.{f.name}: a default other than None"


@pytest.mark.parametrize("name", sorted(p.name for p in (cfg.SCHEMA_PATH.parents[2] / "config")
                                        .glob("*.yaml")))
def test_shipped_configs_round_trip_through_the_tree(name) -> None:
    """``Config.of(validated).to_dict()`` is the validated config itself: the ``--spec``
    JSON of every rule, hence Snakemake's rerun decisions, is unchanged."""
    import json

    from pipeline.settings import Config
    from pipeline.validation import load

    config = load(cfg.SCHEMA_PATH.parents[2] / "config" / name)
    tree = Config.of(config)
    assert json.dumps(tree.to_dict(), sort_keys=True) == json.dumps(config, sort_keys=True)
    assert Config.of(tree) is tree


def test_a_partial_section_is_completed_from_the_schema() -> None:
    from pipeline.settings import Benchmark, Config

    b = Benchmark.of({"task": "countdown", "n_samples": "4"})
    assert (b.n_samples, b.k, b.temperature, b.models) == (4, [1, 8], 1.0, "all")
    with pytest.raises(cfg.ConfigError, match="temperature"):
        Benchmark.of({"task": "countdown", "temperature": -1})
    with pytest.raises(cfg.ConfigError, match="needs 'task'|'task' is a required"):
        Benchmark.of({})
    with pytest.raises(cfg.ConfigError, match=r"at models\.m\.source: 'ftp' is not one of"):
        Config.of({"experiment": "x", "models": {"m": {"source": "ftp"}}})
