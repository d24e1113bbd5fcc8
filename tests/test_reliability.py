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
    ("rl.trainer.lr", "fast", "rl.trainer", "lr"),
]


@pytest.mark.parametrize("path, value, where, words", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_is_one_line_naming_the_key(path, value, where, words) -> None:
    with pytest.raises(cfg.ConfigError) as exc:
        cfg.validate(_set(SMOKE, path, value))
    msg = str(exc.value)
    assert "\n" not in msg and f"config error at {where}" in msg and words in msg, msg


@pytest.mark.parametrize("path, text, want", [
    ("rl.trainer.lr", "1e-4", 1e-4),
    ("rl.trainer.steps", "3", 3),
    ("analysis.attention.window", "12", 12),
    ("evaluation.benchmarks.countdown.temperature", "0.7", 0.7),
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
def test_dry_run_stops_before_any_job_and_writes_nothing(tmp_path: Path) -> None:
    """Through Snakemake: the one line reaches the user, no job starts, no file is written
    (the split name would have made countdown_data write outside results/)."""
    bad = _set(SMOKE, "tasks.countdown.splits", {"train": 50, "test": 10, "../../../x": 5})
    conf = tmp_path / "bad.yaml"
    conf.write_text(yaml.safe_dump(bad))
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(work), "--configfile", str(conf), "--cores", "1"],
        capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode != 0
    assert "config error at tasks.countdown.splits" in res.stderr + res.stdout
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
