"""RL / evaluation claims (pipeline.claims.rl) on hand-built comparison tables whose
answer is known, and the claims page and figure (pipeline.claims.report)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline import paths
from pipeline.claims.registry import annotate
from pipeline.claims.report import claims_html, forest_figure
from pipeline.claims.rl import avg_vs_pass, credit_order, ipa_claims, method_vs_grpo, rl_claims


def _write(root, what, rows):
    path = paths.compare(str(root), what)
    import os

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def _write_evaluations(root, vals):
    """compare/evaluations.csv: avg@8 per method (key) and seed (list index), countdown."""
    _write(root, "evaluations", [
        dict(model="m", method=method, seed=seed, benchmark="countdown", task="countdown",
             metric="avg@8", value=v, ci_lo=0, ci_hi=1, n_problems=10)
        for method, vs in vals.items() for seed, v in enumerate(vs)])


def _diff_row(method, metric, diff, lo, hi, n=3, baseline="grpo"):
    return dict(model="m", benchmark="countdown", metric=metric, method=method,
                baseline=baseline, n_pairs=n, diff=diff, ci_lo=lo, ci_hi=hi,
                ci_kind=f"paired t over {n} seeds")


def test_method_vs_grpo_per_paper(tmp_path):
    """Each method − GRPO goes to the paper that claims it (issue 24): BuPO > GRPO (BuPO
    paper), rhythm credit > GRPO and random ≈ GRPO (rhythm paper); RLOO and the entropy
    control are descriptive rows, not claims that they beat GRPO."""
    _write(tmp_path, "differences", [
        _diff_row("bupo", "avg@8", 0.05, 0.01, 0.09),           # holds
        _diff_row("rloo", "avg@8", -0.05, -0.09, -0.01),        # descriptive
        _diff_row("rhythm_coupled", "avg@8", 0.01, -0.03, 0.05),  # inconclusive
        _diff_row("credit_random", "avg@8", 0.005, -0.01, 0.02),  # ≈ GRPO: holds
        _diff_row("credit_entropy", "avg@8", 0.04, 0.02, 0.06),   # descriptive
        _diff_row("bupo", "pass@8", 0.5, 0.4, 0.6),             # not the headline metric
        _diff_row("base", "avg@8", -0.1, -0.2, 0.0),            # not a method
    ])
    recs = {r.claim_id: r for r in annotate(method_vs_grpo(tmp_path))}
    assert set(recs) == {"rl.bupo_vs_grpo.countdown", "rl.vs_grpo.rloo.countdown",
                         "rl.rhythm.vs_grpo.rhythm_coupled.countdown",
                         "rl.credit.random_vs_grpo.countdown",
                         "rl.vs_grpo.credit_entropy.countdown"}
    assert recs["rl.bupo_vs_grpo.countdown"].verdict == "holds"
    assert recs["rl.bupo_vs_grpo.countdown"].paper == "arXiv:2512.19673"
    for m in ("rloo", "credit_entropy"):
        r = recs[f"rl.vs_grpo.{m}.countdown"]
        assert r.verdict == "descriptive" and r.source == "extension"
        assert math.isfinite(r.value) and r.ci_low < r.ci_high
    inc = recs["rl.rhythm.vs_grpo.rhythm_coupled.countdown"]
    assert inc.verdict == "inconclusive" and inc.n_needed > 3
    assert (inc.value, inc.ci_low, inc.ci_high, inc.ci_kind) == (0.01, -0.03, 0.05, "t")
    assert inc.paper == "arXiv:2510.13554" and "63.1" in inc.paper_value
    rnd = recs["rl.credit.random_vs_grpo.countdown"]
    assert rnd.verdict == "holds" and rnd.criterion.startswith("≈ 0")
    assert "37.1 vs 37.1" in rnd.paper_value


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


def _training_rows(metric, per_seed, method="bupo"):
    rows = []
    for seed, (first, last) in per_seed.items():
        for step, phase, v in ((1, "ipa", first), (2, "ipa", last), (3, "grpo", -9.0)):
            rows.append(dict(model="m", method=method, seed=seed, step=step, phase=phase,
                             metric=metric, value=v))
    return rows


def test_ipa_claims_t_interval_matches_scipy(tmp_path):
    """BuPO's IPA phase in the paper's direction (Fig. 4, 5, 7): H(π^k) rises, ΔH of π^k
    falls, cos(h[k], h[L]) rises, H(π_θ) is above GRPO's over the IPA steps."""
    changes = {0: 0.3, 1: 0.35, 2: 0.4}
    rows = _training_rows("entropy_k", {s: (2.0, 2.0 + c) for s, c in changes.items()})
    rows += _training_rows("delta_k", {s: (0.0, -0.2 - 0.01 * s) for s in changes})
    rows += _training_rows("cos_kL", {s: (0.5, 0.5 - 0.01 * s) for s in changes})  # 0 − −
    rows += _training_rows("entropy", {s: (1.0, 1.2) for s in changes})
    rows += _training_rows("entropy", {s: (0.9, 1.0 + 0.01 * s) for s in changes}, "grpo")
    _write(tmp_path, "training", rows)
    recs = {r.claim_id: r for r in ipa_claims(tmp_path)}
    rec = recs["rl.bupo.ipa_entropy_k_rises.bupo"]
    x = np.array(list(changes.values()))
    half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
    assert rec.value == pytest.approx(x.mean())
    assert (rec.ci_low, rec.ci_high) == pytest.approx((x.mean() - half, x.mean() + half))
    assert rec.verdict == "holds" and rec.n == 3
    assert recs["rl.bupo.ipa_delta_k_falls.bupo"].verdict == "holds"
    ref = recs["rl.bupo.feature_refinement.bupo"]
    assert ref.verdict == "inconclusive" and ref.value == pytest.approx(-0.01)
    vs = recs["rl.bupo.ipa_entropy_vs_grpo.bupo"]
    # per seed: mean over the IPA steps 1, 2: bupo 1.1, grpo (0.9 + 1.0 + 0.01 s) / 2
    d = np.array([1.1 - (1.9 + 0.01 * s) / 2 for s in changes])
    assert vs.value == pytest.approx(d.mean()) and vs.verdict == "holds" and vs.n == 3
    assert "rl.bupo.ipa_lowers_entropy_k.bupo" not in recs  # the wrong direction is gone


def test_bupo_vs_rivals_and_control_order(tmp_path):
    _write_evaluations(tmp_path, {
        "bupo": [0.5, 0.6, 0.7], "rloo": [0.4, 0.5, 0.6], "reinforce_pp": [0.5, 0.62, 0.7],
        "credit_entropy": [0.3, 0.4, 0.5], "credit_random": [0.2, 0.31, 0.39]})
    recs = {r.claim_id: r for r in credit_order(tmp_path)}
    assert recs["rl.bupo_vs.rloo.countdown"].verdict == "holds"
    assert recs["rl.bupo_vs.reinforce_pp.countdown"].verdict == "inconclusive"
    ent = recs["rl.credit.entropy_vs_random.countdown"]
    assert ent.verdict == "holds" and ent.value == pytest.approx(0.1)


def test_credit_order_paired_by_seed(tmp_path):
    _write_evaluations(tmp_path, {"rhythm_coupled": [0.5, 0.6, 0.7],
                                  "rhythm_local": [0.4, 0.5, 0.6],
                                  "credit_random": [0.5, 0.61, 0.69]})
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
    recs = annotate(rl_claims(tmp_path))
    page = claims_html(recs)
    assert page.count("<tr>") == len(recs) + 2  # a header row per section
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
