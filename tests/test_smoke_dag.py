"""End to end: the smoke DAG runs with `snakemake` in a temporary directory, its outputs
and MLflow runs are complete, a rerun does no work, and a bad config stops before any job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline import paths

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
    from pipeline.claims import VERDICTS, read_claims

    claims = read_claims(root / "claims" / "claims.csv")
    assert {c.run for c in claims} >= {"llama-smoke", "qwen3-smoke", "qwen3-smoke/bupo/seed0"}
    assert {c.paper for c in claims} >= {"arXiv:2512.19673", "arXiv:2510.13554",
                                         "arXiv:2510.18871"}
    assert all(c.verdict in VERDICTS and c.n >= 0 for c in claims)
    assert len(read_claims(root / "claims" / "claims.parquet")) == len(claims)
    page = (root / "claims" / "claims.html").read_text()
    assert page.count("<tr>") == len(claims) + 2  # a header row per section
    from pipeline.claims.registry import spec_of
    assert all(spec_of(c.claim_id).source == c.source and c.paper_ref for c in claims)
    ids = {c.claim_id for c in claims}
    assert {"rhythm.waad_peak_entropy", "rhythm.receiver_global_cooccur",
            "rhythm.fai_follows_waad", "rl.bupo.ipa_entropy_k_rises.bupo",
            "rl.bupo.feature_refinement.bupo"} <= ids
    assert not any(i.startswith("rl.bupo.ipa_lowers") for i in ids)
    fams = {c.run: c.family for c in claims if c.claim_id == "bupo.entropy_drop"}
    assert fams["qwen3-smoke"] == "qwen" and fams["llama-smoke"] == "llama"
    # every figure a record names exists, and the page links it relative to itself
    figs = {c.figure for c in claims if c.figure}
    assert figs and all((root / f).is_file() for f in figs)
    assert {c.figure for c in claims if c.claim_id == "bupo.llama_small_dh"} == {
        "decomposition/compare_models.png"}
    assert all(f"href='../{f}'" in page for f in figs)
    assert len(page) < 1_500_000  # the report's data-URI iframe stops at 2 MB (base64)
    assert (root / "claims" / "claims.png").stat().st_size > 10_000


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
    # evaluate, decomposition, attention: on 2 base models and 2 trained checkpoints
    assert rules == sorted(["countdown_data", "report_summary", "decomposition_compare",
                            "compare", "claims"]
                           + 2 * ["provision", "responses", "depth", "train"]
                           + 4 * ["evaluate", "decomposition", "attention"])
    for rule in ("evaluate", "decomposition", "attention"):
        jobs = [r.data.tags for r in children if r.data.tags["rule"] == rule]
        assert sorted(t.get("wc.method", "base") for t in jobs) == ["base", "base", "bupo",
                                                                      "grpo"], rule
        assert {t["wc.model"] for t in jobs} == {"llama-smoke", "qwen3-smoke"}, rule
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
    compare = next(r for r in children if r.data.tags["rule"] == "compare")
    figures = {a.path for a in client.list_artifacts(compare.info.run_id, "figures")}
    assert figures == {f"figures/{f}" for f in COMPARE_FIGURES}
    tables = {a.path for a in client.list_artifacts(compare.info.run_id, "tables")}
    assert {"tables/comparison.csv", "tables/differences.csv", "tables/tables.html"} <= tables
    assert "countdown/qwen3-smoke/grpo/avg_2" in compare.data.metrics  # "@" → "_" (tracking._key)
    # the claims: a table artifact, and every measured value a metric of the parent run
    claims = next(r for r in children if r.data.tags["rule"] == "claims")
    assert "tables/claims.csv" in {a.path for a in client.list_artifacts(claims.info.run_id,
                                                                          "tables")}
    parent_claims = [k for k in parents[0].data.metrics if k.startswith("claim.")]
    assert parent_claims and "claim.bupo.entropy_drop/qwen3-smoke" in parent_claims
    assert parents[0].data.metrics["claims.holds"] >= 0


COMPARE_FIGURES = ("accuracy.png", "pass_at_k.png", "training_curves.png",
                   "entropy_per_layer.png", "attention_before_after.png")


@pytest.mark.slow
def test_comparison_outputs(smoke_run):
    """One seed: the within-run intervals over problems, paired differences to GRPO over
    the same problems; the recomputed values are the evaluation summaries'."""
    workdir, _ = smoke_run
    root = workdir / "results" / "smoke"
    out = root / "compare"
    tidy = pd.read_csv(out / "evaluations.csv")
    metrics = {"greedy_accuracy", "avg@2", "pass@1", "pass@2", "mean_response_tokens"}
    assert set(tidy["metric"]) == metrics
    assert len(tidy) == 4 * len(metrics)  # 2 base models + grpo, bupo of qwen3-smoke
    assert set(zip(tidy["model"], tidy["method"], strict=True)) == {
        ("qwen3-smoke", "base"), ("llama-smoke", "base"), ("qwen3-smoke", "grpo"),
        ("qwen3-smoke", "bupo")}
    for _, r in tidy[tidy["metric"] != "mean_response_tokens"].iterrows():
        run = paths.run(r["model"], None if r["method"] == "base" else r["method"], 0)
        summary = json.loads(Path(paths.evaluation(str(root), "summary", run, "countdown",
                                                   0)).read_text())
        assert r["value"] == pytest.approx(summary[r["metric"]])
        assert r["n_problems"] == 24
    comp = pd.read_csv(out / "comparison.csv")
    assert len(comp) == len(tidy) and set(comp["n_seeds"]) == {1}
    assert set(comp["ci_kind"]) <= {"within-run t over problems (1 seed)", "none"}
    diff = pd.read_csv(out / "differences.csv")
    assert set(diff["method"]) == {"base", "bupo"} and set(diff["baseline"]) == {"grpo"}
    assert len(diff) == 2 * len(metrics)
    assert set(diff["ci_kind"]) == {"paired t over 24 problems (1 seed)"}
    ba = pd.read_csv(out / "before_after.csv")
    assert set(ba["analysis"]) == {"decomposition", "attention"}
    assert set(ba["method"]) == {"base", "grpo", "bupo"}
    assert ba[ba["method"] != "base"]["diff"].notna().all()
    hist = pd.read_csv(out / "training.csv")
    assert set(hist["method"]) == {"grpo", "bupo"} and hist["step"].max() == 3
    for fig in COMPARE_FIGURES:
        assert (out / "figures" / fig).stat().st_size > 5000, fig
    base = pd.read_parquet(paths.analysis(str(root), "attention", "tokens", "qwen3-smoke"))
    for method in ("grpo", "bupo"):  # before/after analyses of the trained checkpoints
        run = paths.run("qwen3-smoke", method, 0)
        assert Path(paths.analysis(str(root), "decomposition", "per_layer", run)).exists()
        assert Path(paths.analysis(str(root), "decomposition", "figures", run)).is_dir()
        tokens = pd.read_parquet(paths.analysis(str(root), "attention", "tokens", run))
        assert tokens["token_id"].tolist() == base["token_id"].tolist()  # same responses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "grpo" and summary["num_training_runs"] == 2


REPORT_RESULTS = {*COMPARE_FIGURES, "tables.html", "comparison.csv", "differences.csv",
                  "evaluations.csv", "before_after.csv", "evaluation.png",
                  "compare_models.png", "heatmap.png", "trace.png", "head_distance.png",
                  "entropy_flow_raw.png", "delta_raw.png", "claims.html", "claims.png"}


@pytest.fixture(scope="module")
def html_report(smoke_run):
    workdir, _ = smoke_run
    report = workdir / "report.html"
    res = _snakemake(workdir, "--configfile", str(ROOT / "config" / "smoke.yaml"),
                     "--report", str(report), timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return report


@pytest.mark.slow
def test_html_report(html_report):
    """`snakemake --report` writes one self-contained HTML file with every figure and
    table embedded (data URIs), in its categories."""
    from pipeline.report_check import report_results

    text = html_report.read_text()
    assert report_results(html_report) >= REPORT_RESULTS
    assert text.count("data:image/png") >= len(COMPARE_FIGURES) + 3
    for category in ("Comparison", "Training", "Before/after RL", "Evaluation",
                     "Decomposition", "Attention", "Claims"):
        assert json.dumps(category) in text, category
    # self-contained: no script, stylesheet or image fetched from the network
    assert not re.search(r'<(?:script|link|img)[^>]*(?:src|href)="https?://', text)
    assert "paired over responses" in text  # a caption, rendered


@pytest.mark.slow
@pytest.mark.browser
def test_report_and_mlflow_in_a_browser(smoke_run, html_report, tmp_path):
    """The report and the MLflow UI render in headless chromium (screenshots not blank);
    in the MLflow UI the experiment lists a child run, whose metric chart has a line and
    whose logged figure is shown (the checks in pipeline.report_check.mlflow_checks)."""
    from conftest import require

    from pipeline.report_check import check, find_chromium

    require(find_chromium(), "no chromium (apt-get install chromium)")
    workdir, _ = smoke_run
    index = check(html_report, workdir / "results" / "mlflow.db", tmp_path / "shots",
                  experiment="reasoning-inside-smoke")
    names = {s["name"] for s in index["shots"]}
    assert {"report_home", "report_accuracy", "report_tables", "report_claims",
            "mlflow_experiment", "mlflow_run", "mlflow_metrics", "mlflow_artifact"} <= names
    assert index["ok"], index
    run = index["mlflow"]  # the SFT of a tiny model: a loss over steps and its figure
    assert run["run_name"].startswith("provision[") and run["figure"].endswith(".png")
    checks = {s["name"]: s["check"] for s in index["shots"] if "check" in s}
    assert checks["mlflow_experiment"]["child_listed"]
    assert checks["mlflow_metrics"]["points"] >= 2
    assert checks["mlflow_artifact"]["images"] >= 1


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


@pytest.mark.slow
def test_smoke_dag_with_fsdp2_training(tmp_path):
    """The smoke DAG with rl.distributed fsdp2 on 2 CPU processes per train job: the
    trained models are consolidated, evaluated and analysed like any other."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["rl"].update(distributed="fsdp2", processes=2)
    config["resources"]["train"] = {"threads": 1}
    cfile = tmp_path / "smoke-fsdp2.yaml"
    cfile.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    res = _snakemake(work, "--configfile", str(cfile), "-p")
    assert res.returncode == 0, res.stderr[-4000:]
    assert "PIPELINE_TRAIN_CPU=1 accelerate launch --num_processes 2" in res.stdout + res.stderr
    root = work / "results" / "smoke"
    runs = root / "rl" / "qwen3-smoke"
    for method in ("grpo", "bupo"):
        run = runs / method / "seed0"
        assert (run / "model" / "model.safetensors").exists()
        hist = json.loads((run / "history.json").read_text())
        assert len(hist) == 3 and all(h["sync_time"] >= 0 for h in hist)
        shards = sorted(p.name for p in (run / "checkpoint").glob("shards-step*"))
        assert shards == ["shards-step3"]
    table = pd.read_csv(root / "summary" / "evaluation.csv")
    assert {"qwen3-smoke+bupo", "qwen3-smoke+grpo"} <= set(table["model"])
    for method in ("grpo", "bupo"):
        assert Path(paths.analysis(str(root), "decomposition",
                                   run_id=f"qwen3-smoke/{method}/seed0")).exists()
