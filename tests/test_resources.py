"""Resources from the config on every rule, the train launcher (one process or
`accelerate launch`), and the Slurm profiles."""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline.workflow as pw
from pipeline import config as cfg

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = {"experiment": "x", "models": {"m": {"source": "builtin", "arch": "qwen3"}}}


def _rules() -> dict[str, str]:
    """rule name -> its text, for every rule of workflow/rules/*.smk."""
    rules = {}
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        parts = re.split(r"(?m)^rule (\w+):\n", path.read_text())
        rules.update(dict(zip(parts[1::2], parts[2::2], strict=True)))
    return rules


def test_every_rule_takes_its_resources_from_the_config():
    rules = _rules()
    schema = cfg.load_schema()["properties"]["resources"]["properties"]
    assert set(schema) == {"default", *rules}  # a new rule needs its schema entry
    for name, body in rules.items():
        assert f'threads: pw.threads(config, "{name}")' in body, name
        assert f'**pw.resources(config, "{name}")' in body, name
        assert not re.search(r"mem_mb\s*=|threads:\s*\d", body), name


def test_defaults_and_overrides():
    config = cfg.validate(copy.deepcopy(MINIMAL))
    assert config["resources"] == {"default": {"mem_mb": 4000, "runtime": 60, "threads": 2,
                                               "gpu": 0}}
    assert pw.threads(config, "train") == 2
    assert pw.resources(config, "train") == {"mem_mb": 4000, "runtime": 60, "gpu": 0}
    config = cfg.validate({**copy.deepcopy(MINIMAL), "resources": {
        "default": {"runtime": 30}, "train": {"gpu": 2, "threads": 8}}})
    assert pw.resources(config, "train") == {"mem_mb": 4000, "runtime": 30, "gpu": 2}
    assert pw.threads(config, "train") == 8 and pw.threads(config, "evaluate") == 2


def test_default_config_keeps_the_local_dag():
    """config/config.yaml: 2 threads (1 for the light rules, for provisioning and training
    the tiny models and for the jobs on their trained checkpoints, two side by side), no
    GPU."""
    config = cfg.load(ROOT / "config" / "config.yaml")
    light = {"countdown_data", "decomposition_compare", "report_summary", "train", "provision",
             "evaluate_trained", "decomposition_trained", "attention_trained"}
    for rule in _rules():
        assert pw.threads(config, rule) == (1 if rule in light else 2), rule
        assert pw.resources(config, rule)["gpu"] == 0
    assert pw.resources(config, "train")["mem_mb"] == 8000
    assert pw.resources(config, "decomposition")["mem_mb"] == 6000
    gpu = cfg.load(ROOT / "config" / "qwen3-4b.yaml")
    assert {r for r in _rules() if pw.resources(gpu, r)["gpu"]} == {
        "evaluate", "responses", "decomposition", "attention", "depth", "train",
        "evaluate_trained"}


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"trian": {"gpu": 1}},
         "config error at resources: Additional properties are not allowed ('trian' was"),
        ({"train": {"gpu": -1}}, "config error at resources.train.gpu: -1 is less than"),
        ({"train": {"gpus": 1}}, "config error at resources.train: Additional properties are "
                                 "not allowed ('gpus'"),
        ({"default": {"mem_mb": "8G"}}, "config error at resources.default.mem_mb: '8G' is not"),
        ({"evaluate": {"runtime": 0}}, "config error at resources.evaluate.runtime: 0 is less"),
    ],
)
def test_bad_resources_name_their_key(resources, expected):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate({**copy.deepcopy(MINIMAL), "resources": resources})
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_train_launcher():
    config = cfg.validate(copy.deepcopy(MINIMAL))
    assert pw.train_launcher(config, 0) == "python -m pipeline"
    assert pw.train_launcher(config, 1) == "python -m pipeline"
    ddp = shlex.split(pw.train_launcher(config, 4))
    assert ddp == ["accelerate", "launch", "--num_processes", "4", "--num_machines", "1",
                   "--config_file", str(ROOT / "config" / "accelerate" / "ddp.yaml"),
                   "-m", "pipeline"]
    config["rl"]["distributed"] = "fsdp"
    assert shlex.split(pw.train_launcher(config, 2))[7] == str(
        ROOT / "config" / "accelerate" / "fsdp.yaml")
    config["rl"]["distributed"] = "/site/accelerate.yaml"
    assert "/site/accelerate.yaml" in pw.train_launcher(config, 2)


def test_launch_does_not_rerun_training():
    """rl.distributed is not part of the train spec (no rerun when only the launch changes)."""
    config = cfg.validate(copy.deepcopy(MINIMAL))
    assert "distributed" not in pw.rl_train_spec(config)
    assert set(pw.rl_train_spec(config)) == set(config["rl"]) - {"models", "methods",
                                                                 "distributed"}


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig

    conf = ClusterConfig.from_yaml_file(str(ROOT / "config" / "accelerate" / f"{name}.yaml"))
    assert conf.distributed_type.value == {"ddp": "MULTI_GPU", "fsdp": "FSDP"}[name]
    assert conf.num_machines == 1 and conf.main_process_port == 0


def test_multi_gpu_launch_starts_one_process_per_gpu(tmp_path):
    """The exact launcher command of a 2-GPU train job starts 2 ranks of `python -m
    pipeline` (on CPU here: torchrun with the gloo backend needs no GPU)."""
    config = cfg.validate(copy.deepcopy(MINIMAL))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run(f"{pw.train_launcher(config, 2)} --help", shell=True, cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("usage: python -m pipeline") == 2


def test_dry_run_uses_config_resources_and_launcher(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(ROOT / "config" / "smoke.yaml"),
           "-n", "-p", "--cores", "2", "--set-resources", "train:gpu=2"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "accelerate launch --num_processes 2 --num_machines 1" in out
    assert re.search(r"runtime=20, gpu=0, mem_mb=2000", out)
    assert "python -m pipeline evaluate" in out


@pytest.mark.parametrize("profile", ["slurm", "slurm-local"])
def test_slurm_profiles(profile):
    conf = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
    assert conf["executor"] == "slurm"
    assert (ROOT / conf["configfile"]).exists()
    rules = set(_rules())
    assert set(conf.get("set-resources", {})) <= rules
    if profile == "slurm-local":
        assert conf["slurm-status-command"] == "squeue" and conf["slurm-no-account"] is True
    else:
        assert {"slurm_partition", "slurm_account"} <= set(conf["default-resources"])
