"""Internal-policy claims (BuPO, arXiv 2512.19673) from the decomposition stage's outputs
(docs/methods.md §1, §9.5): ``entropies.parquet`` (per-sample means per layer),
``boundary.json``. Intervals: percentile bootstrap over samples (responses)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
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

ALMOST_ALL = 0.75  # "nearly / almost every layer": more than three quarters of the blocks
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
                   split: str = "responses", fig: str | None = None,
                   family: str = "qwen") -> ClaimRecord:
    """The stage's boundary layer k (``boundary.json``) as relative depth k/L (§9.6):
    ``bupo.boundary_depth`` < 0.5 for Qwen (π^6 of 36), ``bupo.llama_boundary_depth``
    > 0.5 for Llama (the penultimate layer). Interval: bootstrap over samples of the
    boundary rule itself (:func:`pipeline.decomposition.boundary.boundary_layer` on the
    token-weighted ΔH_ffn curve of the resampled samples)."""
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
    if family == "llama":
        kw = dict(claim_id="bupo.llama_boundary_depth",
                  claim="the boundary layer of a Llama-family model is in the upper half "
                        "(the paper's OctoThinker k: the penultimate layer)",
                  criterion=Greater(0.5, "> 0.5 (boundary in the upper half)"))
    else:
        kw = dict(claim_id="bupo.boundary_depth",
                  claim="the boundary layer (end of FFN exploration) lies in the lower half "
                        "of the model (Qwen3: 6 of 36)",
                  criterion=Less(0.5, "< 0.5 (boundary in the lower half)"))
    if len(units) == 0:
        return _record(run, model, split, metric="boundary layer k / L", values=None,
                       reason=notes + "; no per-sample ΔH_ffn", figure=fig, **kw)
    return _record(run, model, split, metric=f"boundary layer k / L ({conv})",
                   interval=with_value(iv, k / L), reason=notes, figure=fig, **kw)


def positive_share_claim(ent: pd.DataFrame, *, module: str, claim_id: str, claim: str,
                         model: str, run: str, convention: str, exclude_last: bool = False,
                         split: str = "responses", fig: str | None = None) -> ClaimRecord:
    """Share of blocks whose token-weighted mean ΔH of ``module`` is > 0 (blocks 1..L, or
    1..L−1 with ``exclude_last``) > 0.75, "nearly / almost every layer" (§9.6); bootstrap
    over samples of the share recomputed from the resampled curve."""
    layers, vals, tok = sample_matrix(ent, convention, module, "delta")
    L = int(layers.max()) if layers.size else 0
    sel = layers < L if exclude_last else layers >= 1
    span = f"blocks 1..{L - 1 if exclude_last else L}"

    def share(u: np.ndarray) -> float:
        c = weighted_curve(u[:, 1:], u[:, 0])[sel]
        return float(np.mean(c > 0)) if c.size else math.nan
    return _record(run, model, split, claim_id=claim_id, claim=claim,
                   metric=f"share of {span} with token-weighted mean ΔH_{module} > 0 "
                          f"({convention})",
                   criterion=Greater(ALMOST_ALL, f"> {ALMOST_ALL:g} (nearly every layer)"),
                   values=np.column_stack([tok, vals]) if vals.size and sel.any() else None,
                   statistic=share, figure=fig)


def contraction_claim(ent: pd.DataFrame, *, family: str, model: str, run: str,
                      convention: str, split: str = "responses",
                      fig: str | None = None) -> ClaimRecord:
    """Share of the layer-entropy fall that happens in the last 3 blocks (§9.6): per sample
    ``H(h[L−3]) − H(h[L])`` over ``max_l H(h[l]) − H(h[L])``, ratio of the sums over
    samples, bootstrap over samples. Llama (``bupo.llama_abrupt``): > 0.5; Qwen
    (``bupo.qwen_progressive``): < 0.5. Not measurable when L < 6."""
    layers, vals, _ = sample_matrix(ent, convention, "layer", "entropy")
    L = int(layers.max()) if layers.size else 0
    if family == "llama":
        kw = dict(claim_id="bupo.llama_abrupt",
                  claim="layer entropy converges abruptly, within the last 3 layers",
                  criterion=Greater(0.5, "> 0.5 (most of the fall in the last 3 blocks)"))
    else:
        kw = dict(claim_id="bupo.qwen_progressive",
                  claim="layer entropy contracts progressively, not only in the last layers",
                  criterion=Less(0.5, "< 0.5 (most of the fall before the last 3 blocks)"))
    lo, top = (f"{L - ABRUPT_LAST}", f"{L}") if L >= ABRUPT_MIN_LAYERS else ("L−3", "L")
    metric = (f"(H(h[{lo}]) − H(h[{top}])) / (max_l H(h[l]) − H(h[{top}])), ratio of sums "
              f"over samples ({convention})")
    if L < ABRUPT_MIN_LAYERS:
        return _record(run, model, split, metric=metric, values=None, figure=fig,
                       reason=f"L = {L} < {ABRUPT_MIN_LAYERS}: the last {ABRUPT_LAST} blocks "
                              "are half the model or more", **kw)
    top = vals[:, layers == L][:, 0]
    units = np.column_stack([vals[:, layers == L - ABRUPT_LAST][:, 0] - top,
                             np.nanmax(vals, axis=1) - top])
    return _record(run, model, split, metric=metric, values=units, figure=fig,
                   statistic=lambda u: u[:, 0].sum() / u[:, 1].sum()
                   if u[:, 1].sum() > 0 else math.nan, **kw)


def final_ffn_claim(ent: pd.DataFrame, *, model: str, run: str, convention: str,
                    split: str = "responses", fig: str | None = None) -> ClaimRecord:
    """``bupo.llama_ffn_final``: ΔH_ffn of block L per sample < 0 (Llama converges only at
    the final layer; §9.6)."""
    layers, vals, _ = sample_matrix(ent, convention, "ffn", "delta")
    L = int(layers.max()) if layers.size else 0
    return _record(run, model, split, claim_id="bupo.llama_ffn_final",
                   claim="FFN ΔH turns negative at the final layer",
                   metric=f"ΔH_ffn of block {L} per sample, nats ({convention})",
                   criterion=Less(0.0), values=vals[:, layers == L][:, 0] if L else None,
                   figure=fig)


def refinement_claim(root: str | Path, run: str, ent: pd.DataFrame, *, convention: str,
                     fig: str | None = None) -> ClaimRecord | None:
    """``bupo.refinement_after`` for a trained BuPO run (§9.6): per response, cos(h[k],
    h[L]) of the trained weights − the base model's over the same response (the
    decomposition reads the base model's responses), paired bootstrap over responses
    (> 0). k: the run's logged ``layer_k`` (``compare/training.csv``), else the base
    model's boundary layer. None for runs that are not BuPO."""
    model, method, seed = paths.parse_run(run)
    if not str(method).startswith("bupo"):
        return None
    k = _layer_k(root, model, str(method), seed)
    kw = dict(claim_id="bupo.refinement_after",
              claim="after BuPO, h[k] is closer to the top-layer state h[L] (feature "
                    "refinement)", criterion=Greater(0.0), figure=fig)
    base_p = Path(paths.analysis_dir(str(root), "decomposition", model)) / \
        paths.DECOMPOSITION["table"]
    if k is None or not base_p.is_file():
        return _record(run, model, "responses", metric="cos(h[k], h[L]) trained − base",
                       values=None, reason="no BuPO layer k or no base decomposition", **kw)
    metric = f"cos(h[{k}], h[L]) trained − base, per response ({convention})"
    a = _cos_at(ent, convention, k)
    b = _cos_at(pd.read_parquet(base_p), convention, k)
    if a is None or b is None:
        return _record(run, model, "responses", metric=metric, values=None,
                       reason="no layer cos in entropies.parquet (rerun the decomposition)",
                       **kw)
    both = a.index.intersection(b.index)
    return _record(run, model, "responses", metric=metric,
                   values=a.loc[both].to_numpy(), paired=b.loc[both].to_numpy(), **kw)


def _cos_at(ent: pd.DataFrame, convention: str, k: int) -> pd.Series | None:
    sel = ent[(ent.convention == convention) & (ent.module == "layer")
              & (ent.quantity == "cos") & (ent.layer == k)]
    return None if sel.empty else sel.groupby("sample")["value"].first()


def _layer_k(root: str | Path, model: str, method: str, seed: int | None) -> int | None:
    tr = Path(paths.compare(str(root), "training"))
    if tr.is_file():
        t = pd.read_csv(tr)
        t = t[(t["model"] == model) & (t["method"] == method) & (t["seed"] == seed)
              & (t["metric"] == "layer_k")]
        if len(t):
            return int(t["value"].iloc[0])
    b = Path(paths.analysis_dir(str(root), "decomposition", model)) / \
        paths.DECOMPOSITION["boundary"]
    return int(read_json(b)["boundary_layer"]) if b.is_file() else None


def decomposition_claims(root: str | Path, run: str, family: str | None = None
                         ) -> list[ClaimRecord]:
    """Every per-run internal-policy claim of ``decomposition/<run>/`` (§9.6), in the
    convention that defines the boundary layer (``boundary.json``'s, default raw): the
    universal ones, then the set of the model's family (``family``, default: from its
    architecture); every record carries the family it was tested under."""
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
    fam = family or model_family(root, model)
    kw = dict(model=model, run=run, convention=conv)
    out = entropy_claims(ent, fig=flow, **kw)
    if fam == "qwen":
        out += eic_claims(ent, fig=delta, **kw)
        out.append(positive_share_claim(
            ent, module="attn", claim_id="bupo.attn_explore", fig=delta,
            claim="attention ΔH is positive at nearly all layers", **kw))
        out.append(contraction_claim(ent, family=fam, fig=flow, **kw))
    elif fam == "llama":
        out.append(contraction_claim(ent, family=fam, fig=flow, **kw))
        out.append(positive_share_claim(
            ent, module="ffn", claim_id="bupo.llama_ffn_positive", exclude_last=True,
            claim="FFN ΔH is weakly positive in almost every layer", fig=delta, **kw))
        out.append(final_ffn_claim(ent, fig=delta, **kw))
    if boundary and fam in ("qwen", "llama"):
        out.append(boundary_claim(ent, boundary, model=model, run=run, fig=delta,
                                  family=fam))
    if paths.is_trained(run):
        ref = refinement_claim(root, run, ent, convention=conv, fig=figure(
            root, rel(root, paths.compare(str(root), "entropy_fig"))))
        out += [ref] if ref is not None else []
    return [replace(r, family=fam) for r in out]


# ---------------------------------------------------------------------- cross-model
def model_family(root: str | Path, model: str) -> str:
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
    """``bupo.llama_small_dh`` per (Llama, Qwen) pair: mean |ΔH_ffn| Llama / Qwen < 0.1,
    two-sample bootstrap over samples, split ``vs:<qwen model>``; not measurable (split
    ``vs:none``) when only one family is present (§9.6)."""
    llamas = [m for m in ents if families.get(m) == "llama"]
    qwens = [m for m in ents if families.get(m) == "qwen"]
    claim_b = "Llama-family |ΔH| is much smaller than Qwen-family |ΔH| (~50×)"
    crit_b = Less(MUCH_SMALLER, f"< {MUCH_SMALLER:g} (at least 10× smaller)")
    metric_b = f"mean |ΔH_ffn| Llama / Qwen over layers and samples ({convention})"
    out: list[ClaimRecord] = []
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
    return [replace(r, family=families.get(r.model, "")) for r in out]


def cross_model_claims(root: str | Path, models: Sequence[str],
                       families: Mapping[str, str] | None = None) -> list[ClaimRecord]:
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
    fams = {m: (families or {}).get(m) or model_family(root, m) for m in ents}
    fig = figure(root, rel(root, paths.decomposition_compare(str(root))))
    return llama_claims(ents, fams, convention=conv, fig=fig)


family = model_family  # the older public name
