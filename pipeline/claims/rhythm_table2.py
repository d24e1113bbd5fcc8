"""The attention-rhythm paper's three validation statistics (arXiv 2510.13554, Table 2;
docs/methods.md §9.7) from the attention stage's ``tokens.parquet``, under every peak rule
of :mod:`pipeline.attention.peaks`:

(a) ``rhythm.waad_peak_entropy``: mean policy entropy at WAAD peaks / over all tokens;
(b) ``rhythm.receiver_global_cooccur``: how often a receiver-head FAI peak is also a
    global-head FAI peak, over the rate for uniformly random positions (lift);
(c) ``rhythm.fai_follows_waad``: how often an FAI peak has a WAAD peak at the same token or
    within the k tokens before it, over the rate for random positions (lift).

Intervals: percentile bootstrap over responses of the pooled ratio. The record under the
primary rule is ``inconclusive`` when the verdicts under the rules differ, whatever its
interval says; the other rules are sensitivity rows (split ``responses (peaks: <rule>)``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from pipeline.attention.peaks import PEAK_RULES, PRIMARY_RULE, peaks, within
from pipeline.claims.common import PAPER_RHYTHM
from pipeline.claims.record import ClaimRecord
from pipeline.claims.stats import bootstrap_ci
from pipeline.claims.verdict import Greater, make_record


def _responses(tokens: pd.DataFrame) -> list[pd.DataFrame]:
    return [g for _, g in tokens.sort_values(["sample", "position"]).groupby("sample")]


def entropy_units(responses: list[pd.DataFrame], rule: str) -> np.ndarray:
    """Per response (:func:`_responses`) ``[Σ entropy at WAAD peaks, #peaks, Σ entropy,
    #tokens]`` (tokens with a finite entropy)."""
    rows = []
    for g in responses:
        ent = g["entropy"].to_numpy(dtype=float)
        ok = np.isfinite(ent)
        pk = peaks(g["waad"].to_numpy(dtype=float), rule) & ok
        rows.append((ent[pk].sum(), pk.sum(), ent[ok].sum(), ok.sum()))
    return np.asarray(rows, dtype=float).reshape(-1, 4)


def cooccur_units(responses: list[pd.DataFrame], rule: str, *, source: str, target: str,
                  back: int) -> np.ndarray:
    """Per response ``[hits, expected, #source peaks]``: source peaks t with a target peak
    in ``[t − back, t]``, and their expectation ``m · h / n`` for ``m`` source peaks placed
    uniformly at random among the ``n`` tokens, ``h`` of which have a target peak in their
    window."""
    rows = []
    for g in responses:
        src = peaks(g[source].to_numpy(dtype=float), rule)
        hit = within(peaks(g[target].to_numpy(dtype=float), rule), back)
        n, m = len(g), int(src.sum())
        rows.append((float((src & hit).sum()), m * float(hit.sum()) / max(n, 1), m))
    return np.asarray(rows, dtype=float).reshape(-1, 3)


def _ratio_of_means(u: np.ndarray) -> float:
    a, b = u[:, 1].sum(), u[:, 3].sum()
    if a <= 0 or b <= 0 or u[:, 2].sum() <= 0:
        return math.nan
    return float((u[:, 0].sum() / a) / (u[:, 2].sum() / b))


def _lift(u: np.ndarray) -> float:
    return float(u[:, 0].sum() / u[:, 1].sum()) if u[:, 1].sum() > 0 else math.nan


def _split(rule: str) -> str:
    return "responses" if rule == PRIMARY_RULE else f"responses (peaks: {rule})"


def _one(run: str, model: str, rule: str, claim_id: str, claim: str, metric: str,
         units: np.ndarray, stat: Callable[[np.ndarray], float], note: str,
         fig: str | None) -> ClaimRecord:
    kw = dict(claim_id=claim_id, paper=PAPER_RHYTHM, claim=claim, model=model, run=run,
              split=_split(rule), metric=f"{metric}; peaks: {rule}",
              criterion=Greater(1.0), figure=fig)
    if len(units) == 0 or not math.isfinite(stat(units)):
        return make_record(values=None, reason=f"no peaks under {rule}", **kw)
    iv = bootstrap_ci(units, stat)
    return make_record(interval=iv, reason=note, **kw)


def _judge_primary(recs: dict[str, ClaimRecord]) -> list[ClaimRecord]:
    """The primary rule's record becomes ``inconclusive`` when the rules' verdicts differ."""
    verdicts = {rule: r.verdict for rule, r in recs.items()}
    prim = recs[PRIMARY_RULE]
    if len(set(verdicts.values())) > 1 and prim.verdict != "not measurable":
        flips = ", ".join(f"{k}: {v}" for k, v in verdicts.items())
        prim = dataclasses.replace(
            prim, verdict="inconclusive",
            n_needed=prim.n_needed if prim.verdict == "inconclusive" else None,
            reason="; ".join(x for x in (prim.reason, f"verdict flips between peak rules "
                                         f"({flips})") if x))
    return [prim] + [r for k, r in recs.items() if k != PRIMARY_RULE]


def table2_claims(tokens: pd.DataFrame, *, run: str, model: str, k: int = 3,
                  fig: str | None = None) -> list[ClaimRecord]:
    """The three Table 2 statistics of one run under every rule of ``PEAK_RULES`` (§9.7)."""
    out: list[ClaimRecord] = []
    recs: dict[str, ClaimRecord] = {}
    responses = _responses(tokens)  # one sort and split, shared by every statistic and rule
    for rule in PEAK_RULES:
        u = entropy_units(responses, rule)
        note = ""
        if len(u) and u[:, 1].sum() > 0:
            note = (f"mean entropy {u[:, 0].sum() / u[:, 1].sum():.4g} at WAAD peaks vs "
                    f"{u[:, 2].sum() / u[:, 3].sum():.4g} over all tokens")
        recs[rule] = _one(run, model, rule, "rhythm.waad_peak_entropy",
                          "policy entropy at WAAD peaks is higher than over all tokens",
                          "mean entropy at WAAD peaks / mean over all tokens (pooled)",
                          u, _ratio_of_means, note, fig)
    out += _judge_primary(recs)
    pairs = [("rhythm.receiver_global_cooccur", "fai_receiver", "fai", 0,
              "receiver-head FAI peaks co-occur with global-head FAI peaks more often than "
              "at random", "lift: receiver-head FAI peaks at a global-head FAI peak, "
              "observed / random positions"),
             ("rhythm.fai_follows_waad", "fai", "waad", k,
              "FAI peaks follow or coincide with WAAD peaks more often than at random",
              f"lift: FAI peaks with a WAAD peak in [t−{k}, t], observed / random positions")]
    for cid, src, tgt, back, claim, metric in pairs:
        recs = {}
        for rule in PEAK_RULES:
            if src not in tokens.columns:
                recs[rule] = make_record(
                    claim_id=cid, paper=PAPER_RHYTHM, claim=claim, model=model, run=run,
                    split=_split(rule), metric=f"{metric}; peaks: {rule}",
                    criterion=Greater(1.0), values=None, figure=fig,
                    reason=f"tokens.parquet has no {src} column (rerun the attention stage)")
                continue
            u = cooccur_units(responses, rule, source=src, target=tgt, back=back)
            note = ""
            if len(u) and u[:, 2].sum() > 0:
                note = (f"{100 * u[:, 0].sum() / u[:, 2].sum():.2f} % observed vs "
                        f"{100 * u[:, 1].sum() / u[:, 2].sum():.2f} % at random")
            recs[rule] = _one(run, model, rule, cid, claim, metric, u, _lift, note, fig)
        out += _judge_primary(recs)
    return out
