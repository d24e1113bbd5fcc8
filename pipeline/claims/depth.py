"""Guess-then-refine claims (arXiv 2510.18871) from the depth stage's outputs
(docs/methods.md §4.7, §9.5). The value of each claim is the stage's own measured quantity
(``summary.json`` → ``claims``, computed by :mod:`pipeline.depth.claims`); the interval is a
percentile bootstrap over prompts (or over passages / facts, whose prompts share a text)
from the stage's per-prompt tables. One record per claim and lens (``<id>.<lens>``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.claims.common import (
    PAPER_DEPTH,
    figure,
    join,
    mismatch_note,
    read_json,
    rel,
    unjudged,
)
from pipeline.claims.record import ClaimRecord
from pipeline.claims.stats import Interval, bootstrap_ci
from pipeline.claims.verdict import Between, Criterion, Greater, make_record
from pipeline.depth.claims import _never_as, early_layers
from pipeline.depth.spec import Claims as DepthClaims

_KEYS = {"early guesses": "freq", ">70 %": "flip", "the first answer": "facts",
         "valid options": "mcq", "function words": "pos"}


def stage_claims(summary: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The stage's claim dicts by (short key, lens)."""
    out = {}
    for c in summary.get("claims", []):
        key = next((v for k, v in _KEYS.items() if str(c["claim"]).startswith(k)), None)
        if key:
            out[(key, str(c["lens"]))] = c
    return out


def group_units(df: pd.DataFrame, cluster: str, group: str, value: str
                ) -> tuple[list[Any], np.ndarray]:
    """``(groups, units [C, G, 2])``: per cluster (passage, fact, prompt) and group (tag,
    answer position, token class), the sum and count of ``value``; resampling clusters and
    dividing the summed sums by the summed counts gives the per-group means."""
    groups = sorted(df[group].unique().tolist())
    s = df.pivot_table(index=cluster, columns=group, values=value, aggfunc="sum")
    n = df.pivot_table(index=cluster, columns=group, values=value, aggfunc="count")
    s = s.reindex(columns=groups).fillna(0.0).to_numpy(dtype=float)
    n = n.reindex(columns=groups).fillna(0.0).to_numpy(dtype=float)
    return groups, np.stack([s, n], axis=2)


def _means(u: np.ndarray) -> np.ndarray:
    cnt = u[:, :, 1].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, u[:, :, 0].sum(axis=0) / np.maximum(cnt, 1), np.nan)


def _used(df: pd.DataFrame) -> pd.DataFrame:
    """Correct-only rows with a first hit (the stage's ``n_used``)."""
    return df[df["correct"].astype(bool) & (df["earliest_k1"] >= 0)]


def _gap(groups: list[Any], hi: Sequence[Any], lo: Sequence[Any]
         ) -> Callable[[np.ndarray], float]:
    """Statistic ``min(mean of hi groups) − max(mean of lo groups)`` of resampled units."""
    ih = [groups.index(g) for g in hi if g in groups]
    il = [groups.index(g) for g in lo if g in groups]

    def stat(u: np.ndarray) -> float:
        m = _means(u)
        a, b = m[ih], m[il]
        if not (np.isfinite(a).any() and np.isfinite(b).any()):
            return math.nan
        return float(np.nanmin(a) - np.nanmax(b))
    return stat


class Ctx:
    """One model's depth outputs: directory, summary, claim settings, figures."""

    def __init__(self, root: str | Path, model: str) -> None:
        self.root, self.model = root, model
        self.summary_path = Path(paths.depth(str(root), model))
        self.dir = self.summary_path.parent
        self.summary = read_json(self.summary_path)
        settings = DepthClaims(**self.summary.get("spec", {}).get("claims", {}))
        self.early_frac, self.min_n = float(settings.early_frac), int(settings.min_n)
        self.L = int(self.summary["num_layers"])
        self.builtin = bool(self.summary.get("builtin_text", False))
        self.early = early_layers(self.L, self.early_frac)
        self.stage = stage_claims(self.summary)

    def table(self, name: str) -> pd.DataFrame | None:
        p = self.dir / f"{name}.parquet"
        return pd.read_parquet(p) if p.is_file() else None

    def fig(self, name: str) -> str | None:
        return figure(self.root, f"{rel(self.root, self.dir)}/figures/{name}.png")

    def record(self, *, claim_id: str, lens: str, claim: str, metric: str,
               criterion: Criterion, iv: Interval | None, value: float, fig: str,
               reason: str = "") -> ClaimRecord:
        kw = dict(claim_id=f"{claim_id}.{lens}", paper=PAPER_DEPTH, claim=claim,
                  model=self.model, run=self.model, split="depth prompts",
                  metric=f"{metric} ({lens} lens)", criterion=criterion,
                  figure=self.fig(fig))
        if iv is None or iv.n == 0 or not math.isfinite(value):
            return make_record(values=None, reason=reason or "not measured", **kw)
        note = join(mismatch_note(value, iv.value), reason)
        return make_record(interval=Interval(float(value), iv.low, iv.high, iv.n, iv.kind,
                                             iv.se, iv.conf), reason=note, **kw)


def freq_claims(c: Ctx, lens: str) -> list[ClaimRecord]:
    """``depth.early_freq`` (mean Top1-10 share of the early lens top-1 > 0.5) and
    ``depth.early_flip`` (pooled flip rate of early Top1-10 guesses > 0.7); units: prompts
    of ``baseline.parquet``."""
    base = c.table("baseline")
    out = []
    st = c.stage.get(("freq", lens), {}).get("measured", {})
    ivf = ivr = None
    if base is not None:
        b = base[(base.lens == lens) & base.layer.isin(c.early)]
        top = (b["top1_bucket"] == "Top1-10")
        per = b.assign(top=top.astype(float)).groupby("prompt")["top"].mean()
        ivf = bootstrap_ci(per.to_numpy(), np.mean)
        g = b.assign(top=top, fl=top & b["flip"].astype(bool)).groupby("prompt")
        units = np.column_stack([g["fl"].sum(), g["top"].sum()]).astype(float)
        ivr = bootstrap_ci(units, lambda u: u[:, 0].sum() / u[:, 1].sum()
                           if u[:, 1].sum() > 0 else math.nan)
    span = f"h[{c.early[0]}]..h[{c.early[-1]}]"
    out.append(c.record(
        claim_id="depth.early_freq", lens=lens, iv=ivf,
        claim="early guesses are mostly high-frequency tokens",
        metric=f"mean over {span} of the share of prompts whose top-1 is a Top1-10 token",
        criterion=Greater(0.5), value=st.get("mean_top1_10_share_early", math.nan),
        fig="bucket_mix"))
    sf = c.stage.get(("flip", lens), {}).get("measured", {})
    out.append(c.record(
        claim_id="depth.early_flip", lens=lens, iv=ivr,
        claim=">70 % of early high-frequency guesses are later refined",
        metric=f"flip rate of Top1-10 top-1 guesses over {span} (pooled)",
        criterion=Greater(0.7), value=sf.get("flip_rate_top1_10_early", math.nan),
        fig="flip_rates"))
    return out


def _as_num(d: Mapping[str, Any]) -> dict[Any, Any]:
    return {(int(k) if str(k).lstrip("-").isdigit() else k): v for k, v in d.items()}


def function_words_claim(c: Ctx, lens: str) -> ClaimRecord:
    """``depth.function_words``: natural text — min mean earliest layer (k=1, correct
    only) of the content tags − max of the function tags > 0 (tags with ≥ min_n prompts;
    units: passages of ``pos.parquet``); builtin text — mean of digits − max of operators
    and brackets > 0 (units: prompts of ``token_classes.parquet``)."""
    st = c.stage.get(("pos", lens), {})
    m = st.get("measured", {})
    means, ns = _as_num(m.get("mean_earliest_layer", {})), _as_num(m.get("n_correct", {}))
    kw: dict[str, Any] = dict(claim_id="depth.function_words", lens=lens,
                              claim="function words are decided earliest",
                              criterion=Greater(0.0), fig="pos_earliest_layer")
    cls = m.get("word_class", {})

    def sides(least: int) -> tuple[list[Any], list[Any]]:
        ok = [t for t in means if ns.get(t, 0) >= least]
        if c.builtin:
            return (["digit"] if "digit" in ok else [],
                    [t for t in ("operator", "bracket") if t in ok])
        return ([t for t in ok if cls.get(t) == "content"],
                [t for t in ok if cls.get(t) == "function"])

    hi, lo = sides(c.min_n)
    if not (hi and lo):  # a side short of min_n: measured anyway, then inconclusive
        hi, lo = sides(1)
    if c.builtin:
        table, cluster, grp = c.table("token_classes"), "prompt", "token_class"
        kw.update(claim="function-like tokens (operators, brackets) are decided before "
                        "digits (builtin-text analog of function words)",
                  metric="mean earliest layer of digits − max of operators / brackets",
                  fig="token_classes")
    else:
        table, cluster, grp = c.table("pos"), "passage", "upos"
        kw["metric"] = "min mean earliest layer of content tags − max of function tags"
    if table is None or not lo or not hi:
        return c.record(iv=None, value=math.nan, reason=st.get("criterion", "not measured")
                        if table is None else "no correct prompt on one side", **kw)
    value = min(means[t] for t in hi) - max(means[t] for t in lo)
    groups, units = group_units(_used(table[table.lens == lens]), cluster, grp, "earliest_k1")
    iv = bootstrap_ci(units, _gap(groups, hi, lo))
    return below_min_n(c.record(iv=iv, value=value, **kw), ns, [*hi, *lo], c.min_n)


def facts_claim(c: Ctx, lens: str) -> ClaimRecord:
    """``depth.fact_first_token``: mean earliest layer (k=1, correct only) at answer
    position 1 − the max at the other positions (≥ min_n prompts) > 0; units: facts."""
    st = c.stage.get(("facts", lens), {})
    m = st.get("measured", {})
    means, ns = _as_num(m.get("mean_earliest_layer", {})), _as_num(m.get("n_correct", {}))
    others = [j for j in means if j != 1 and ns.get(j, 0) >= c.min_n]
    if ns.get(1, 0) < c.min_n or not others:  # decided below: inconclusive, n_needed
        others = [j for j in means if j != 1 and ns.get(j, 0) >= 1]
    kw: dict[str, Any] = dict(
        claim_id="depth.fact_first_token", lens=lens,
        claim="the first answer token of a fact needs the most depth",
        metric="mean earliest layer at answer position 1 − max at positions 2..3",
        criterion=Greater(0.0), fig="facts_earliest_layer")
    table = c.table("facts")
    if c.builtin or table is None or ns.get(1, 0) < 1 or not others:
        why = ("not measurable on builtin-task text" if c.builtin
               else "no facts table (case study not run)" if table is None
               else "no correct prompt at answer position 1 or at a later one")
        return c.record(iv=None, value=math.nan, reason=why, **kw)
    value = means[1] - max(means[j] for j in others)
    groups, units = group_units(_used(table[table.lens == lens]), "fact_id", "answer_token",
                                "earliest_k1")
    rec = c.record(iv=bootstrap_ci(units, _gap(groups, [1], others)), value=value, **kw)
    return below_min_n(rec, ns, [1, *others], c.min_n)


def guess_claim(c: Ctx, lens: str) -> ClaimRecord:
    """``depth.early_guess_wrong`` (extension, descriptive, methods §4.11): the share of
    wrong first answer tokens that were an early layer's top-1 − that share among correct
    ones, with its bootstrap interval over facts (``facts_guess.parquet``)."""
    kw: dict[str, Any] = dict(
        claim_id="depth.early_guess_wrong", lens=lens,
        claim="do wrong first answer tokens come from early guesses the later layers fail "
              "to correct? (wrong − correct: share whose token was an early layer's top-1)",
        metric="early-guess rate, wrong − correct first answer tokens",
        criterion=Greater(0.0), fig="facts_earliest_layer")
    table = c.table("facts_guess")
    row = None if table is None else table[(table.lens == lens)
                                           & (table.statistic == "early_guess")]
    if c.builtin or row is None or row.empty or not math.isfinite(float(row["diff"].iloc[0])):
        why = ("not measurable on builtin-task text" if c.builtin
               else "no facts_guess table (case study not run)" if row is None or row.empty
               else "every first answer token is correct, or every one is wrong")
        return c.record(iv=None, value=math.nan, reason=why, **kw)
    r = row.iloc[0]
    iv = Interval(float(r["diff"]), float(r.diff_lo), float(r.diff_hi),
                  int(r.n_correct + r.n_wrong), "bootstrap")
    return unjudged(claim_id=f"{kw['claim_id']}.{lens}", paper=PAPER_DEPTH, claim=kw["claim"],
                    model=c.model, run=c.model, split="depth prompts",
                    metric=f"{kw['metric']} ({lens} lens)", interval=iv,
                    criterion="none: a question, no paper value (descriptive)",
                    reason=f"{int(r.n_wrong)} wrong, {int(r.n_correct)} correct first tokens; "
                           f"early-guess rates {r.mean_wrong:.3f} vs {r.mean_correct:.3f}",
                    figure=c.fig("facts_earliest_layer"))


def below_min_n(rec: ClaimRecord, ns: Mapping[Any, int], groups: Sequence[Any],
                min_n: int) -> ClaimRecord:
    """A record computed with a group of fewer than ``min_n`` prompts is ``inconclusive``
    (§9.8), whatever its interval says; ``n_needed`` scales the sample so that the
    smallest group used reaches ``min_n`` (at least the §9.4 value when there is one)."""
    small = {g: int(ns.get(g, 0)) for g in groups if int(ns.get(g, 0)) < min_n}
    if not small or rec.verdict == "not measurable":
        return rec
    least = max(1, min(small.values()))
    need = math.ceil(rec.n * min_n / least)
    return dataclasses.replace(
        rec, verdict="inconclusive", n_needed=max(need, rec.n_needed or 0, rec.n + 1),
        reason=join(rec.reason, "fewer than min_n = " + str(min_n) + " correct prompts in "
                    + ", ".join(f"{g} ({n})" for g, n in small.items())))


def mcq_claims(c: Ctx, lens: str) -> list[ClaimRecord]:
    """``depth.mcq_options_early``: median dominate layer / L ≤ 0.5; and
    ``depth.mcq_choice_late``: median settled layer (stays) / L > 0.5; never → L+1; units:
    MMLU prompts of ``mcq.parquet``."""
    st = c.stage.get(("mcq", lens), {}).get("measured", {})
    table = c.table("mcq")
    na = c.builtin or table is None
    specs = [("depth.mcq_options_early", "dominate_layer", "median_dominate_layer",
              "valid options reach the top in the first half of the layers",
              "median over prompts of the first layer where the 4 options dominate / L",
              Between(0.0, 0.5, "≤ 0.5 (first half)")),
             ("depth.mcq_choice_late", "choice_settled_layer_stays",
              "median_choice_settled_layer_stays",
              "the choice among the options is settled late",
              "median over prompts of the layer the chosen option stays on top / L",
              Greater(0.5, "> 0.5 (second half)"))]
    out = []
    for cid, col, key, claim, metric, crit in specs:
        kw = dict(claim_id=cid, lens=lens, claim=claim, metric=metric, criterion=crit,
                  fig="mcq_layers")
        if na:
            out.append(c.record(iv=None, value=math.nan,
                                reason="not measurable on builtin-task text", **kw))
            continue
        q = table[table.lens == lens]
        v = _never_as(q[col].to_numpy(), c.L) / c.L
        iv = bootstrap_ci(v, np.median)
        out.append(c.record(iv=iv, value=float(st.get(key, math.nan)) / c.L, **kw))
    return out


def depth_claims(root: str | Path, model: str) -> list[ClaimRecord]:
    """Every depth claim of ``depth/<model>/`` (§9.5), per lens."""
    if not Path(paths.depth(str(root), model)).is_file():
        return []
    c = Ctx(root, model)
    out: list[ClaimRecord] = []
    for lens in c.summary.get("lenses", ["logit"]):
        out += freq_claims(c, lens)
        out.append(function_words_claim(c, lens))
        out.append(facts_claim(c, lens))
        out.append(guess_claim(c, lens))
        out += mcq_claims(c, lens)
    return out
