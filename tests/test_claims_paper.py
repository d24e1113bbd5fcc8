"""Claims as the papers state them (issue 24; docs/methods.md §9.6–§9.11): the claim
registry, family-gated internal-policy claims, the attention-rhythm paper's Table 2
statistics against brute-force loops, the cluster bootstrap of head-group stability, and
min_n → inconclusive. Each check is computed here a second way, by plain loops."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_claims_stages import entropies, heads_table, noisy, tokens_table, write_depth

from pipeline import paths
from pipeline.attention.peaks import PEAK_RULES, peaks, top_count
from pipeline.claims import internal as ic
from pipeline.claims import rhythm as rc
from pipeline.claims.collect import collect, parse_families
from pipeline.claims.registry import REGISTRY, annotate, spec_of
from pipeline.claims.rhythm_table2 import table2_claims
from pipeline.claims.rl import rl_claims


# ------------------------------------------------------------------ a full results tree
def _entropy_table(layer_h, ffn_d, attn_d, cos, model):
    df = entropies(layer_h, ffn_d, model)
    rows = []
    for s in range(layer_h.shape[0]):
        for lay, v in enumerate(attn_d[s], start=1):
            rows.append((model, s, "raw", "attn", "delta", lay, float(v), 10))
        for lay, v in enumerate(cos[s]):
            rows.append((model, s, "raw", "layer", "cos", lay, float(v), 10))
    return pd.concat([df, pd.DataFrame(rows, columns=df.columns)], ignore_index=True)


def write_decomposition(root: Path, run: str, model_type: str, *, L: int = 12, n: int = 12,
                        cos_k: float = 0.5, seed: int = 0) -> None:
    """A decomposition output: a Qwen-like (explore → converge, progressive) or Llama-like
    (weakly positive ΔH_ffn, abrupt fall in the last 3 blocks) entropy flow."""
    if model_type == "qwen3":
        h = np.linspace(10.0, 0.1, L + 1)
        d_ffn = np.r_[np.full(3, 1.0), np.zeros(L - 6), np.full(3, -1.0)]
    else:
        h = np.r_[np.full(L - 2, 10.0), 6.0, 3.0, 0.1]
        d_ffn = np.r_[np.full(L - 1, 0.01), -0.5]
    d = Path(paths.analysis_dir(str(root), "decomposition", run))
    d.mkdir(parents=True, exist_ok=True)
    cos = np.tile(np.linspace(0.1, 1.0, L + 1), (n, 1))
    cos[:, 3] = cos_k + np.random.default_rng(seed).normal(0, 0.01, n)
    layer_h = noisy(h, n, 0.01, seed)
    ffn = noisy(d_ffn, n, 0.001, seed)
    _entropy_table(layer_h, ffn, np.abs(noisy(np.full(L, 0.5), n, 0.01, seed)), cos,
                   run).to_parquet(d / paths.DECOMPOSITION["table"])
    from pipeline.decomposition.boundary import boundary_layer
    curve = ffn.mean(0)
    (d / paths.DECOMPOSITION["boundary"]).write_text(json.dumps({
        "boundary_layer": boundary_layer(curve), "convention": "raw", "num_layers": L,
        "delta_ffn": curve.tolist()}))
    model = paths.parse_run(run)[0]
    cfg = Path(paths.model_dir(str(root), model))
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "config.json").write_text(json.dumps({"model_type": model_type}))


def with_receiver(tok: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return tok.assign(fai_receiver=tok["fai"] + rng.normal(0, 0.001, len(tok)))


def write_attention(root: Path, run: str) -> None:
    from pipeline.attention.stage import summarize
    d = Path(paths.analysis_dir(str(root), "attention", run))
    d.mkdir(parents=True, exist_ok=True)
    tok = with_receiver(tokens_table(10, 40, gap=0.3, sd=0.1, follow="after"))
    tok.to_parquet(d / paths.ATTENTION["tokens"])
    a = ({(1, 0), (1, 1)}, {(2, 6), (2, 7)})
    heads_table([a] * 10).to_parquet(d / paths.ATTENTION["heads"])
    summary = summarize(tok, k=3)
    summary["params"] = {"k": 3}
    (d / paths.ATTENTION["summary"]).write_text(json.dumps(summary))


def write_compare(root: Path) -> None:
    methods = ["grpo", "bupo", "rloo", "reinforce_pp", "rhythm_local", "rhythm_global",
               "rhythm_coupled", "credit_random", "credit_entropy"]
    ev, diff, tr = [], [], []
    for i, m in enumerate(["base", *methods]):
        for s in range(3):
            for metric in ("avg@8", "pass@1", "pass@8"):
                ev.append(dict(model="qw", method=m, seed=s, benchmark="countdown",
                               task="countdown", metric=metric, value=0.3 + 0.01 * i + 0.001 * s,
                               ci_lo=0, ci_hi=1, n_problems=10))
        if m != "grpo":
            for metric in ("avg@8", "pass@1", "pass@8"):
                diff.append(dict(model="qw", benchmark="countdown", metric=metric, method=m,
                                 baseline="grpo", n_pairs=3, diff=0.01 * i - 0.01,
                                 ci_lo=0.01 * i - 0.02, ci_hi=0.01 * i, ci_kind="t"))
    for m in ("grpo", "bupo"):
        for s in range(3):
            for step in (1, 2, 3):
                ph = "ipa" if m == "bupo" and step < 3 else "grpo"
                for metric, v in (("entropy", 1.0 + 0.1 * step), ("entropy_k", 5 + step),
                                  ("delta_k", -0.1 * step), ("cos_kL", 0.1 * step),
                                  ("layer_k", 3)):
                    tr.append(dict(model="qw", method=m, seed=s, step=step, phase=ph,
                                   metric=metric, value=v + (0.05 if m == "bupo" else 0)))
    for name, rows in (("evaluations", ev), ("differences", diff), ("training", tr)):
        p = Path(paths.compare(str(root), name))
        p.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(p, index=False)


@pytest.fixture(scope="module")
def full_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    write_decomposition(root, "qw", "qwen3")
    write_decomposition(root, "ll", "llama", seed=1)
    write_decomposition(root, "qw/bupo/seed0", "qwen3", cos_k=0.8, seed=2)
    for run in ("qw", "ll", "qw/bupo/seed0"):
        write_attention(root, run)
    write_depth(root, top_share=0.9, flip=0.9, fw_gap=4.0, dom=3)
    write_compare(root)
    return root


def test_registry_covers_every_emitted_id_and_every_entry_is_emitted(full_tree: Path) -> None:
    recs = annotate(collect(full_tree) + rl_claims(full_tree))
    emitted = {spec_of(r.claim_id).id for r in recs}  # spec_of raises on an unknown id
    missing = {k: s.requires for k, s in REGISTRY.items() if k not in emitted}
    # every entry is emitted on a tree that has what it needs; what is not is the one
    # entry whose condition this tree lacks on purpose (builtin text cannot test facts)
    assert all(missing.values()), f"registry entries never emitted without a reason: {missing}"
    assert set(missing) <= {"depth.fact_first_token", "depth.early_guess_wrong"}, missing
    for r in recs:
        s = spec_of(r.claim_id)
        assert (r.paper, r.source, r.paper_ref) == (s.paper, s.source, s.where)
    assert not any(r.claim_id.startswith("rl.bupo.ipa_lowers") for r in recs)
    with pytest.raises(KeyError, match="no entry"):
        spec_of("bupo.made_up")


def test_internal_claims_are_family_gated(full_tree: Path) -> None:
    recs = collect(full_tree, runs=[])
    by = {(r.claim_id, r.run): r for r in recs if r.claim_id.startswith("bupo.")}
    qwen = {c for c, run in by if run == "qw"}
    llama = {c for c, run in by if run == "ll"}
    assert {"bupo.eic_explore", "bupo.eic_converge", "bupo.attn_explore",
            "bupo.boundary_depth", "bupo.qwen_progressive"} <= qwen
    assert not qwen & {"bupo.llama_abrupt", "bupo.llama_ffn_positive", "bupo.llama_ffn_final"}
    assert {"bupo.llama_abrupt", "bupo.llama_ffn_positive", "bupo.llama_ffn_final",
            "bupo.llama_boundary_depth"} <= llama
    assert not llama & {"bupo.eic_explore", "bupo.eic_converge", "bupo.boundary_depth"}
    for (cid, run), r in by.items():
        assert r.family == {"qw": "qwen", "ll": "llama"}[run.split("/")[0]], cid
    # the synthetic curves are built to satisfy their own family's statements
    for key in [("bupo.qwen_progressive", "qw"), ("bupo.llama_abrupt", "ll"),
                ("bupo.llama_ffn_positive", "ll"), ("bupo.llama_ffn_final", "ll"),
                ("bupo.eic_explore", "qw"), ("bupo.attn_explore", "qw")]:
        assert by[key].verdict == "holds", key
    # the override: SmolLM2-like Llama data tested as Qwen fails the Qwen statements
    recs = collect(full_tree, runs=[], families=parse_families(["ll=qwen"]))
    forced = {r.claim_id: r for r in recs if r.run == "ll" and r.claim_id.startswith("bupo.")}
    assert forced["bupo.qwen_progressive"].verdict == "fails"
    assert forced["bupo.eic_converge"].family == "qwen"
    with pytest.raises(ValueError, match="model=qwen"):
        parse_families(["ll=gpt"])


def test_contraction_share_by_loop() -> None:
    n, L = 7, 10
    h = noisy(np.r_[np.full(L - 2, 8.0), 5.0, 2.0, 0.5], n, 0.3, seed=3)
    rec = ic.contraction_claim(entropies(h, np.zeros((n, L))), family="llama", model="m",
                               run="m", convention="raw")
    num = sum(h[s, L - 3] - h[s, L] for s in range(n))
    den = sum(max(h[s]) - h[s, L] for s in range(n))
    assert rec.value == pytest.approx(num / den) and rec.claim_id == "bupo.llama_abrupt"
    short = ic.contraction_claim(entropies(h[:, :5], np.zeros((n, 4))), family="qwen",
                                 model="m", run="m", convention="raw")
    assert short.verdict == "not measurable" and "L = 4" in short.reason


def test_refinement_after_paired_by_response(full_tree: Path) -> None:
    recs = {r.claim_id: r for r in collect(full_tree, models=[], runs=["qw/bupo/seed0"])}
    ref = recs["bupo.refinement_after"]
    base = pd.read_parquet(full_tree / "decomposition/qw/entropies.parquet")
    tr = pd.read_parquet(full_tree / "decomposition/qw/bupo/seed0/entropies.parquet")

    def at3(df):
        sel = df[(df.module == "layer") & (df.quantity == "cos") & (df.layer == 3)]
        return sel.sort_values("sample")["value"].to_numpy()
    assert ref.value == pytest.approx(float(np.mean(at3(tr) - at3(base))))
    assert ref.verdict == "holds" and ref.n == 12 and "h[3]" in ref.metric


# ------------------------------------------------------------------ Table 2, by loops
def naive_peaks(x, rule):
    n = len(x)
    if rule == "mad":
        med = float(np.median(x))
        mad = float(np.median([abs(v - med) for v in x]))
        return [(t == 0 or x[t] > x[t - 1]) and (t == n - 1 or x[t] >= x[t + 1])
                and x[t] > med + mad for t in range(n)]
    q = {"top10": 0.1, "top20": 0.2}[rule]
    m = top_count(q, n)
    order = sorted(range(n), key=lambda t: (-x[t], t))[:m]
    return [t in order for t in range(n)]


@pytest.mark.parametrize("rule", PEAK_RULES)
def test_peaks_match_loops(rule: str) -> None:
    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 40):
        x = np.round(rng.uniform(0, 5, n), 1)  # ties included
        assert peaks(x, rule).tolist() == naive_peaks(list(x), rule)
    with pytest.raises(ValueError, match="unknown peak rule"):
        peaks(np.ones(3), "top30")


def naive_table2(tok: pd.DataFrame, rule: str, k: int) -> tuple[float, float, float]:
    ent_pk = ent_all = n_pk = n_all = 0.0
    rc_hit = rc_exp = ff_hit = ff_exp = 0.0
    for _, g in tok.groupby("sample"):
        g = g.sort_values("position")
        w, f, r, e = (g[c].tolist() for c in ("waad", "fai", "fai_receiver", "entropy"))
        n = len(w)
        wp, fp, rp = naive_peaks(w, rule), naive_peaks(f, rule), naive_peaks(r, rule)
        for t in range(n):
            ent_all, n_all = ent_all + e[t], n_all + 1
            if wp[t]:
                ent_pk, n_pk = ent_pk + e[t], n_pk + 1
        rc_hit += sum(rp[t] and fp[t] for t in range(n))
        rc_exp += sum(rp) * sum(fp) / n
        near = [any(wp[u] for u in range(max(0, t - k), t + 1)) for t in range(n)]
        ff_hit += sum(fp[t] and near[t] for t in range(n))
        ff_exp += sum(fp) * sum(near) / n
    return (ent_pk / n_pk) / (ent_all / n_all), rc_hit / rc_exp, ff_hit / ff_exp


def test_table2_statistics_match_loops() -> None:
    tok = with_receiver(tokens_table(6, 30, gap=0.2, sd=0.2, follow="random", seed=5))
    recs = table2_claims(tok, run="m", model="m", k=2)
    by = {(r.claim_id, r.split): r for r in recs}
    for rule in PEAK_RULES:
        split = "responses" if rule == "mad" else f"responses (peaks: {rule})"
        want = naive_table2(tok, rule, 2)
        got = [by[(c, split)].value for c in ("rhythm.waad_peak_entropy",
                                               "rhythm.receiver_global_cooccur",
                                               "rhythm.fai_follows_waad")]
        assert got == pytest.approx(list(want)), rule
    assert len(recs) == 9


def test_table2_flip_between_rules_is_inconclusive() -> None:
    """A unimodal WAAD (one local maximum, at t = 25) with high entropy at the maximum
    and low entropy on its shoulders: the mad rule (the maximum only) holds, top10 / top20
    (maximum + shoulders) fail, so the primary verdict is inconclusive."""
    rng = np.random.default_rng(6)
    parts = []
    t = np.arange(50)
    for s in range(12):
        w = 10.0 - np.abs(t - 25) + rng.uniform(0, 0.01)
        ent = np.where(np.abs(t - 25) <= 5, 0.2, 1.0) + rng.uniform(0, 0.01, 50)
        ent[25] = 3.0
        parts.append(pd.DataFrame({"sample": s, "position": np.arange(50), "waad": w,
                                   "fai": rng.uniform(0, 1, 50), "entropy": ent}))
    tok = with_receiver(pd.concat(parts, ignore_index=True))
    recs = [r for r in table2_claims(tok, run="m", model="m")
            if r.claim_id == "rhythm.waad_peak_entropy"]
    verdicts = {r.split: r.verdict for r in recs}
    assert verdicts["responses (peaks: top20)"] == "fails"
    prim = next(r for r in recs if r.split == "responses")
    assert prim.verdict == "inconclusive" and "flips between peak rules" in prim.reason
    assert prim.ci_low > 1.0  # its own interval alone would say holds
    # without the receiver column the co-occurrence is not measurable, with a reason
    no_rec = table2_claims(tok.drop(columns="fai_receiver"), run="m", model="m")
    co = [r for r in no_rec if r.claim_id == "rhythm.receiver_global_cooccur"]
    assert all(r.verdict == "not measurable" and "fai_receiver" in r.reason for r in co)


# ------------------------------------------------------------------ head-group stability
def naive_stability(sets: list[frozenset], size: int, idx: list[int]) -> float:
    vals = []
    for i in idx:
        counts: dict = {}
        for j in idx:
            if j != i:
                for h in sets[j]:
                    counts[h] = counts.get(h, 0) + 1
        cons = set(sorted(counts, key=lambda h: (-counts[h], h))[:size])
        u = len(sets[i] | cons)
        vals.append(len(sets[i] & cons) / u if u else math.nan)
    return float(np.nanmean(vals))


def test_head_stability_cluster_bootstrap_matches_loops() -> None:
    rng = np.random.default_rng(7)
    pool = [(1, h) for h in range(8)]
    sets = [frozenset(pool[i] for i in rng.choice(8, 3, replace=False)) for _ in range(9)]
    member = rc.head_matrix(sets)
    for idx in ([0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 3, 5, 5, 5, 8, 2, 1]):
        got = float(np.nanmean(rc.consensus_overlap(member, 3, np.array(idx))))
        assert got == pytest.approx(naive_stability(sets, 3, idx)), idx


def test_head_stability_interval_is_wider_than_the_unit_bootstrap() -> None:
    from pipeline.claims.stats import bootstrap_mean_ci
    rng = np.random.default_rng(8)
    loc = [({(1, h) for h in rng.choice(8, 2, replace=False)},
            {(2, h) for h in rng.choice(8, 2, replace=False)}) for _ in range(12)]
    heads = heads_table(loc)
    rec = rc.head_stability_claim(heads, run="m")
    ml, mg = (rc.head_matrix(rc._head_sets(heads, g)[0]) for g in ("local", "global"))
    per = (rc.consensus_overlap(ml, 2) + rc.consensus_overlap(mg, 2)) / 2
    naive = bootstrap_mean_ci(per)
    assert rec.value == pytest.approx(naive.value)
    assert rec.ci_high - rec.ci_low > naive.high - naive.low


# ------------------------------------------------------------------ min_n
def test_below_min_n_is_inconclusive_with_n_needed(tmp_path: Path) -> None:
    from pipeline.claims import depth as dc
    write_depth(tmp_path, top_share=0.9, flip=0.9, fw_gap=4.0, dom=3, n=40)
    s = json.loads((tmp_path / "depth/m/summary.json").read_text())
    s["spec"]["claims"]["min_n"] = 100  # every group (40 passages) is below min_n
    (tmp_path / "depth/m/summary.json").write_text(json.dumps(s))
    rec = next(r for r in dc.depth_claims(tmp_path, "m")
               if r.claim_id == "depth.function_words.logit")
    assert rec.verdict == "inconclusive" and math.isfinite(rec.value)
    assert rec.n_needed == math.ceil(rec.n * 100 / 40) and "min_n = 100" in rec.reason


def test_mlflow_metric_keys_are_unique_per_split() -> None:
    from pipeline.commands.report import metric_key
    tok = with_receiver(tokens_table(4, 30, gap=0.2, sd=0.2, follow="after"))
    recs = table2_claims(tok, run="m", model="m")
    keys = [metric_key(r, recs) for r in recs]
    assert len(set(keys)) == len(recs)
    assert "claim.rhythm.fai_follows_waad/m/responses peaks: top10" in keys
