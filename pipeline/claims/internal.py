"""Internal-policy claims (BuPO, arXiv 2512.19673) from the decomposition stage's outputs
(docs/methods.md §1, §9.5): ``entropies.parquet`` (per-sample means per layer),
``boundary.json``. Intervals: percentile bootstrap over samples (responses)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.claims.common import (
    PAPER_BUPO,
    figure,
    join,
    mismatch_note,
    quarter,
    read_json,
    rel,
    two_sample_ci,
    with_value,
)
from pipeline.claims.record import ClaimRecord
from pipeline.claims.stats import Interval, bootstrap_ci
from pipeline.claims.verdict import Greater, Less, make_record

ABRUPT_LAST = 3  # "the last ~3 layers"
ABRUPT_MIN_LAYERS = 2 * ABRUPT_LAST  # below this, the last 3 layers are half the model
MUCH_SMALLER = 0.1  # Llama |ΔH| < 0.1 × Qwen |ΔH| (the paper: ~50× smaller)


def sample_matrix(ent: pd.DataFrame, convention: str, module: str, quantity: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(layers, values [S, n_layers], tokens [S])`` of one (convention, module,
    quantity) of ``entropies.parquet``, samples in ascending order."""
    sel = ent[(ent.convention == convention) & (ent.module == module)
              & (ent.quantity == quantity)]
    wide = sel.pivot_table(index="sample", columns="layer", values="value", aggfunc="first")
    tok = sel.groupby("sample")["tokens"].max().reindex(wide.index)
    return (wide.columns.to_numpy(dtype=int), wide.to_numpy(dtype=float),
            tok.to_numpy(dtype=float))


def weighted_curve(values: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Token-weighted mean curve over samples (§1.1 aggregation): Σ tokens·value /
    Σ tokens over the finite entries of each layer."""
    w = np.where(np.isfinite(values), tokens[:, None], 0.0)
    num = np.nansum(values * w, axis=0)
    den = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _record(run: str, model: str, split: str, **kw) -> ClaimRecord:
    return make_record(paper=PAPER_BUPO, model=model, run=run, split=split, **kw)


def entropy_claims(ent: pd.DataFrame, *, model: str, run: str, convention: str,
                   split: str = "responses", fig: str | None = None) -> list[ClaimRecord]:
    """``bupo.entropy_drop`` and ``bupo.entropy_top`` (§9.5): per sample, the mean layer
    entropy of h[1]..h[⌊L/4⌋] minus H(h[L]) > 0, and H(h[L]) / that mean < 0.1 (ratio of
    the sample means, bootstrap over samples)."""
    layers, vals, _ = sample_matrix(ent, convention, "layer", "entropy")
    if vals.size == 0:
        return []
    L = int(layers.max())
    low = [i for i, lay in enumerate(layers) if 1 <= lay <= quarter(L)]
    top = int(np.flatnonzero(layers == L)[0])
    low_mean = np.nanmean(vals[:, low], axis=1)
    top_h = vals[:, top]
    span = f"h[1]..h[{quarter(L)}]"
    drop = _record(
        run, model, split, claim_id="bupo.entropy_drop",
        claim="internal-policy entropy is high in the lower layers and falls toward the top",
        metric=f"mean H over {span} − H(h[{L}]) per sample, nats ({convention})",
        criterion=Greater(0.0), values=low_mean - top_h, figure=fig)
    units = np.column_stack([top_h, low_mean])
    ratio = _record(
        run, model, split, claim_id="bupo.entropy_top",
        claim="internal-policy entropy is near 0 at the top layer",
        metric=f"mean H(h[{L}]) / mean H over {span} ({convention})",
        criterion=Less(0.1, "< 0.1 (top entropy under a tenth of the lower layers')"),
        values=units, statistic=lambda u: np.nanmean(u[:, 0]) / np.nanmean(u[:, 1]),
        figure=fig)
    return [drop, ratio]


def eic_claims(ent: pd.DataFrame, *, model: str, run: str, convention: str,
               split: str = "responses", fig: str | None = None) -> list[ClaimRecord]:
    """``bupo.eic_explore`` (mean ΔH_ffn over blocks 1..⌊L/4⌋ > 0) and
    ``bupo.eic_converge`` (mean ΔH_ffn over the last ⌊L/4⌋ blocks < 0), per sample,
    bootstrap over samples (§9.5)."""
    layers, vals, _ = sample_matrix(ent, convention, "ffn", "delta")
    if vals.size == 0:
        return []
    L, q = int(layers.max()), quarter(int(layers.max()))
    early = np.nanmean(vals[:, (layers >= 1) & (layers <= q)], axis=1)
    late = np.nanmean(vals[:, layers > L - q], axis=1)
    claim = "FFN ΔH goes exploration (+) → integration (≈0) → convergence (−) over depth"
    return [
        _record(run, model, split, claim_id="bupo.eic_explore", claim=claim + ": early +",
                metric=f"mean ΔH_ffn over blocks 1..{q} per sample, nats ({convention})",
                criterion=Greater(0.0), values=early, figure=fig),
        _record(run, model, split, claim_id="bupo.eic_converge", claim=claim + ": late −",
                metric=f"mean ΔH_ffn over blocks {L - q + 1}..{L} per sample, nats "
                       f"({convention})",
                criterion=Less(0.0), values=late, figure=fig),
    ]


def boundary_claim(ent: pd.DataFrame, boundary: Mapping, *, model: str, run: str,
                   split: str = "responses", fig: str | None = None) -> ClaimRecord:
    """``bupo.boundary_depth`` (§9.5): the stage's boundary layer k (``boundary.json``) as
    relative depth k/L < 0.5. Interval: bootstrap over samples of the boundary rule itself
    (:func:`pipeline.decomposition.boundary.boundary_layer` on the token-weighted ΔH_ffn
    curve of the resampled samples)."""
    from pipeline.decomposition.boundary import boundary_layer

    conv = str(boundary.get("convention", "raw"))
    L = int(boundary["num_layers"])
    k = int(boundary["boundary_layer"])
    _, vals, tok = sample_matrix(ent, conv, "ffn", "delta")
    units = np.column_stack([tok, vals]) if vals.size else np.empty((0, L + 1))

    def rule(u: np.ndarray) -> float:
        return boundary_layer(weighted_curve(u[:, 1:], u[:, 0])) / L

    iv = bootstrap_ci(units, rule) if len(units) else Interval(
        k / L, math.nan, math.nan, 0, "bootstrap")
    curve = np.asarray(boundary.get("delta_ffn", []), dtype=float)
    fallback = curve.size > 0 and boundary_layer(curve, fallback=0) == 0
    notes = join(
        mismatch_note(k / L, iv.value, "k/L") if len(units) else "",
        f"k = {k} of L = {L} ({conv})",
        "fallback L−1: no exploration run ending before L (the paper's Llama rule)"
        if fallback else "",
        "interval: bootstrap over samples of the boundary rule")
    if len(units) == 0:
        return _record(run, model, split, claim_id="bupo.boundary_depth",
                       claim="the boundary layer lies in the lower half of the model",
                       metric="boundary layer k / L", criterion=Less(0.5), values=None,
                       reason=notes + "; no per-sample ΔH_ffn", figure=fig)
    return _record(
        run, model, split, claim_id="bupo.boundary_depth",
        claim="the boundary layer (end of FFN exploration) lies in the lower half of the "
              "model (Qwen3: 6 of 36)",
        metric=f"boundary layer k / L ({conv})",
        criterion=Less(0.5, "< 0.5 (boundary in the lower half)"),
        interval=with_value(iv, k / L), reason=notes, figure=fig)


def decomposition_claims(root: str | Path, run: str) -> list[ClaimRecord]:
    """Every per-run internal-policy claim of ``decomposition/<run>/`` (§9.5), in the
    convention that defines the boundary layer (``boundary.json``'s, default raw)."""
    d = Path(paths.analysis_dir(str(root), "decomposition", run))
    ent_path = d / paths.DECOMPOSITION["table"]
    if not ent_path.is_file():
        return []
    ent = pd.read_parquet(ent_path)
    bpath = d / paths.DECOMPOSITION["boundary"]
    boundary = read_json(bpath) if bpath.is_file() else {}
    conv = str(boundary.get("convention", "raw"))
    model = paths.parse_run(run)[0]
    figs = rel(root, d / paths.DECOMPOSITION["figures"])
    flow = figure(root, f"{figs}/entropy_flow_{conv}.png")
    delta = figure(root, f"{figs}/delta_{conv}.png")
    out = entropy_claims(ent, model=model, run=run, convention=conv, fig=flow)
    out += eic_claims(ent, model=model, run=run, convention=conv, fig=delta)
    if boundary:
        out.append(boundary_claim(ent, boundary, model=model, run=run, fig=delta))
    return out


# ---------------------------------------------------------------------- cross-model
def family(root: str | Path, model: str) -> str:
    """``llama``, ``qwen`` or ``other``: the provisioned config's ``model_type``
    (``models/<model>/model/config.json``), else the model's name."""
    cfg = Path(paths.model_dir(str(root), model)) / "config.json"
    name = model.lower()
    if cfg.is_file():
        name = str(json.loads(cfg.read_text()).get("model_type", name)).lower()
    if "llama" in name:
        return "llama"
    return "qwen" if "qwen" in name else "other"


def _abs_delta(ent: pd.DataFrame, convention: str) -> tuple[np.ndarray, np.ndarray]:
    layers, vals, _ = sample_matrix(ent, convention, "ffn", "delta")
    return layers, np.abs(vals)


def llama_claims(ents: Mapping[str, pd.DataFrame], families: Mapping[str, str], *,
                 convention: str = "raw", split: str = "responses",
                 fig: str | None = None) -> list[ClaimRecord]:
    """``bupo.llama_abrupt`` per Llama-family model (share of Σ|ΔH_ffn| in the last 3
    blocks > 0.5, bootstrap over samples; not measurable when L < 6) and
    ``bupo.llama_small_dh`` per (Llama, Qwen) pair (mean |ΔH_ffn| Llama / Qwen < 0.1,
    two-sample bootstrap; split ``vs:<qwen model>``; not measurable when only one family
    is present) (§9.5)."""
    llamas = [m for m in ents if families.get(m) == "llama"]
    qwens = [m for m in ents if families.get(m) == "qwen"]
    claim_a = "Llama-family models converge abruptly in the last ~3 layers"
    claim_b = "Llama-family |ΔH| is much smaller than Qwen-family |ΔH| (~50×)"
    crit_b = Less(MUCH_SMALLER, f"< {MUCH_SMALLER:g} (at least 10× smaller)")
    metric_b = f"mean |ΔH_ffn| Llama / Qwen over layers and samples ({convention})"
    out: list[ClaimRecord] = []
    for m in llamas:
        layers, a = _abs_delta(ents[m], convention)
        L = int(layers.max()) if layers.size else 0
        metric = f"share of Σ|ΔH_ffn| in blocks {L - ABRUPT_LAST + 1}..{L} ({convention})"
        kw = dict(claim_id="bupo.llama_abrupt", claim=claim_a, metric=metric,
                  criterion=Greater(0.5, "> 0.5 (most of the change in the last 3 blocks)"),
                  figure=fig)
        if L < ABRUPT_MIN_LAYERS:
            out.append(_record(m, m, split, values=None, reason=f"L = {L} < "
                               f"{ABRUPT_MIN_LAYERS}: the last {ABRUPT_LAST} blocks are half "
                               "the model or more", **kw))
            continue
        last = layers > L - ABRUPT_LAST
        units = np.column_stack([np.nansum(a[:, last], axis=1), np.nansum(a, axis=1)])
        out.append(_record(m, m, split, values=units,
                           statistic=lambda u: u[:, 0].sum() / u[:, 1].sum(), **kw))
    for m in llamas:
        for q in qwens:
            a = np.nanmean(_abs_delta(ents[m], convention)[1], axis=1)
            b = np.nanmean(_abs_delta(ents[q], convention)[1], axis=1)
            iv = two_sample_ci(a, b, lambda x, y: float(np.mean(x) / np.mean(y)))
            out.append(_record(m, m, f"vs:{q}", claim_id="bupo.llama_small_dh",
                               claim=claim_b, metric=metric_b, criterion=crit_b,
                               interval=iv, reason="two-sample bootstrap over samples",
                               figure=fig))
    if not (llamas and qwens):
        present = "Llama" if llamas else "Qwen" if qwens else "neither"
        for m in llamas or qwens:
            out.append(_record(m, m, "vs:none", claim_id="bupo.llama_small_dh",
                               claim=claim_b, metric=metric_b, criterion=crit_b, values=None,
                               reason=f"only {present}-family models present", figure=fig))
    return out


def cross_model_claims(root: str | Path, models: Sequence[str]) -> list[ClaimRecord]:
    """:func:`llama_claims` over the base models whose decomposition exists."""
    ents, conv = {}, "raw"
    for m in models:
        d = Path(paths.analysis_dir(str(root), "decomposition", m))
        if (d / paths.DECOMPOSITION["table"]).is_file():
            ents[m] = pd.read_parquet(d / paths.DECOMPOSITION["table"])
            b = d / paths.DECOMPOSITION["boundary"]
            if b.is_file():
                conv = str(read_json(b).get("convention", conv))
    if not ents:
        return []
    fams = {m: family(root, m) for m in ents}
    fig = figure(root, rel(root, paths.decomposition_compare(str(root))))
    return llama_claims(ents, fams, convention=conv, fig=fig)
