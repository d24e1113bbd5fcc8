"""RL / evaluation claims (pipeline.claims.rl) on hand-built comparison tables whose
answer is known, and the claims page and figure (pipeline.claims.report)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline import paths
from pipeline.claims.report import claims_html, forest_figure
from pipeline.claims.rl import avg_vs_pass, credit_order, ipa_entropy, method_vs_grpo, rl_claims


def _write(root, what, rows):
    path = paths.compare(str(root), what)
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def _diff_row(method, metric, diff, lo, hi, n=3, baseline="grpo"):
    return dict(model="m", benchmark="countdown", metric=metric, method=method,
                baseline=baseline, n_pairs=n, diff=diff, ci_lo=lo, ci_hi=hi,
                ci_kind=f"paired t over {n} seeds")


def test_method_vs_grpo_verdicts(tmp_path):
    _write(tmp_path, "differences", [
        _diff_row("bupo", "avg@8", 0.05, 0.01, 0.09),           # holds
        _diff_row("rloo", "avg@8", -0.05, -0.09, -0.01),        # fails
        _diff_row("rhythm_coupled", "avg@8", 0.01, -0.03, 0.05),  # inconclusive
        _diff_row("bupo", "pass@8", 0.5, 0.4, 0.6),             # not the headline metric
        _diff_row("base", "avg@8", -0.1, -0.2, 0.0),            # not a method
    ])
    recs = {r.claim_id: r for r in method_vs_grpo(tmp_path)}
    assert set(recs) == {"rl.vs_grpo.bupo.countdown", "rl.vs_grpo.rloo.countdown",
                         "rl.vs_grpo.rhythm_coupled.countdown"}
    assert recs["rl.vs_grpo.bupo.countdown"].verdict == "holds"
    assert recs["rl.vs_grpo.rloo.countdown"].verdict == "fails"
    inc = recs["rl.vs_grpo.rhythm_coupled.countdown"]
    assert inc.verdict == "inconclusive" and inc.n_needed > 3
    assert (inc.value, inc.ci_low, inc.ci_high, inc.ci_kind) == (0.01, -0.03, 0.05, "t")
    assert recs["rl.vs_grpo.bupo.countdown"].paper == "arXiv:2512.19673"


def test_avg_vs_pass_signs(tmp_path):
    # diff = base − grpo: GRPO raises avg@8 by 0.1, lowers pass@8 by 0.05
    _write(tmp_path, "differences", [
        _diff_row("base", "avg@8", -0.1, -0.15, -0.05),
        _diff_row("base", "pass@1", -0.1, -0.15, -0.05),
        _diff_row("base", "pass@8", 0.05, 0.01, 0.09),
    ])
    recs = {r.claim_id: r for r in avg_vs_pass(tmp_path)}
    avg = recs["rl.raises_avg.countdown"]
    assert avg.verdict == "holds" and avg.value == pytest.approx(0.1)
    assert (avg.ci_low, avg.ci_high) == pytest.approx((0.05, 0.15))
    p = recs["rl.not_pass_at_kmax.countdown"]
    assert p.metric.startswith("pass@8") and p.verdict == "holds"
    assert p.value == pytest.approx(-0.05)
    # GRPO raising pass@8 by 0.1 ± 0.03 fails "does not raise"
    _write(tmp_path, "differences", [_diff_row("base", "pass@1", 0, -1, 1),
                                      _diff_row("base", "pass@8", -0.1, -0.13, -0.07)])
    assert {r.claim_id: r.verdict for r in avg_vs_pass(tmp_path)} == {
        "rl.not_pass_at_kmax.countdown": "fails"}


def test_ipa_entropy_t_interval_matches_scipy(tmp_path):
    rows = []
    changes = {0: -0.3, 1: -0.35, 2: -0.4}
    for seed, ch in changes.items():
        for step, phase, v in ((1, "ipa", 2.0), (2, "ipa", 2.0 + ch), (3, "grpo", 1.0)):
            rows.append(dict(model="m", method="bupo", seed=seed, step=step, phase=phase,
                             metric="entropy_k", value=v))
    _write(tmp_path, "training", rows)
    (rec,) = ipa_entropy(tmp_path)
    x = np.array(list(changes.values()))
    half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
    assert rec.value == pytest.approx(x.mean())
    assert (rec.ci_low, rec.ci_high) == pytest.approx((x.mean() - half, x.mean() + half))
    assert rec.verdict == "holds" and rec.n == 3


def test_credit_order_paired_by_seed(tmp_path):
    rows = []
    vals = {"rhythm_coupled": [0.5, 0.6, 0.7], "rhythm_local": [0.4, 0.5, 0.6],
            "credit_random": [0.5, 0.61, 0.69]}
    for method, vs in vals.items():
        for seed, v in enumerate(vs):
            rows.append(dict(model="m", method=method, seed=seed, benchmark="countdown",
                             task="countdown", metric="avg@8", value=v, ci_lo=0, ci_hi=1,
                             n_problems=10))
    _write(tmp_path, "evaluations", rows)
    recs = {r.claim_id: r for r in credit_order(tmp_path)}
    local = recs["rl.credit.coupled_vs_rhythm_local.countdown"]
    assert local.verdict == "holds" and local.value == pytest.approx(0.1)
    rand = recs["rl.credit.coupled_vs_credit_random.countdown"]
    assert rand.verdict == "inconclusive"  # differences 0, −0.01, +0.01
    glob = recs["rl.credit.coupled_vs_rhythm_global.countdown"]  # not trained
    assert glob.verdict == "not measurable" and glob.n == 0
    assert glob.reason == "rhythm_global not trained (add to rl.methods)"
    # a benchmark with the base model only (no RL) has no credit records; one without
    # rhythm_coupled names it
    _write(tmp_path, "evaluations", [
        dict(model="m", method=m, seed=0, benchmark=b, task="t", metric="avg@8", value=0.1,
             ci_lo=0, ci_hi=1, n_problems=10)
        for m, b in (("base", "mmlu"), ("base", "countdown"), ("grpo", "countdown"))])
    recs = credit_order(tmp_path)
    assert {r.claim_id.rsplit(".", 1)[1] for r in recs} == {"countdown"}
    assert len(recs) == 4 and all(r.verdict == "not measurable" for r in recs)
    assert recs[0].reason.startswith("rhythm_coupled and ")


def test_no_comparison_no_records(tmp_path):
    assert rl_claims(tmp_path) == []


def test_claims_page_and_figure(tmp_path):
    _write(tmp_path, "differences", [_diff_row("bupo", "avg@8", 0.05, 0.01, 0.09),
                                      _diff_row("base", "avg@8", -0.1, -0.15, -0.05),
                                      _diff_row("base", "pass@8", 0.05, 0.01, 0.09),
                                      _diff_row("base", "pass@1", 0, -1, 1)])
    recs = rl_claims(tmp_path)
    page = claims_html(recs)
    assert page.count("<tr>") == len(recs) + 1
    assert "holds: 3" in page and "arXiv:2504.13837" in page
    fig = forest_figure(recs)
    assert len(fig.axes) == 2  # one panel per paper
    # each figure is a link relative to claims/claims.html, labelled with its path
    import dataclasses

    names = ["compare/figures/accuracy.png", None]
    recs = [dataclasses.replace(r, figure=names[i % 2]) for i, r in enumerate(recs)]
    page = claims_html(recs)
    assert page.count("<a class='f' href='../compare/figures/accuracy.png'>"
                      "compare/figures/accuracy.png</a>") == sum(r.figure is not None
                                                                 for r in recs)
