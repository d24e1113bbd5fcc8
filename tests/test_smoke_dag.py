"""End to end: the smoke DAG runs with `snakemake` in a temporary directory, its outputs
and MLflow runs are complete, a rerun does no work, and a bad config stops before any job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    res = _snakemake(workdir, "--configfile", str(ROOT / "config" / "smoke.yaml"))
    assert res.returncode == 0, res.stderr[-4000:]
    return workdir, res


@pytest.mark.slow
def test_outputs(smoke_run):
    workdir, _ = smoke_run
    root = workdir / "results" / "smoke"
    table = pd.read_csv(root / "summary" / "evaluation.csv")
    assert sorted(table["model"]) == ["llama-smoke", "qwen3-smoke", "qwen3-smoke+bupo",
                                      "qwen3-smoke+grpo"]
    assert set(table["benchmark"]) == {"countdown"}
    runs = root / "rl" / "qwen3-smoke"
    bupo = json.loads((runs / "bupo" / "seed0" / "history.json").read_text())
    assert [r["phase"] for r in bupo] == ["ipa", "ipa", "grpo"]  # s_inter = 2
    assert (runs / "grpo" / "seed0" / "model" / "model.safetensors").exists()
    assert set(table["model_type"]) == {"llama", "qwen3"}
    for col in ("greedy_accuracy", "avg@2", "pass@1", "pass@2"):
        assert table[col].between(0, 1).all()
    assert (root / "summary" / "evaluation.png").stat().st_size > 1000
    for model in ("llama-smoke", "qwen3-smoke"):
        assert (root / "models" / model / "model" / "model.safetensors").exists()
        ev = root / "eval" / model / "countdown" / "seed0"
        samples = pd.read_parquet(ev / "samples.parquet")
        assert len(samples) == 24 * (1 + 2)  # greedy + 2 samples per problem
        summary = json.loads((ev / "summary.json").read_text())
        assert summary["num_problems"] == 24 and summary["model"] == model
    for model in ("llama-smoke", "qwen3-smoke"):
        responses = pd.read_parquet(root / "responses" / model / "responses.parquet")
        assert len(responses) == 6
        dec = pd.read_parquet(root / "decomposition" / model / "entropies.parquet")
        assert set(dec["convention"]) == {"raw", "final_norm"}
        assert set(dec["module"]) == {"layer", "attn", "ffn", "attn_in", "ffn_in"}
        boundary = json.loads((root / "decomposition" / model / "boundary.json").read_text())
        assert 1 <= boundary["boundary_layer"] <= 2
        tokens = pd.read_parquet(root / "attention" / model / "tokens.parquet")
        assert len(tokens) == responses["num_response_tokens"].sum()
        for fig in ("heatmap.png", "trace.png", "head_distance.png"):
            assert (root / "attention" / model / "figures" / fig).stat().st_size > 1000
    assert (root / "decomposition" / "compare_models.png").exists()
    for model in ("llama-smoke", "qwen3-smoke"):
        depth = root / "depth" / model
        kl = pd.read_parquet(depth / "kl.parquet")
        assert set(kl["lens"]) == {"logit", "tuned"} and len(kl) == 2 * 3  # h[0]..h[2]
        summary = json.loads((depth / "summary.json").read_text())
        assert "claims" in summary
        assert (depth / "tuned_lens").is_dir() and (depth / "figures" / "kl_per_layer.png").exists()
    train = (root / "data" / "countdown" / "train.jsonl").read_text().splitlines()
    test = (root / "data" / "countdown" / "test.jsonl").read_text().splitlines()
    assert len(train) == 500 and len(test) == 24 and not set(train) & set(test)


@pytest.mark.slow
def test_mlflow_runs_nested(smoke_run):
    from mlflow import MlflowClient

    workdir, _ = smoke_run
    client = MlflowClient(f"sqlite:///{workdir / 'results' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reasoning-inside-smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pipeline.kind") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    rules = sorted(r.data.tags["rule"] for r in children)
    assert rules == sorted(["countdown_data", "report_summary", "decomposition_compare"]
                           + 2 * ["evaluate", "provision", "responses", "decomposition",
                                  "attention", "depth", "train", "evaluate_trained"])
    train = [r for r in children if r.data.tags["rule"] == "train"]
    assert {r.data.tags["wc.method"] for r in train} == {"grpo", "bupo"}
    assert all(len(client.get_metric_history(r.info.run_id, "reward_mean")) == 3
               for r in train)
    boundary = json.loads((workdir / "results" / "smoke" / "decomposition" / "qwen3-smoke"
                           / "boundary.json").read_text())
    bupo = next(r for r in train if r.data.tags["wc.method"] == "bupo")
    assert bupo.data.params["bupo_layer"] == str(boundary["boundary_layer"])
    assert len(children) == len(runs) - 1
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["config_hash"] == parents[0].data.tags["config_hash"]
        json.loads(r.data.tags["wildcards"])
    prov = [r for r in children if r.data.tags["rule"] == "provision"]
    assert {r.data.tags["wc.model"] for r in prov} == {"llama-smoke", "qwen3-smoke"}
    assert all("sft_loss" in r.data.metrics for r in prov)
    history = client.get_metric_history(prov[0].info.run_id, "sft_loss")
    assert [m.step for m in history] == sorted(m.step for m in history) and len(history) >= 2
    report = next(r for r in children if r.data.tags["rule"] == "report_summary")
    names = {a.path for a in client.list_artifacts(report.info.run_id, "figures")}
    assert "figures/evaluation.png" in names


@pytest.mark.slow
def test_rerun_does_no_work(smoke_run):
    workdir, _ = smoke_run
    res = _snakemake(workdir, "--configfile", str(ROOT / "config" / "smoke.yaml"), "-n")
    assert res.returncode == 0
    assert "Nothing to be done" in res.stdout + res.stderr


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    cfg = (ROOT / "config" / "smoke.yaml").read_text().replace("hidden_size: 32",
                                                                "hidden_size: big", 1)
    bad.write_text(cfg)
    res = _snakemake(tmp_path, "--configfile", str(bad), timeout=300)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "config error at models.qwen3-smoke.hidden_size: 'big' is not of type 'integer'" in out
    assert not (tmp_path / "results").exists()
