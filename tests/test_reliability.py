"""Bad configuration values stop the run before any job with one line naming the key path
(issue 25; docs/methods.md §8): a table of faults injected into ``config/smoke.yaml``,
checked through the validator the Snakefile calls, plus a dry run that shows no job starts
and nothing is written. Numbers written as YAML strings are read as numbers."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import config as cfg

ROOT = Path(__file__).resolve().parent.parent
SMOKE = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())


def _set(conf: dict, path: str, value) -> dict:
    conf = copy.deepcopy(conf)
    *parents, last = path.split(".")
    node = conf
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return conf


FAULTS = [  # (key path to set, value, the key path the error must name, words it must say)
    ("rl.bupo_layer", 999, "rl.bupo_layer", "2 blocks of qwen3-smoke"),
    ("analysis.attention.layers", [50], "analysis.attention.layers", "outside the 2 blocks"),
    ("rl.trainer.rhythm", {"layers": [0, 7]}, "rl.trainer.rhythm.layers", "[7]"),
    ("evaluation.benchmarks.countdown.temperature", 0, "evaluation.benchmarks.countdown"
     ".temperature", "identical"),
    ("rl.split", "valid", "rl.split", "not a split"),
    ("tasks.countdown.splits", {"train": 50, "test": 10, "../../../../../x": 5},
     "tasks.countdown.splits", "does not match"),
    ("mlflow.tracking_uri", "file:///tmp/mlruns", "mlflow.tracking_uri", "file store"),
    ("rl.trainer.temperature", 0, "rl.trainer.temperature", "identical rollouts"),
    ("rl.trainer.lr", "fast", "rl.trainer.lr", "not of type 'number'"),
    ("rl.trainer.lrr", 1e-4, "rl.trainer", "'lrr' was unexpected"),
    ("rl.trainer.seed", 3, "rl.trainer.seed", "set by the DAG"),
    ("rl.trainer.group_size", 0, "rl.trainer.group_size", "less than the minimum of 1"),
    ("rl.trainer.updates_per_batch", 3, "rl.trainer", "does not split"),
    ("seeds", [0, 0], "seeds", "non-unique"),
    ("results_dir", "", "results_dir", "non-empty"),
    ("mlflow.experiment_name", "", "mlflow.experiment_name", "non-empty"),
    ("analysis.attention.h_lo", 200, "analysis.attention.h_lo", "200 > h_hi 100"),
    ("rl.trainer.rhythm", {"h_lo": 500}, "rl.trainer.rhythm.h_lo", "500 > h_hi 100"),
    ("comparison.baseline", "ppo", "comparison.baseline", "not one of rl.methods"),
    ("analysis.depth", {"tuned": {"steps": -1}}, "analysis.depth", "tuned.steps must be >= 0"),
    ("analysis.depth", {"batch_size": 0}, "analysis.depth", "batch_size must be >= 1"),
    ("analysis.depth", {"facts": {"n_facts": "many"}}, "analysis.depth",
     "facts.n_facts must be an integer"),
    ("analysis.depth", {"lenses": ["tuned", "tuned"]}, "analysis.depth", "repeat a lens"),
    ("analysis.depth", {"tuned": {"stepz": 3}}, "analysis.depth", "unknown key tuned.stepz"),
]


@pytest.mark.parametrize("path, value, where, words", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_is_one_line_naming_the_key(path, value, where, words) -> None:
    with pytest.raises(cfg.ConfigError) as exc:
        cfg.validate(_set(SMOKE, path, value))
    msg = str(exc.value)
    assert "\n" not in msg and f"config error at {where}" in msg and words in msg, msg


YAML_FAULTS = [  # (file text, words the one line must say after "config error: <file>:")
    ("results_dir: r\nmodels:\n  a: [1, 2\nseeds: 1\n", ":4:6: invalid YAML: while parsing "
     "a flow sequence expected ',' or ']'"),
    ("seeds: [1]\nexperiment: x\nseeds: [2]\n", ":3: duplicate key 'seeds' (first at line 1)"),
    ("models:\n  m: {source: builtin}\n  m: {source: hub}\n",
     ":3: duplicate key 'm' (first at line 2)"),
    ("a:\n\tb: 1\n", ":2:1: invalid YAML: while scanning for the next token found "
     "character '\\t'"),
]


@pytest.mark.parametrize("text, words", YAML_FAULTS, ids=["syntax", "dup", "dup-model", "tab"])
def test_yaml_fault_names_file_line_and_column(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(cfg.ConfigError) as exc:
        cfg.load(f)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"config error: {f}{words}"), msg


def test_check_config_command(tmp_path: Path) -> None:
    """``reasoning-inside check-config``: ok per good file, one error line and exit 1 for a
    bad one (the Snakefile cannot see a syntax error: Snakemake stops on it first)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(YAML_FAULTS[0][0])
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**SMOKE, "results_dir": str(tmp_path / "r")}))
    res = subprocess.run([sys.executable, "-m", "pipeline", "check-config", str(good),
                          str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and res.stdout == f"ok {good}\n", res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: check-config: ConfigError: config error: {bad}{YAML_FAULTS[0][1]}"), lines


def test_numbers_written_as_strings_in_the_depth_spec() -> None:
    """``analysis.depth`` is typed by :class:`pipeline.depth.spec.DepthSpec`, not the schema:
    its numbers written as strings are read there."""
    from pipeline.depth.spec import depth_spec

    s = depth_spec({"tuned": {"weight_decay": "1e-3", "steps": "5"}, "batch_size": "8"})
    assert (s.tuned.weight_decay, s.tuned.steps, s.batch_size) == (1e-3, 5, 8)
    assert type(s.tuned.steps) is int and type(s.tuned.weight_decay) is float


@pytest.mark.parametrize("path, text, want", [
    ("rl.trainer.lr", "1e-4", 1e-4),
    ("rl.trainer.steps", "3", 3),
    ("analysis.attention.window", "12", 12),
    ("evaluation.benchmarks.countdown.temperature", "0.7", 0.7),
    ("rl.trainer.betas", ["0.9", "9.9e-1"], [0.9, 0.99]),
])
def test_numbers_written_as_strings_are_numbers(path, text, want) -> None:
    conf = cfg.validate(_set(SMOKE, path, text))
    node = conf
    for p in path.split("."):
        node = node[p]
    assert node == want and type(node) is type(want)


def test_strings_stay_strings_where_the_schema_wants_one() -> None:
    conf = cfg.validate(_set(SMOKE, "experiment", "2024"))
    assert conf["experiment"] == "2024"


def test_results_dir_must_be_writable(tmp_path: Path) -> None:
    cfg.check_writable(tmp_path / "new" / "results")  # creatable: fine, nothing created
    assert not (tmp_path / "new").exists()
    cfg.check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(cfg.ConfigError, match="config error at results_dir"):
        cfg.check_writable(tmp_path / "file")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(cfg.ConfigError, match="cannot write"):
            cfg.check_writable(ro)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["path", "duplicate"])
def test_dry_run_stops_before_any_job_and_writes_nothing(tmp_path: Path, kind: str) -> None:
    """Through Snakemake: the one line reaches the user, no job starts, no file is written
    (the split name would have made countdown_data write outside results/; Snakemake's own
    YAML reader lets the last of two duplicate keys win, the Snakefile reads it again)."""
    bad = _set(SMOKE, "tasks.countdown.splits", {"train": 50, "test": 10, "../../../x": 5})
    conf = tmp_path / "bad.yaml"
    conf.write_text(yaml.safe_dump(bad))
    expected = "config error at tasks.countdown.splits"
    if kind == "duplicate":
        conf.write_text(yaml.safe_dump(SMOKE) + "seeds: [0]\n")
        first = next(i for i, line in enumerate(conf.read_text().splitlines(), 1)
                     if line.startswith("seeds:"))
        expected = f"config error: {conf}:{len(conf.read_text().splitlines())}: duplicate " \
                   f"key 'seeds' (first at line {first})"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(work), "--configfile", str(conf), "--cores", "1"],
        capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode != 0
    assert expected in res.stderr + res.stdout
    assert "rule countdown_data" not in res.stdout + res.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != conf]
    assert [p for p in written if ".snakemake" not in p.parts] == []


@pytest.mark.parametrize("content, words", [
    ("", "is empty"), ("{not json\n", "cannot be read"), ("\n\n", "")])
def test_bad_benchmark_file_is_one_line(tmp_path: Path, content: str, words: str) -> None:
    from pipeline.tasks.benchmarks import load_benchmark
    f = tmp_path / "math500.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError) as exc:
        load_benchmark("math500", path=f, cache_dir=tmp_path / "cache")
    msg = str(exc.value)
    assert "\n" not in msg and str(f) in msg and words in msg, msg
