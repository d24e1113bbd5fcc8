"""Every shipped config (config/*.yaml) validates and its DAG builds: `snakemake -n`
(no network, no GPU: a dry run only plans the jobs). Paper-scale configs pin their hub
models and carry the papers' hyperparameters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import config as cfg

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.name for p in (ROOT / "config").glob("*.yaml"))
PAPER = [c for c in CONFIGS if c.startswith("paper-")]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_dry_runs(name, tmp_path):
    config = cfg.load(ROOT / "config" / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(ROOT / "config" / name),
         "-n", "--cores", "2", "--quiet", "rules"],
        capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "compare" in out  # the DAG ends with the comparison
    if config["rl"]["models"] and config["rl"]["methods"]:  # evaluate also on the checkpoints
        from pipeline import workflow as pw

        n = len(pw.evaluation_targets(config, "R")) + len(pw.rl_evaluation_targets(config, "R"))
        assert re.search(rf"(?m)^evaluate\s+{n}$", out) and re.search(r"(?m)^train\s+\d", out)
    assert not (tmp_path / "results").exists()  # a dry run writes no outputs


def test_paper_configs_exist():
    assert {"paper-qwen3-8b.yaml", "paper-llama3.yaml", "paper-octothinker.yaml"} <= set(PAPER)


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_hyperparameters(name):
    """docs/methods.md §2/§3/§5: GRPO with 8 rollouts per prompt, lr 1e-6, clip 0.2/0.2, T=1,
    BuPO s_inter ≤ 30; AIME@32, MATH500@16, AMC23@16; several seeds; hub models."""
    config = cfg.load(ROOT / "config" / name)
    tr = config["rl"]["trainer"]
    assert tr["group_size"] == 8 and tr["lr"] == 1e-6
    assert tr["clip_low"] == tr["clip_high"] == 0.2 and tr["temperature"] == 1.0
    assert tr["s_inter"] <= 30 and tr["max_new_tokens"] == 8192
    assert {"grpo", "bupo", "rhythm_coupled"} <= set(config["rl"]["methods"])
    benches = config["evaluation"]["benchmarks"]
    samples = {b: benches[b]["n_samples"] for b in ("math500", "aime24", "aime25", "amc23")}
    assert samples == {"math500": 16, "aime24": 32, "aime25": 32, "amc23": 16}
    assert "gsm8k" in benches
    assert len(config["seeds"]) >= 3
    for spec in config["models"].values():
        assert spec["source"] == "hub" and spec["revision"]
