"""RL and evaluation claims (docs/methods.md §9.9) from the comparison stage's tables
(``compare/differences.csv``, ``compare/evaluations.csv``, ``compare/training.csv``):
each method against GRPO, avg@k vs pass@k after RL, BuPO's IPA phase and the credit
variants' order. Intervals are t-intervals over seeds (paired by seed); where the
comparison stage wrote the difference and its interval, they are taken as written."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.claims.common import PAPER_BUPO, PAPER_RHYTHM, figure, rel
from pipeline.claims.record import ClaimRecord
from pipeline.claims.stats import Interval, t_quantile
from pipeline.claims.verdict import Greater, Less, make_record
from pipeline.comparison import headline_metric
from pipeline.comparison.stats import BASE

PAPER_RL = "arXiv:2504.13837"  # avg@k vs pass@k: "Does RL really incentivize reasoning…"
PAPER_OF = {"bupo": PAPER_BUPO, "bupo+rhythm_coupled": PAPER_BUPO}
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


def method_vs_grpo(root: str | Path) -> list[ClaimRecord]:
    """``rl.vs_grpo.<method>.<benchmark>``: method − GRPO on the benchmark's headline
    metric, paired by seed (> 0: the method helps)."""
    diff = _table(root, "differences")
    if diff is None:
        return []
    out = []
    fig = _fig(root, "accuracy_fig")
    for (model, bench), g in diff[diff["baseline"] == "grpo"].groupby(["model", "benchmark"]):
        metric = headline_metric(list(g["metric"].unique()))
        for _, row in g[(g["metric"] == metric) & (g["method"] != "base")].iterrows():
            method = row["method"]
            out.append(make_record(
                claim_id=f"rl.vs_grpo.{method}.{bench}", paper=PAPER_OF.get(method, PAPER_RHYTHM),
                claim=f"{method} beats GRPO on {bench}", model=model, run=model,
                split=f"{bench} (seeds)", metric=f"{metric}({method}) − {metric}(grpo)",
                criterion=Greater(0.0), interval=_row_interval(row), figure=fig))
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


def ipa_entropy(root: str | Path) -> list[ClaimRecord]:
    """``rl.bupo.ipa_lowers_entropy_k``: H(π^k) at the last IPA step − at step 1, per seed
    of each BuPO run (< 0), t over seeds."""
    tr = _table(root, "training")
    if tr is None:
        return []
    out = []
    fig = _fig(root, "training_fig")
    ent = tr[(tr["metric"] == "entropy_k") & tr["method"].astype(str).str.startswith("bupo")]
    for (model, method), g in ent.groupby(["model", "method"]):
        changes = []
        for _, s in g.groupby("seed"):
            ipa = s[s["phase"] == "ipa"].sort_values("step")
            if len(ipa) >= 2:
                changes.append(float(ipa["value"].iloc[-1] - ipa["value"].iloc[0]))
        out.append(make_record(
            claim_id=f"rl.bupo.ipa_lowers_entropy_k.{method}", paper=PAPER_BUPO,
            claim="BuPO's IPA phase lowers the entropy of π^k before the switch",
            model=model, run=model, split="training (seeds)",
            metric="H(π^k) last IPA step − step 1", criterion=Less(0.0),
            values=np.array(changes) if changes else None, kind="t",
            reason="" if changes else "fewer than 2 IPA steps logged", figure=fig))
    return out


def credit_order(root: str | Path) -> list[ClaimRecord]:
    """``rl.credit.coupled_vs_<rival>.<benchmark>``: rhythm_coupled − rival on the
    headline metric, paired by seed (> 0), on every benchmark of a model trained with RL;
    a method that was not trained gives a ``not measurable`` record naming it."""
    ev = _table(root, "evaluations")
    if ev is None:
        return []
    out = []
    fig = _fig(root, "accuracy_fig")
    for (model, bench), g in ev.groupby(["model", "benchmark"]):
        metric = headline_metric(list(g["metric"].unique()))
        per = {m: s.set_index("seed")["value"] for m, s in
               g[g["metric"] == metric].groupby("method")}
        if set(per) <= {BASE}:
            continue  # no RL on this model and benchmark
        for rival in CREDIT_RIVALS:
            missing = [m for m in ("rhythm_coupled", rival) if m not in per]
            seeds = [] if missing else sorted(set(per["rhythm_coupled"].index)
                                              & set(per[rival].index))
            out.append(make_record(
                claim_id=f"rl.credit.coupled_vs_{rival}.{bench}", paper=PAPER_RHYTHM,
                claim=f"coupled rhythm credit beats {rival} on {bench}", model=model,
                run=model, split=f"{bench} (seeds)",
                metric=f"{metric}(rhythm_coupled) − {metric}({rival})", criterion=Greater(0.0),
                values=per["rhythm_coupled"].loc[seeds].to_numpy() if seeds else None,
                paired=per[rival].loc[seeds].to_numpy() if seeds else None, kind="t",
                reason=f"{' and '.join(missing)} not trained (add to rl.methods)"
                if missing else "", figure=None if missing else fig))
    return out


def rl_claims(root: str | Path) -> list[ClaimRecord]:
    """Every RL / evaluation claim of an experiment (empty without a comparison)."""
    return method_vs_grpo(root) + avg_vs_pass(root) + ipa_entropy(root) + credit_order(root)
