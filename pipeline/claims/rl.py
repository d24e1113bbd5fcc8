"""RL and evaluation claims (docs/methods.md §9.9) from the comparison stage's tables
(``compare/differences.csv``, ``compare/evaluations.csv``, ``compare/training.csv``):
each method against GRPO, avg@k vs pass@k after RL, BuPO's IPA phase and the credit
variants' order. Intervals are t-intervals over seeds (paired by seed); where the
comparison stage wrote the difference and its interval, they are taken as written."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.claims.common import PAPER_BUPO, PAPER_RHYTHM, figure, rel, unjudged
from pipeline.claims.record import ClaimRecord
from pipeline.claims.registry import PAPER_RL
from pipeline.claims.stats import Interval, t_quantile
from pipeline.claims.verdict import Between, Greater, Less, make_record
from pipeline.comparison import headline_metric
from pipeline.comparison.stats import BASE

CREDIT_RIVALS = ("rhythm_local", "rhythm_global", "credit_random", "credit_entropy")
PASS_MARGIN = 0.02  # "RL does not raise pass@k at large k": GRPO − base < +2 points


def _table(root: str | Path, what: str) -> pd.DataFrame | None:
    path = Path(paths.compare(str(root), what))
    return pd.read_csv(path) if path.is_file() else None


def _fig(root: str | Path, what: str) -> str | None:
    return figure(root, rel(root, paths.compare(str(root), what)))


def _row_interval(row: pd.Series) -> Interval:
    """The comparison stage's paired-t difference as an :class:`Interval` (its standard
    error recovered from the half-width, for §9.4's n_needed)."""
    n = int(row["n_pairs"])
    lo, hi, diff = float(row["ci_lo"]), float(row["ci_hi"]), float(row["diff"])
    se = (hi - lo) / (2 * t_quantile(0.95, n - 1)) if n >= 2 and math.isfinite(hi - lo) \
        else math.nan
    return Interval(diff, lo, hi, n, "t", se)


def _neg(iv: Interval) -> Interval:
    return Interval(-iv.value, -iv.high, -iv.low, iv.n, iv.kind, iv.se, iv.conf)


RHYTHM_VS_GRPO = {"rhythm_local": "Countdown 59.9 vs 52.6 (+7.3)",
                  "rhythm_global": "Countdown 60.4 vs 52.6 (+7.8)",
                  "rhythm_coupled": "Countdown 63.1 vs 52.6 (+10.5)"}
RANDOM_TOL = 0.03  # "random ≈ GRPO": |Δ| ≤ 3 points (paper: 37.1 vs 37.1; Countdown +2.4)


def method_vs_grpo(root: str | Path) -> list[ClaimRecord]:
    """Each method − GRPO on a benchmark's headline metric, paired by seed, under the claim
    of the paper that makes it (§9.9): ``rl.bupo_vs_grpo`` (BuPO > GRPO),
    ``rl.rhythm.vs_grpo.<rhythm_*>`` (rhythm credit > GRPO), ``rl.credit.random_vs_grpo``
    (the random control ≈ GRPO, ±3 points); every other method (RLOO, REINFORCE++, the
    entropy control, combinations) is a ``descriptive`` ``rl.vs_grpo.<method>`` row."""
    diff = _table(root, "differences")
    if diff is None:
        return []
    out = []
    fig = _fig(root, "accuracy_fig")
    for (model, bench), g in diff[diff["baseline"] == "grpo"].groupby(["model", "benchmark"]):
        metric = headline_metric(list(g["metric"].unique()))
        for _, row in g[(g["metric"] == metric) & (g["method"] != "base")].iterrows():
            method = str(row["method"])
            iv = _row_interval(row)
            kw = dict(model=model, run=model, split=f"{bench} (seeds)",
                      metric=f"{metric}({method}) − {metric}(grpo)", figure=fig)
            if method == "bupo":
                out.append(make_record(claim_id=f"rl.bupo_vs_grpo.{bench}", paper=PAPER_BUPO,
                                       claim=f"BuPO beats GRPO on {bench}",
                                       criterion=Greater(0.0), interval=iv, **kw))
            elif method in RHYTHM_VS_GRPO:
                out.append(make_record(
                    claim_id=f"rl.rhythm.vs_grpo.{method}.{bench}", paper=PAPER_RHYTHM,
                    claim=f"{method} credit beats GRPO on {bench}", criterion=Greater(0.0),
                    interval=iv, **kw))
                out[-1] = replace(out[-1], paper_value=RHYTHM_VS_GRPO[method])
            elif method == "credit_random":
                out.append(make_record(
                    claim_id=f"rl.credit.random_vs_grpo.{bench}", paper=PAPER_RHYTHM,
                    claim=f"random-token credit (a control) is no better than GRPO on {bench}",
                    criterion=Between.near(0.0, RANDOM_TOL), interval=iv, **kw))
            else:
                out.append(unjudged(
                    claim_id=f"rl.vs_grpo.{method}.{bench}", paper="(project)",
                    claim=f"{method} − GRPO on {bench} (no paper claim against GRPO)",
                    interval=iv, criterion="none (descriptive)",
                    reason="paired t over seeds", **kw))
    return out


def avg_vs_pass(root: str | Path) -> list[ClaimRecord]:
    """``rl.raises_avg`` (GRPO − base on avg@n > 0) and ``rl.not_pass_at_kmax`` (GRPO −
    base on the largest pass@k < +0.02): RL sharpens what the base model already samples
    rather than widening it."""
    diff = _table(root, "differences")
    if diff is None:
        return []
    out = []
    fig = _fig(root, "pass_at_k_fig")
    base = diff[(diff["baseline"] == "grpo") & (diff["method"] == "base")]
    for (model, bench), g in base.groupby(["model", "benchmark"]):
        metrics = list(g["metric"])
        avg = [m for m in metrics if m.startswith("avg@")]
        passes = sorted((m for m in metrics if m.startswith("pass@")), key=lambda m: int(m[5:]))
        split = f"{bench} (seeds)"
        if avg:
            iv = _neg(_row_interval(g[g["metric"] == avg[0]].iloc[0]))
            out.append(make_record(
                claim_id=f"rl.raises_avg.{bench}", paper=PAPER_RL,
                claim=f"GRPO raises {avg[0]} over the base model", model=model, run=model,
                split=split, metric=f"{avg[0]}(grpo) − {avg[0]}(base)", criterion=Greater(0.0),
                interval=iv, figure=fig))
        if len(passes) >= 2:
            k = passes[-1]
            iv = _neg(_row_interval(g[g["metric"] == k].iloc[0]))
            out.append(make_record(
                claim_id=f"rl.not_pass_at_kmax.{bench}", paper=PAPER_RL,
                claim=f"GRPO does not raise {k} (the largest k) over the base model",
                model=model, run=model, split=split, metric=f"{k}(grpo) − {k}(base)",
                criterion=Less(PASS_MARGIN), interval=iv, figure=fig))
    return out


def _ipa_change(g: pd.DataFrame) -> list[float]:
    """Per seed: the metric at the last IPA step − at the first (≥ 2 IPA steps)."""
    out = []
    for _, s in g.groupby("seed"):
        ipa = s[s["phase"] == "ipa"].sort_values("step")
        if len(ipa) >= 2:
            out.append(float(ipa["value"].iloc[-1] - ipa["value"].iloc[0]))
    return out


IPA_TREND = (  # (claim id, history metric, claim, criterion)
    ("rl.bupo.ipa_entropy_k_rises", "entropy_k",
     "under IPA the entropy of the internal policy π^k rises", Greater(0.0)),
    ("rl.bupo.ipa_delta_k_falls", "delta_k",
     "ΔH of π^k = H(π^k) − H(π^(k−1)) drifts negative over the IPA steps", Less(0.0)),
    ("rl.bupo.feature_refinement", "cos_kL",
     "cos(h[k], h[L]) rises over the IPA steps (feature refinement)", Greater(0.0)),
)


def ipa_claims(root: str | Path) -> list[ClaimRecord]:
    """BuPO's IPA phase as the paper reports it (§9.9), per BuPO method, t over seeds: H(π^k),
    ΔH of π^k and cos(h[k], h[L]), each as its value at the last IPA step − at step 1; and
    ``rl.bupo.ipa_entropy_vs_grpo``: mean H(π_θ) over the IPA steps, BuPO − GRPO paired by
    seed (> 0)."""
    tr = _table(root, "training")
    if tr is None:
        return []
    out = []
    fig = _fig(root, "training_fig")
    bupo = tr[tr["method"].astype(str).str.startswith("bupo")]
    for (model, method), g in bupo.groupby(["model", "method"]):
        kw = dict(paper=PAPER_BUPO, model=model, run=model, split="training (seeds)",
                  kind="t", figure=fig)
        for cid, key, claim, crit in IPA_TREND:
            ch = _ipa_change(g[g["metric"] == key])
            out.append(make_record(
                claim_id=f"{cid}.{method}", claim=claim, criterion=crit,
                metric=f"{key} at the last IPA step − at step 1, per seed",
                values=np.array(ch) if ch else None,
                reason="" if ch else f"fewer than 2 IPA steps with {key} logged", **kw))
        ent = g[(g["metric"] == "entropy") & (g["phase"] == "ipa")]
        grpo = tr[(tr["model"] == model) & (tr["method"] == "grpo") & (tr["metric"] == "entropy")]
        a, b = [], []
        for seed, s in ent.groupby("seed"):
            steps = set(s["step"])
            gs = grpo[(grpo["seed"] == seed) & grpo["step"].isin(steps)]
            if len(gs) == len(steps) and steps:
                a.append(float(s["value"].mean()))
                b.append(float(gs["value"].mean()))
        out.append(make_record(
            claim_id=f"rl.bupo.ipa_entropy_vs_grpo.{method}",
            claim="H(π_θ) during the IPA phase is higher than GRPO's over the same steps",
            criterion=Greater(0.0), metric="mean H(π_θ) over the IPA steps, BuPO − GRPO "
                                           "(paired by seed)",
            values=np.array(a) if a else None, paired=np.array(b) if b else None,
            reason="" if a else "no GRPO run with the same seed and steps", **kw))
    return out


def _per_seed(g: pd.DataFrame, metric: str) -> dict[str, pd.Series]:
    return {m: s.set_index("seed")["value"] for m, s in
            g[g["metric"] == metric].groupby("method")}


def paired_record(per: dict[str, pd.Series], a: str, b: str, *, claim_id: str, paper: str,
                  claim: str, model: str, bench: str, metric: str,
                  fig: str | None) -> ClaimRecord:
    """``metric(a) − metric(b)`` paired by the seeds both have, t over seeds (> 0); a
    method not trained gives a ``not measurable`` record naming it."""
    missing = [m for m in (a, b) if m not in per]
    seeds = [] if missing else sorted(set(per[a].index) & set(per[b].index))
    return make_record(
        claim_id=claim_id, paper=paper, claim=claim, model=model, run=model,
        split=f"{bench} (seeds)", metric=f"{metric}({a}) − {metric}({b})",
        criterion=Greater(0.0), values=per[a].loc[seeds].to_numpy() if seeds else None,
        paired=per[b].loc[seeds].to_numpy() if seeds else None, kind="t",
        reason=f"{' and '.join(missing)} not trained (add to rl.methods)" if missing else "",
        figure=None if missing else fig)


def credit_order(root: str | Path) -> list[ClaimRecord]:
    """The attention-rhythm paper's order of credit methods (§9.9), paired by seed on the
    headline metric of every benchmark of a model trained with RL:
    ``rl.credit.coupled_vs_<rival>`` (coupled > local, global and the two controls) and
    ``rl.credit.entropy_vs_random`` (high-entropy control > random control, only when both
    were trained); BuPO's ``rl.bupo_vs.<rival>`` (BuPO ≥ RLOO, REINFORCE++) when BuPO and
    the rival were trained."""
    ev = _table(root, "evaluations")
    if ev is None:
        return []
    out = []
    fig = _fig(root, "accuracy_fig")
    for (model, bench), g in ev.groupby(["model", "benchmark"]):
        metric = headline_metric(list(g["metric"].unique()))
        per = _per_seed(g, metric)
        if set(per) <= {BASE}:
            continue  # no RL on this model and benchmark
        kw = dict(model=model, bench=bench, metric=metric, fig=fig)
        for rival in CREDIT_RIVALS:
            out.append(paired_record(
                per, "rhythm_coupled", rival, claim_id=f"rl.credit.coupled_vs_{rival}.{bench}",
                paper=PAPER_RHYTHM, claim=f"coupled rhythm credit beats {rival} on {bench}",
                **kw))
        if {"credit_entropy", "credit_random"} <= set(per):
            out.append(paired_record(
                per, "credit_entropy", "credit_random",
                claim_id=f"rl.credit.entropy_vs_random.{bench}", paper=PAPER_RHYTHM,
                claim=f"high-entropy credit beats random credit on {bench}", **kw))
        for rival in ("rloo", "reinforce_pp"):
            if {"bupo", rival} <= set(per):
                out.append(paired_record(
                    per, "bupo", rival, claim_id=f"rl.bupo_vs.{rival}.{bench}",
                    paper=PAPER_BUPO, claim=f"BuPO is at least as good as {rival} on {bench}",
                    **kw))
    return out


def rl_claims(root: str | Path) -> list[ClaimRecord]:
    """Every RL / evaluation claim of an experiment (empty without a comparison)."""
    return method_vs_grpo(root) + avg_vs_pass(root) + ipa_claims(root) + credit_order(root)
