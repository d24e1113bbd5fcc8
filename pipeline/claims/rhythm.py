"""Attention-rhythm claims (arXiv 2510.13554) from the attention stage's outputs
(docs/methods.md §3.10, §9.5): ``tokens.parquet`` (per response token), ``heads.parquet``
(per response, layer and head), ``summary.json``. Intervals: percentile bootstrap over
responses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.claims.common import (
    PAPER_RHYTHM,
    figure,
    join,
    mismatch_note,
    read_json,
    rel,
    two_sample_ci,
    unjudged,
    with_value,
)
from pipeline.claims.record import ClaimRecord
from pipeline.claims.rhythm_table2 import table2_claims
from pipeline.claims.stats import bootstrap_ci
from pipeline.claims.verdict import Greater, make_record

STABLE = 0.5  # mean Jaccard overlap with the other responses' consensus groups
NO_DIRECTION = ("descriptive: the paper predicts no shift of mean WAAD / FAI after RL (it "
                "uses the rhythm for credit, not as an RL outcome)")


def _record(run: str, split: str, **kw) -> ClaimRecord:
    return make_record(paper=PAPER_RHYTHM, model=paths.parse_run(run)[0], run=run,
                       split=split, **kw)


def _head_sets(heads: pd.DataFrame, group: str) -> tuple[list[frozenset], int]:
    """Per response (ascending sample), the set of (layer, head) in ``group`` (``both``
    counts in both groups), and the group size n (the largest set)."""
    sel = heads[heads["group"].isin([group, "both"])]
    by = {s: frozenset(zip(g["layer"], g["head"], strict=True))
          for s, g in sel.groupby("sample", sort=True)}
    sets = [by.get(s, frozenset()) for s in sorted(heads["sample"].unique())]
    return sets, max((len(s) for s in sets), default=0)


def head_matrix(sets: list[frozenset]) -> np.ndarray:
    """Responses × heads membership matrix (heads in ascending (layer, head) order)."""
    heads = sorted(set().union(*sets)) if sets else []
    col = {h: j for j, h in enumerate(heads)}
    m = np.zeros((len(sets), len(heads)), dtype=bool)
    for r, s in enumerate(sets):
        m[r, [col[h] for h in s]] = True
    return m


def consensus_overlap(member: np.ndarray, size: int, idx: np.ndarray | None = None
                      ) -> np.ndarray:
    """Per response r of the (re)sample ``idx`` (rows of ``member``, default all), the
    Jaccard overlap of its head set with the consensus of the *other* responses of the
    sample: the ``size`` heads in the group most often among them (ties → the lower
    (layer, head)); every copy of response r is left out, so a resample with repeats does
    not compare a response with itself."""
    idx = np.arange(len(member)) if idx is None else np.asarray(idx)
    m = member[idx].astype(np.int64)
    if m.shape[1] == 0 or len(idx) < 2:
        return np.full(len(idx), np.nan)
    copies = np.bincount(idx, minlength=len(member))[idx]
    others = m.sum(0)[None, :] - copies[:, None] * m  # [n, heads]
    order = np.argsort(-others, axis=1, kind="stable")[:, :size]
    cons = np.zeros(m.shape, dtype=bool)
    np.put_along_axis(cons, order, np.take_along_axis(others, order, axis=1) > 0, axis=1)
    own = m.astype(bool)
    union = (own | cons).sum(1)
    inter = (own & cons).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    out[(others > 0).sum(1) == 0] = np.nan  # no other response in the sample
    return out


def head_stability_claim(heads: pd.DataFrame, *, run: str, split: str = "responses",
                         fig: str | None = None) -> ClaimRecord:
    """``rhythm.head_groups_stable`` (§9.7): per response, the mean of the local and the
    global group's Jaccard overlap with the leave-one-out consensus groups; mean over
    responses > 0.5. Interval: cluster bootstrap over responses that recomputes the
    consensus inside every resample (the leave-one-out values share responses, so
    resampling them as independent units would make the interval too narrow)."""
    loc, n_loc = _head_sets(heads, "local")
    glob, n_glob = _head_sets(heads, "global")
    kw = dict(claim_id="rhythm.head_groups_stable",
              claim="the local/global head split is stable across samples",
              metric="mean over responses of the Jaccard overlap of its local and global head "
                     "groups with the other responses' consensus groups",
              criterion=Greater(STABLE, f"> {STABLE:g} (groups mostly shared)"), figure=fig)
    if len(loc) < 2:
        return _record(run, split, values=None, reason="fewer than 2 responses", **kw)
    ml, mg = head_matrix(loc), head_matrix(glob)

    def stat(idx: np.ndarray) -> float:
        v = (consensus_overlap(ml, n_loc, idx) + consensus_overlap(mg, n_glob, idx)) / 2
        return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan

    iv = bootstrap_ci(np.arange(len(loc)), stat)
    return _record(run, split, interval=iv, reason="cluster bootstrap over responses "
                   "(consensus recomputed per resample)", **kw)


def _per_response(tokens: pd.DataFrame, flag: str, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Per response: mean ``col`` at ``flag`` tokens and over all its tokens."""
    g = tokens.groupby("sample", sort=True)
    allm = g[col].mean().to_numpy(dtype=float)
    at = tokens[tokens[flag].astype(bool)].groupby("sample")[col].mean()
    at = at.reindex(g[col].mean().index).to_numpy(dtype=float)
    return at, allm


def entropy_claims(tokens: pd.DataFrame, summary: dict, *, run: str,
                   split: str = "responses", fig: str | None = None) -> list[ClaimRecord]:
    """``rhythm.preplan_entropy``, ``rhythm.anchor_entropy`` (§9.5): per response, mean
    policy entropy (``entropy``: the step that sampled the token) at preplan / anchor tokens
    minus its mean over all tokens > 0; paired bootstrap over responses. The stage's
    pooled ratio is quoted in the reason."""
    out = []
    for flag in ("preplan", "anchor"):
        at, allm = _per_response(tokens, flag, "entropy")
        ratio = summary.get(f"entropy_{flag}_ratio")
        out.append(_record(
            run, split, claim_id=f"rhythm.{flag}_entropy",
            claim=f"policy entropy is higher at {flag} tokens than at all tokens",
            metric=f"mean entropy at {flag} tokens − mean over all tokens, per response (nats)",
            criterion=Greater(0.0), values=at, paired=allm,
            reason=f"stage pooled ratio {ratio:.4g}" if ratio is not None else "",
            figure=fig))
    return out


def follow_counts(tokens: pd.DataFrame, k: int) -> np.ndarray:
    """Per response with anchors: ``[followed anchors, expected under the null]`` (the
    stage's :func:`pipeline.attention.stage.follow_statistics`, per response)."""
    from pipeline.attention.stage import follows_window

    rows = []
    for _, g in tokens.sort_values(["sample", "position"]).groupby("sample", sort=True):
        hit = follows_window(g["preplan"].to_numpy(), k)
        anc = g["anchor"].to_numpy(dtype=bool)
        m, n = int(anc.sum()), len(anc)
        if m:
            rows.append((float((hit & anc).sum()), m * float(hit.sum()) / n))
    return np.asarray(rows, dtype=float).reshape(-1, 2)


def follows_claim(tokens: pd.DataFrame, summary: dict, *, run: str,
                  split: str = "responses", fig: str | None = None) -> ClaimRecord:
    """``rhythm.anchor_follows_preplan`` (§9.5): the stage's lift (anchors that follow a
    preplan token within k, observed / expected under the within-response permutation
    null) > 1. Interval: bootstrap over responses of Σ followed / Σ expected; the stage's
    exact p-value in the reason."""
    k = int(summary.get("params", {}).get("k", 3))
    units = follow_counts(tokens, k)
    lift = float(summary.get("anchor_follows_preplan_lift", math.nan))
    kw = dict(claim_id="rhythm.anchor_follows_preplan",
              claim="anchors follow preplan tokens more often than the permutation null",
              metric=f"lift: anchors with a preplan token in [t−{k}, t−1], observed / null "
                     "expectation", criterion=Greater(1.0), figure=fig)
    if len(units) == 0 or not math.isfinite(lift):
        return _record(run, split, values=None, reason="no anchors", **kw)
    iv = bootstrap_ci(units, lambda u: u[:, 0].sum() / u[:, 1].sum()
                      if u[:, 1].sum() > 0 else math.nan)
    p = summary.get("anchor_follows_preplan_pvalue")
    note = join(mismatch_note(lift, iv.value, "lift"),
                f"stage exact one-sided p = {p:.3g}" if p is not None else "")
    return _record(run, split, interval=with_value(iv, lift), reason=note, **kw)


def shift_claims(trained: pd.DataFrame, base: pd.DataFrame, *, run: str,
                 split: str = "responses", fig: str | None = None) -> list[ClaimRecord]:
    """``rhythm.rl_waad_shift``, ``rhythm.rl_fai_shift`` (§9.5): mean per-response WAAD /
    FAI of the trained run minus the base model's, two-sample bootstrap over responses.
    ``descriptive`` (the paper predicts no direction), value and interval kept."""
    out = []
    for col in ("waad", "fai"):
        a = trained.groupby("sample")[col].mean().dropna().to_numpy(dtype=float)
        b = base.groupby("sample")[col].mean().dropna().to_numpy(dtype=float)
        iv = two_sample_ci(a, b, lambda x, y: float(np.mean(x) - np.mean(y)))
        out.append(unjudged(
            claim_id=f"rhythm.rl_{col}_shift", paper=PAPER_RHYTHM,
            claim=f"mean {col.upper()} after RL − before (measured shift, no prediction)",
            model=paths.parse_run(run)[0], run=run, split=split,
            metric=f"mean per-response {col.upper()}: trained − base",
            interval=iv, criterion="none (descriptive)",
            reason=NO_DIRECTION + "; two-sample bootstrap over responses", figure=fig))
    return out


def _load(root: str | Path, run: str) -> tuple[Path, pd.DataFrame | None]:
    d = Path(paths.analysis_dir(str(root), "attention", run))
    t = d / paths.ATTENTION["tokens"]
    return d, (pd.read_parquet(t) if t.is_file() else None)


def attention_claims(root: str | Path, run: str) -> list[ClaimRecord]:
    """Every attention claim of ``attention/<run>/`` (§9.5), plus the WAAD/FAI shift
    against the base model for a trained run."""
    d, tokens = _load(root, run)
    if tokens is None:
        return []
    summary = read_json(d / paths.ATTENTION["summary"])
    figs = rel(root, d / paths.ATTENTION["figures"])
    out: list[ClaimRecord] = []
    hpath = d / paths.ATTENTION["heads"]
    if hpath.is_file():
        out.append(head_stability_claim(pd.read_parquet(hpath), run=run,
                                        fig=figure(root, f"{figs}/head_distance.png")))
    trace = figure(root, f"{figs}/trace.png")
    out += entropy_claims(tokens, summary, run=run, fig=trace)
    out.append(follows_claim(tokens, summary, run=run, fig=trace))
    k = int(summary.get("params", {}).get("k", 3))
    out += table2_claims(tokens, run=run, model=paths.parse_run(run)[0], k=k, fig=trace)
    model = paths.parse_run(run)[0]
    if paths.is_trained(run):
        _, base = _load(root, model)
        if base is not None:
            fig = figure(root, rel(root, paths.compare(str(root), "attention_fig")))
            out += shift_claims(tokens, base, run=run, fig=fig)
    return out
