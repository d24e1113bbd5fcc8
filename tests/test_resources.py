"""Resources from the config on every rule (through pipeline.workflow.Common; a trained
checkpoint's job takes resources.<rule>_trained), the train launcher (one process or
`accelerate launch`), and the Slurm profiles."""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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


def _common_of_rules() -> dict[str, str | None]:
    """rule name -> the rule name of the last `C = pw.Common(config, "<name>", ...)` above
    it in its file (None where there is none)."""
    out = {}
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        last = None
        for m in re.finditer(r'(?m)^C = pw\.Common\(CFG, "(\w+)"|^rule (\w+):$',
                             path.read_text()):
            if m[1]:
                last = m[1]
            else:
                out[m[2]] = last
    return out


def _resource_keys() -> list[str]:
    """The config's resources entries: the rules and their trained-checkpoint jobs."""
    return [*_rules(), *pw.resource_keys()]


def test_every_rule_takes_its_resources_from_the_config():
    rules, common = _rules(), _common_of_rules()
    schema = cfg.load_schema()["properties"]["resources"]["properties"]
    assert set(schema) == {"default", *_resource_keys()}  # a new rule needs its schema entry
    assert set(pw.RUN_RULES) <= set(rules)
    for name, body in rules.items():
        if common[name] is not None:  # threads, resources, log, conda, job from pw.Common
            assert common[name] == name, name
            for line in ("threads: C.threads", "**C.resources,", "C.log,", "C.conda",
                         "job=C.job,"):
                assert line in body, (name, line)
        else:
            assert f'threads: pw.threads(CFG, "{name}")' in body, name
            assert f'**pw.resources(CFG, "{name}")' in body, name
        assert not re.search(r"mem_mb\s*=|threads:\s*\d", body), name


def test_trained_checkpoint_jobs_take_their_own_resources():
    """evaluate, decomposition and attention on a trained checkpoint (run
    <model>/<method>/seed<s>) ask for resources.<rule>_trained, on a base model for the
    rule's own."""
    config = cfg.validate({**copy.deepcopy(MINIMAL), "resources": {
        "evaluate": {"threads": 4, "gpu": 1}, "evaluate_trained": {"threads": 1, "mem_mb": 9}}})
    c = pw.Common(config, "evaluate", "{run}", "{benchmark}", "seed{seed}")
    base, trained = SimpleNamespace(run="m"), SimpleNamespace(run="m/grpo/seed3")
    assert (c.threads(base), c.threads(trained)) == (4, 1)
    assert {k: f(base) for k, f in c.resources.items()} == {"mem_mb": 4000, "runtime": 60,
                                                          "gpu": 1}
    assert {k: f(trained) for k, f in c.resources.items()} == {"mem_mb": 9, "runtime": 60,
                                                             "gpu": 0}
    assert c.log == "results/x/logs/evaluate/{run}-{benchmark}-seed{seed}.log"
    assert c.conda == "../envs/pipeline.yaml" and (ROOT / "workflow" / "rules" / c.conda).exists()
    # a base model's MLflow job reads as before runs had a wildcard; a checkpoint's names
    # its model and method
    job = c.job(SimpleNamespace(items=lambda: {"run": "m", "seed": "0"}.items()))
    assert job == '{"rule":"evaluate","wildcards":{"model":"m","seed":"0"}}'
    job = c.job(SimpleNamespace(items=lambda: {"run": "m/grpo/seed3", "seed": "3"}.items()))
    assert '"method":"grpo","model":"m","run":"m/grpo/seed3","seed":"3"' in job
    train = pw.Common(config, "train", "{model}", "{method}", "seed{seed}")
    assert train.threads == 2 and train.resources == {"mem_mb": 4000, "runtime": 60, "gpu": 0}
    assert train.log == "results/x/logs/train/{model}-{method}-seed{seed}.log"


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
    for rule in _resource_keys():
        assert pw.threads(config, rule) == (1 if rule in light else 2), rule
        assert pw.resources(config, rule)["gpu"] == 0
    assert pw.resources(config, "train")["mem_mb"] == 8000
    assert pw.resources(config, "decomposition")["mem_mb"] == 6000
    gpu = cfg.load(ROOT / "config" / "qwen3-4b.yaml")
    assert {r for r in _resource_keys() if pw.resources(gpu, r)["gpu"]} == {
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
    assert pw.train_mode(config) == "ddp"
    config["rl"]["distributed"] = "fsdp2"  # the trainer shards: a plain multi-process launch
    assert shlex.split(pw.train_launcher(config, 2))[7] == str(
        ROOT / "config" / "accelerate" / "ddp.yaml")
    assert pw.train_mode(config) == "fsdp2"
    config["rl"]["processes"] = 2  # CPU processes when the job gets no GPU
    cpu = shlex.split(pw.train_launcher(config, 0))
    assert cpu[:6] == ["env", "PIPELINE_TRAIN_CPU=1", "accelerate", "launch",
                       "--num_processes", "2"]
    assert pw.train_threads(config, 4, 0) == 2  # the job's cores split over its processes
    assert pw.train_threads(config, 4, 4) == 4
    assert shlex.split(pw.train_launcher(config, 4))[3] == "4"  # one per GPU
    config["rl"]["distributed"] = "/site/accelerate.yaml"
    assert "/site/accelerate.yaml" in pw.train_launcher(config, 2)
    assert pw.train_mode(config) == "ddp"


def test_old_fsdp_value_is_refused():
    with pytest.raises(cfg.ConfigError, match="'fsdp' is now 'fsdp2'"):
        cfg.validate({**copy.deepcopy(MINIMAL), "rl": {"distributed": "fsdp"}})


def test_launch_does_not_rerun_training():
    """rl.distributed is not part of the train spec (no rerun when only the launch changes)."""
    config = cfg.validate(copy.deepcopy(MINIMAL))
    assert "distributed" not in pw.rl_train_spec(config)
    assert set(pw.rl_train_spec(config)) == set(config["rl"]) - {"models", "methods",
                                                                 "distributed", "processes"}


def test_accelerate_config_loads():
    from accelerate.commands.config.config_args import ClusterConfig

    conf = ClusterConfig.from_yaml_file(str(ROOT / "config" / "accelerate" / "ddp.yaml"))
    assert conf.distributed_type.value == "MULTI_GPU"
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
    for path in (ROOT / "workflow" / "rules").glob("*.smk"):  # `use rule x as y` aliases
        rules |= set(re.findall(r"(?m)^use rule \w+ as (\w+)", path.read_text()))
    assert "depth_builtin" in rules
    assert set(conf.get("set-resources", {})) <= rules
    if profile == "slurm-local":
        assert conf["slurm-status-command"] == "squeue" and conf["slurm-no-account"] is True
    else:
        assert {"slurm_partition", "slurm_account"} <= set(conf["default-resources"])
