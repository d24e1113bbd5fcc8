"""Comparison stage: confidence intervals on known inputs, method − GRPO differences by
hand on a tiny fixture, table shapes, the manifest the rule depends on, and a run of the
stage on fixture files."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import pipeline.workflow as pw
from pipeline import comparison as cmp
from pipeline import config as cfg
from pipeline import paths
from pipeline.evaluation.run import summarize

# --------------------------------------------------------------------------- intervals
T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975, 2 df}


def test_t_interval_known_values():
    # [0.1, 0.2, 0.3]: mean 0.2, s = 0.1; with 2 degrees of freedom the t quantile has
    # the closed form (2p − 1) / sqrt(2p(1 − p)), p = 0.975 → 4.3026527...
    mean, lo, hi = cmp.t_interval([0.1, 0.2, 0.3])
    half = T2 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.2)
    assert (lo, hi) == pytest.approx((0.2 - half, 0.2 + half), abs=1e-12)
    assert (lo, hi) == pytest.approx(stats.t.interval(0.95, 2, loc=0.2, scale=0.1 / math.sqrt(3)))


def test_t_interval_edges():
    assert cmp.t_interval([0.7])[0] == 0.7 and all(map(math.isnan, cmp.t_interval([0.7])[1:]))
    assert all(map(math.isnan, cmp.t_interval([])))
    assert cmp.t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert cmp.t_interval([1.0, np.nan, 3.0])[0] == 2.0  # NaN skipped


def test_welch_interval_matches_scipy():
    a, b = [0.52, 0.55, 0.61, 0.58], [0.41, 0.47, 0.45]
    diff, lo, hi = cmp.welch_interval(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert math.isnan(cmp.welch_interval([1.0], [0.0, 1.0])[1])


# --------------------------------------------------------------------------- fixture
def _runs(rows):
    return pd.DataFrame(rows, columns=["model", "benchmark", "metric", "method", "seed",
                                       "value", "ci_lo", "ci_hi"])


KEYS = ["model", "benchmark", "metric"]


def test_over_seeds_and_differences_by_hand():
    runs = _runs([
        ("m", "cd", "avg@8", "grpo", 0, 0.50, 0.4, 0.6),
        ("m", "cd", "avg@8", "grpo", 1, 0.40, 0.3, 0.5),
        ("m", "cd", "avg@8", "grpo", 2, 0.45, 0.35, 0.55),
        ("m", "cd", "avg@8", "bupo", 0, 0.60, 0.5, 0.7),
        ("m", "cd", "avg@8", "bupo", 1, 0.50, 0.4, 0.6),
        ("m", "cd", "avg@8", "bupo", 2, 0.58, 0.48, 0.68),
    ])
    agg = cmp.over_seeds(runs, KEYS)
    assert agg.shape == (2, len(KEYS) + 8)
    bupo = agg[agg["method"] == "bupo"].iloc[0]
    assert bupo["n_seeds"] == 3 and bupo["seeds"] == "0 1 2"
    assert bupo["mean"] == pytest.approx((0.60 + 0.50 + 0.58) / 3)
    assert bupo["ci_kind"] == "t over 3 seeds"
    # paired by seed: differences 0.10, 0.10, 0.13 → mean 0.11, s = 0.017320508
    diff = cmp.vs_baseline(runs, pd.DataFrame(columns=[*KEYS, "method", "seed", "unit",
                                                       "value"]), KEYS, "grpo")
    assert len(diff) == 1
    d = diff.iloc[0]
    assert d["method"] == "bupo" and d["baseline"] == "grpo" and d["n_pairs"] == 3
    assert d["diff"] == pytest.approx(0.11)
    half = T2 * 0.017320508075688773 / math.sqrt(3)
    assert (d["ci_lo"], d["ci_hi"]) == pytest.approx((0.11 - half, 0.11 + half))
    assert d["ci_kind"] == "paired t over 3 seeds"


def test_single_seed_uses_within_run_and_paired_problems():
    runs = _runs([("m", "cd", "greedy_accuracy", "grpo", 0, 0.5, 0.1, 0.9),
                  ("m", "cd", "greedy_accuracy", "bupo", 0, 0.75, 0.2, 1.3)])
    agg = cmp.over_seeds(runs, KEYS).set_index("method")
    assert agg.loc["bupo", "mean"] == 0.75
    assert (agg.loc["bupo", "ci_lo"], agg.loc["bupo", "ci_hi"]) == (0.2, 1.3)
    assert agg.loc["bupo", "ci_kind"] == "within-run t over problems (1 seed)"
    assert math.isnan(agg.loc["bupo", "sd"])
    # per-problem correctness: grpo 1,0,1,0 ; bupo 1,1,1,0 → differences 0,1,0,0
    units = pd.DataFrame({"model": "m", "benchmark": "cd", "metric": "greedy_accuracy",
                          "method": ["grpo"] * 4 + ["bupo"] * 4, "seed": 0,
                          "unit": ["a", "b", "c", "d"] * 2,
                          "value": [1, 0, 1, 0, 1, 1, 1, 0]}).astype({"value": float})
    d = cmp.vs_baseline(runs, units, KEYS, "grpo").iloc[0]
    ref = cmp.t_interval([0, 1, 0, 0])
    assert d["diff"] == pytest.approx(0.25)
    assert (d["ci_lo"], d["ci_hi"]) == pytest.approx(ref[1:])
    assert d["ci_kind"] == "paired t over 4 problems (1 seed)"


def test_unmatched_seeds_welch_and_shared_baseline():
    runs = _runs([("m", "cd", "x", "grpo", 0, 0.1, 0, 0), ("m", "cd", "x", "grpo", 1, 0.3, 0, 0),
                  ("m", "cd", "x", "rloo", 2, 0.4, 0, 0), ("m", "cd", "x", "rloo", 3, 0.6, 0, 0)])
    empty = pd.DataFrame(columns=[*KEYS, "method", "seed", "unit", "value"])
    d = cmp.vs_baseline(runs, empty, KEYS, "grpo").iloc[0]
    assert d["diff"] == pytest.approx(0.3) and d["ci_kind"].startswith("Welch")
    assert d["ci_lo"] == pytest.approx(cmp.welch_interval([0.4, 0.6], [0.1, 0.3])[1])
    # a shared baseline run (seed -1, the base model's analyses) pairs with every seed
    runs = _runs([("m", "an", "waad", "base", -1, 5.0, 0, 0),
                  ("m", "an", "waad", "grpo", 0, 5.5, 0, 0),
                  ("m", "an", "waad", "grpo", 1, 6.5, 0, 0)])
    d = cmp.vs_baseline(runs, empty, KEYS, "base").iloc[0]
    assert d["n_pairs"] == 2 and d["diff"] == pytest.approx(1.0)
    assert d["ci_kind"] == "paired t over 2 seeds"


def test_no_baseline_gives_no_rows():
    runs = _runs([("m", "cd", "x", "base", 0, 0.1, 0, 0)])
    empty = pd.DataFrame(columns=[*KEYS, "method", "seed", "unit", "value"])
    assert cmp.vs_baseline(runs, empty, KEYS, "grpo").empty


# --------------------------------------------------------------------------- units
def _samples(correct_sample, correct_greedy, n):
    rows = []
    for p, c in enumerate(correct_greedy):
        rows.append({"mode": "greedy", "problem": p, "item_id": str(p), "sample": 0,
                     "response": "", "num_tokens": 5, "finished": True, "correct": bool(c)})
    for p, cs in enumerate(correct_sample):
        assert len(cs) == n
        for i, c in enumerate(cs):
            rows.append({"mode": "sample", "problem": p, "item_id": str(p), "sample": i,
                         "response": "", "num_tokens": 10 + i, "finished": True,
                         "correct": bool(c)})
    return pd.DataFrame(rows)


def test_eval_units_reproduce_the_summary():
    table = _samples([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]], [1, 0, 1], 4)
    units = cmp.eval_units(table)
    summary = summarize(table, [1, 2, 4])
    means = units.groupby("metric")["value"].mean()
    for m in ("greedy_accuracy", "avg@4", "pass@1", "pass@2", "pass@4"):
        assert means[m] == pytest.approx(summary[m], abs=1e-12), m
    assert set(units["metric"]) == {"greedy_accuracy", "avg@4", "pass@1", "pass@2", "pass@3",
                                    "pass@4", "mean_response_tokens"}
    # pass@2 of problem 0 (n=4, c=2): 1 − C(2,2)/C(4,2) = 5/6
    p0 = units[(units["metric"] == "pass@2") & (units["unit"] == "0#0")]["value"].item()
    assert p0 == pytest.approx(5 / 6)
    cmp._check_summary(units, summary, "fixture")
    with pytest.raises(ValueError, match="recomputed"):
        cmp._check_summary(units, {**summary, "avg@4": 0.9}, "fixture")


def test_eval_units_multiple_choice():
    table = pd.DataFrame({"item_id": ["q1", "q2", "q3"], "correct": [True, False, True]})
    units = cmp.eval_units(table)
    assert list(units["metric"].unique()) == ["accuracy"]
    assert units["value"].mean() == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- manifest
SMOKE_LIKE = {
    "experiment": "x", "seeds": [0, 1],
    "models": {"a": {"source": "builtin", "arch": "qwen3"},
               "b": {"source": "builtin", "arch": "llama"}},
    "rl": {"models": ["a"], "methods": ["grpo", "bupo"]},
}


def test_manifest_lists_every_run():
    config = cfg.validate(copy.deepcopy(SMOKE_LIKE))
    spec = pw.compare_spec(config)
    assert spec["baseline"] == "grpo" and spec["before_after"] == ["decomposition", "attention"]
    man = cmp.manifest(spec, "R")
    # base: a (trained) × 2 seeds + b (not trained: first seed only); trained a × 2 × 2
    assert len(man["evaluations"]) == 2 + 1 + 2 * 2
    assert len(man["histories"]) == 4
    assert len(man["analyses"]) == 2 * (1 + 4)  # per analysis: base a + 4 trained runs
    inputs = pw.compare_inputs(config, "R")
    assert "R/eval/a/countdown/seed1/summary.json" in inputs["evals"]
    assert "R/eval/b/countdown/seed0/summary.json" in inputs["evals"]
    assert "R/eval/b/countdown/seed1/summary.json" not in inputs["evals"]
    assert "R/eval/a/bupo/seed1/countdown/seed1/samples.parquet" in inputs["samples"]
    assert "R/rl/a/grpo/seed0/history.json" in inputs["histories"]
    assert "R/decomposition/a/entropies.parquet" in inputs["analyses"]
    assert "R/attention/a/bupo/seed0/tokens.parquet" in inputs["analyses"]
    # the DAG makes exactly these files: base and trained evaluations, the analyses
    targets = set(pw.evaluation_targets(config, "R") + pw.rl_evaluation_targets(config, "R"))
    assert set(inputs["evals"]) == targets
    # no RL jobs: only the base evaluations
    none = cfg.validate({**copy.deepcopy(SMOKE_LIKE), "rl": {"models": ["a"], "methods": []}})
    man = cmp.manifest(pw.compare_spec(none), "R")
    assert len(man["evaluations"]) == 2 and not man["histories"] and not man["analyses"]


def test_runs_and_their_paths():
    """A run is a base model or a trained checkpoint; the base models keep their paths."""
    assert paths.run("m") == "m"
    assert paths.run("m", "bupo+rhythm_coupled", 2) == "m/bupo+rhythm_coupled/seed2"
    assert paths.parse_run("m/grpo/seed2") == ("m", "grpo", 2)
    assert paths.parse_run("m") == ("m", None, None)
    assert paths.run_name("m/grpo/seed2") == "m+grpo" and paths.run_name("m") == "m"
    rx = re.compile(paths.run_constraint(pw.alternatives(["m", "m.2"]), r"[A-Za-z0-9_+]+"))
    assert all(rx.fullmatch(r) for r in ("m", "m.2", "m/grpo/seed2", "m.2/bupo+x/seed10"))
    assert not any(rx.fullmatch(r) for r in ("mx2", "x/grpo/seed1", "m/grpo", "m/a/b/seed1"))
    assert paths.evaluation("R", "table", "m", "countdown", 0) == \
        "R/eval/m/countdown/seed0/samples.parquet"
    assert paths.evaluation("R") == "R/eval/{run}/{benchmark}/seed{seed}/summary.json"
    assert paths.analysis("R", "decomposition", "per_layer", "m") == \
        "R/decomposition/m/per_layer.csv"
    assert paths.run_model_dir("R", "m") == "R/models/m/model"
    assert paths.run_model_dir("R", "m/grpo/seed2") == "R/rl/m/grpo/seed2/model"
    assert paths.log("R", "compare") == "R/logs/compare.log"


# --------------------------------------------------------------------------- the stage
def _write_eval(root, run, name, seed, correct_sample, correct_greedy):
    d = Path(paths.evaluation_dir(str(root), run, "countdown", seed))
    d.mkdir(parents=True)
    table = _samples(correct_sample, correct_greedy, len(correct_sample[0]))
    table.to_parquet(d / "samples.parquet")
    summary = {"model": name, "benchmark": "countdown", "task": "countdown", "seed": seed,
               **summarize(table, [1, 2])}
    (d / "summary.json").write_text(json.dumps(summary))


def test_run_comparison_on_fixture_files(tmp_path):
    root = tmp_path / "R"
    rng = np.random.default_rng(0)
    spec = {"benchmarks": {"countdown": ["a"]}, "seeds": [0, 1],
            "rl": {"models": ["a"], "methods": ["grpo", "bupo"], "evaluate": ["countdown"]},
            "baseline": "grpo", "before_after": ["attention"]}
    for s in (0, 1):
        _write_eval(root, "a", "a", s,
                    rng.integers(0, 2, (6, 2)).tolist(), rng.integers(0, 2, 6).tolist())
        for meth in ("grpo", "bupo"):
            _write_eval(root, paths.run("a", meth, s), f"a+{meth}", s,
                        rng.integers(0, 2, (6, 2)).tolist(), rng.integers(0, 2, 6).tolist())
            history = Path(paths.rl(str(root), "history", "a", meth, s))
            history.parent.mkdir(parents=True)
            history.write_text(json.dumps([
                {"step": t, "reward_mean": 0.1 * t, "entropy": 1.0 - 0.1 * t,
                 "response_length": 10 + t} for t in (1, 2, 3)]))
    tokens = lambda shift: pd.DataFrame({  # noqa: E731
        "sample": [0, 0, 1, 1, 2, 2], "waad": np.arange(6.0) + shift, "fai": 0.01,
        "dominated": [True, False] * 3, "entropy": 2.0 + shift})
    for run, shift in [("a", 0), *((paths.run("a", m, s), 0.5 + s)
                                    for m in ("grpo", "bupo") for s in (0, 1))]:
        table = Path(paths.analysis(str(root), "attention", "tokens", run))
        table.parent.mkdir(parents=True)
        tokens(shift).to_parquet(table)
    out = tmp_path / "out"
    summary = cmp.run_comparison(spec, root, out)
    for name in cmp.OUTPUTS.values():
        assert (out / name).exists(), name
    tidy = pd.read_csv(out / "evaluations.csv")
    # 3 methods × 2 seeds × (greedy, avg@2, pass@1, pass@2, mean_response_tokens)
    assert tidy.shape == (3 * 2 * 5, 10)
    comp = pd.read_csv(out / "comparison.csv")
    assert len(comp) == 3 * 5 and set(comp["ci_kind"]) == {"t over 2 seeds"}
    diff = pd.read_csv(out / "differences.csv")
    assert set(diff["method"]) == {"base", "bupo"} and len(diff) == 2 * 5
    # by hand: bupo − grpo of avg@2, paired by seed
    t = tidy[tidy["metric"] == "avg@2"].set_index(["method", "seed"])["value"]
    per_seed = [t["bupo", s] - t["grpo", s] for s in (0, 1)]
    row = diff[(diff["method"] == "bupo") & (diff["metric"] == "avg@2")].iloc[0]
    assert row["diff"] == pytest.approx(np.mean(per_seed))
    assert (row["ci_lo"], row["ci_hi"]) == pytest.approx(cmp.t_interval(per_seed)[1:])
    ba = pd.read_csv(out / "before_after.csv")
    waad = ba[(ba["metric"] == "waad") & (ba["method"] == "grpo")].iloc[0]
    assert waad["diff"] == pytest.approx(1.0)  # shifts 0.5 and 1.5 over the base
    curves = pd.read_csv(out / "pass_at_k.csv")
    assert set(curves["metric"]) == {"pass@1", "pass@2"}
    hist = pd.read_csv(out / "training.csv")
    assert len(hist) == 2 * 2 * 3 * 3
    assert summary["headline"][0]["metric"] == "avg@2"
    assert "bupo" in (out / "tables.html").read_text()
