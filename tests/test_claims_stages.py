"""Stage claim functions (docs/methods.md §9.5) on synthetic stage tables whose answer is
known: each returns holds / fails / inconclusive in the right cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.claims import collect as collect_mod
from pipeline.claims import depth as dc
from pipeline.claims import internal as ic
from pipeline.claims import rhythm as rc


# ------------------------------------------------------------------ decomposition
def entropies(layer_h: np.ndarray, ffn_d: np.ndarray, model: str = "m",
              conv: str = "raw") -> pd.DataFrame:
    """entropies.parquet rows from per-sample layer entropies [S, L+1] and ΔH_ffn [S, L]."""
    rows = []
    for s in range(layer_h.shape[0]):
        for lay, v in enumerate(layer_h[s]):
            rows.append((model, s, conv, "layer", "entropy", lay, float(v), 10))
        for lay, v in enumerate(ffn_d[s], start=1):
            rows.append((model, s, conv, "ffn", "delta", lay, float(v), 10))
    return pd.DataFrame(rows, columns=["model", "sample", "convention", "module", "quantity",
                                       "layer", "value", "tokens"])


def noisy(mean: np.ndarray, n: int, sd: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(mean, float)[None, :] + rng.normal(0, sd, (n, len(mean)))


L = 8
SEED = 1  # seed of the synthetic depth case whose intervals straddle every boundary


@pytest.mark.parametrize("top, n, sd, drop, ratio", [
    (0.05, 20, 0.01, "holds", "holds"),      # 2 nats low, 0.05 at top
    (3.0, 20, 0.01, "fails", "fails"),       # top above the low layers
    (2.0, 4, 1.0, "inconclusive", "fails"),  # drop ≈ 0; top ≈ low, far above 0.1·low
    (0.2, 6, 0.2, "holds", "inconclusive"),  # top ≈ 0.1 · low
])
def test_entropy_claims(top: float, n: int, sd: float, drop: str, ratio: str) -> None:
    h = noisy(np.r_[9.0, np.full(L - 1, 2.0), top], n, sd)
    recs = ic.entropy_claims(entropies(h, np.zeros((n, L))), model="m", run="m",
                             convention="raw")
    assert [r.claim_id for r in recs] == ["bupo.entropy_drop", "bupo.entropy_top"]
    assert [r.verdict for r in recs] == [drop, ratio]
    assert recs[0].n == n and recs[0].ci_kind == "bootstrap"
    assert recs[0].value == pytest.approx(float(np.mean(h[:, 1:3].mean(1) - h[:, L])))
    if drop == "inconclusive":
        assert recs[0].n_needed is not None and recs[0].n_needed > n


@pytest.mark.parametrize("early, late, sd, n, verdicts", [
    (1.0, -1.0, 0.05, 20, ["holds", "holds"]),
    (-1.0, 1.0, 0.05, 20, ["fails", "fails"]),
    (0.05, -0.05, 1.0, 5, ["inconclusive", "inconclusive"]),
])
def test_eic_claims(early: float, late: float, sd: float, n: int,
                    verdicts: list[str]) -> None:
    d = noisy(np.r_[early, early, np.zeros(L - 4), late, late], n, sd)
    recs = ic.eic_claims(entropies(np.ones((n, L + 1)), d), model="m", run="m",
                         convention="raw")
    assert [r.verdict for r in recs] == verdicts


def _boundary_json(d: np.ndarray) -> dict:
    from pipeline.decomposition.boundary import boundary_layer
    curve = d.mean(axis=0)
    return {"boundary_layer": boundary_layer(curve), "convention": "raw", "num_layers": L,
            "delta_ffn": curve.tolist()}


def test_boundary_claim_holds_fails_inconclusive() -> None:
    n = 20
    early = noisy(np.r_[1.0, 1.0, -np.ones(L - 2)], n, 0.01)  # exploration ends at 2
    rec = ic.boundary_claim(entropies(np.ones((n, L + 1)), early), _boundary_json(early),
                            model="m", run="m")
    assert (rec.verdict, rec.value, rec.ci_low, rec.ci_high) == ("holds", 0.25, 0.25, 0.25)
    flat = noisy(np.r_[np.zeros(L - 1), -5.0], n, 0.01)  # no exploration: fallback L−1
    rec = ic.boundary_claim(entropies(np.ones((n, L + 1)), flat), _boundary_json(flat),
                            model="m", run="m")
    assert rec.verdict == "fails" and rec.value == 7 / 8 and "fallback" in rec.reason
    # half the samples end exploration at 2, half at 6: the rule flips between resamples
    a = np.r_[1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0]
    b = np.r_[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0]
    mix = np.array([a, b] * 4)
    rec = ic.boundary_claim(entropies(np.ones((8, L + 1)), mix), _boundary_json(mix),
                            model="m", run="m")
    assert rec.verdict == "inconclusive" and rec.ci_low < 0.5 < rec.ci_high


def test_llama_small_dh() -> None:
    n, big = 10, 12
    llama_d = noisy(np.r_[np.full(big - 3, 0.001), -0.1, -0.1, -0.1], n, 0.0005)
    qwen_d = noisy(np.r_[np.full(big - 3, 2.0), -5.0, -5.0, -5.0], n, 0.1, seed=1)
    ents = {"ll": entropies(np.ones((n, big + 1)), llama_d, "ll"),
            "qw": entropies(np.ones((n, big + 1)), qwen_d, "qw")}
    recs = ic.llama_claims(ents, {"ll": "llama", "qw": "qwen"})
    by = {(r.claim_id, r.model): r for r in recs}
    small = by[("bupo.llama_small_dh", "ll")]
    assert small.verdict == "holds" and small.split == "vs:qw" and small.n == 2 * n
    assert small.family == "llama"
    # a Qwen-like curve labelled Llama is not small
    recs = ic.llama_claims({"ll": ents["qw"], "qw": ents["qw"]}, {"ll": "llama", "qw": "qwen"})
    assert {r.claim_id: r.verdict for r in recs} == {"bupo.llama_small_dh": "fails"}
    only = ic.llama_claims({"ll": ents["ll"]}, {"ll": "llama"})
    assert only[0].verdict == "not measurable" and "only Llama" in only[0].reason


# ------------------------------------------------------------------ attention
def heads_table(sets: list[tuple[set, set]]) -> pd.DataFrame:
    rows = []
    for s, (loc, glob) in enumerate(sets):
        for layer in range(1, 5):
            for head in range(8):
                g = ("local" if (layer, head) in loc else
                     "global" if (layer, head) in glob else "middle")
                rows.append(("m", s, layer, head, float(head), g))
    return pd.DataFrame(rows, columns=["model", "sample", "layer", "head", "distance",
                                       "group"])


def test_head_stability() -> None:
    a = ({(1, 0), (1, 1), (1, 2)}, {(2, 5), (2, 6), (2, 7)})
    pool = [(lay, h) for lay in (3, 4) for h in range(8)] + [(1, h) for h in range(3, 8)]
    others = [({*pool[6 * i:6 * i + 3]}, {*pool[6 * i + 3:6 * i + 6]}) for i in range(3)]
    rec = rc.head_stability_claim(heads_table([a] * 6), run="m")
    assert rec.verdict == "holds" and rec.value == 1.0
    rec = rc.head_stability_claim(heads_table([a] + others), run="m")
    assert rec.verdict == "fails" and rec.value == 0.0
    rec = rc.head_stability_claim(heads_table([a] * 3 + others), run="m")
    assert rec.verdict == "inconclusive" and rec.value == pytest.approx(0.5)


def tokens_table(n_resp: int, n_tok: int, *, gap: float, sd: float, follow: str,
                 seed: int = 0) -> pd.DataFrame:
    """tokens.parquet: preplan every 5th token; anchors right after a preplan token
    (``follow="after"``), far from any (``"far"``) or at random (``"random"``); entropy
    ``gap`` higher at preplan and anchor tokens."""
    rng = np.random.default_rng(seed)
    parts = []
    for s in range(n_resp):
        pos = np.arange(n_tok)
        pre = pos % 5 == 0
        anc = {"after": pos % 5 == 1, "far": pos % 5 == 4,
               "random": rng.permutation(pos % 5 == 1)}[follow]
        ent = 1.0 + rng.normal(0, sd, n_tok) + gap * (pre | anc)
        parts.append(pd.DataFrame({
            "model": "m", "sample": s, "position": pos, "token_id": pos, "token": "x",
            "waad": rng.uniform(0, 10, n_tok), "fai": rng.uniform(0, 0.1, n_tok),
            "delta": rng.uniform(0, 1, n_tok), "preplan": pre, "anchor": anc,
            "dominated": False, "intro": False, "intro_of": -1, "entropy": ent,
            "entropy_next": ent}))
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("gap, sd, n, verdict", [
    (0.5, 0.1, 10, "holds"), (-0.5, 0.1, 10, "fails"), (0.0, 1.0, 3, "inconclusive")])
def test_rhythm_entropy(gap: float, sd: float, n: int, verdict: str) -> None:
    from pipeline.attention.stage import summarize
    tok = tokens_table(n, 40, gap=gap, sd=sd, follow="after")
    recs = rc.entropy_claims(tok, summarize(tok), run="m")
    assert [r.claim_id for r in recs] == ["rhythm.preplan_entropy", "rhythm.anchor_entropy"]
    assert {r.verdict for r in recs} == {verdict}


@pytest.mark.parametrize("follow, n, verdict", [
    ("after", 10, "holds"), ("far", 10, "fails"), ("random", 3, "inconclusive")])
def test_follows_claim(follow: str, n: int, verdict: str) -> None:
    from pipeline.attention.stage import summarize
    tok = tokens_table(n, 40, gap=0.0, sd=0.1, follow=follow, seed=2)
    summary = summarize(tok, k=1)
    summary["params"] = {"k": 1}
    rec = rc.follows_claim(tok, summary, run="m")
    assert rec.verdict == verdict
    assert rec.value == summary["anchor_follows_preplan_lift"]
    assert "≠" not in rec.reason  # the bootstrap's statistic is the stage's lift


def test_shift_claims_descriptive_with_interval() -> None:
    base = tokens_table(8, 30, gap=0, sd=0.1, follow="after")
    trained = base.assign(waad=base["waad"] + 2.0)
    recs = rc.shift_claims(trained, base, run="m/grpo/seed1")
    waad = recs[0]
    assert waad.claim_id == "rhythm.rl_waad_shift" and waad.verdict == "descriptive"
    assert waad.value == pytest.approx(2.0) and waad.ci_low < 2.0 < waad.ci_high
    assert waad.run == "m/grpo/seed1" and waad.model == "m" and waad.n == 16


# ------------------------------------------------------------------ depth
def write_depth(root: Path, *, top_share: float, flip: float, fw_gap: float,
                dom: int, n: int = 40, spread: int = 1, seed: int = 0) -> None:
    """A natural-text depth output of L = 10 blocks with known answers."""
    rng = np.random.default_rng(seed)
    d = root / "depth" / "m"
    d.mkdir(parents=True)
    Ld, early = 10, [1, 2]
    base = []
    for p in range(n):
        for lay in range(Ld + 1):
            top = rng.random() < top_share
            base.append(("m", "logit", p, lay, 5, 1, 2, 2, "Top1-10" if top else "11-100",
                         bool(rng.random() < flip)))
    bdf = pd.DataFrame(base, columns=["model", "lens", "prompt", "layer", "rank", "top1",
                                      "final", "target", "top1_bucket", "flip"])
    bdf.to_parquet(d / "baseline.parquet")
    e = bdf[bdf.layer.isin(early)]
    is_top = e.top1_bucket == "Top1-10"
    pos = []
    for psg in range(n):
        for tag, wc, mu in (("DET", "function", 5.0), ("NOUN", "content", 5.0 + fw_gap)):
            pos.append(("m", "logit", f"{psg}:{tag}", psg, tag, wc, True,
                        int(np.clip(round(mu + rng.normal(0, 2)), 1, Ld))))
    pdf = pd.DataFrame(pos, columns=["model", "lens", "id", "passage", "upos", "word_class",
                                     "correct", "earliest_k1"])
    pdf.to_parquet(d / "pos.parquet")
    mq = pd.DataFrame({"model": "m", "lens": "logit", "id": range(n), "correct": True,
                       "dominate_layer": dom + rng.integers(-spread, spread + 1, n),
                       "choice_settled_layer_stays": 9})
    mq.to_parquet(d / "mcq.parquet")
    means = pdf.groupby("upos")["earliest_k1"].mean()
    claims = [
        {"claim": "early guesses are mostly high-frequency tokens", "lens": "logit",
         "measured": {"mean_top1_10_share_early": float(is_top.mean())}},
        {"claim": ">70 % of early high-frequency guesses are later refined (flipped)",
         "lens": "logit",
         "measured": {"flip_rate_top1_10_early": float(e[is_top].flip.mean())}},
        {"claim": "function words (DET, ADP, PUNCT) are decided earliest (POS)",
         "lens": "logit", "measured": {
             "mean_earliest_layer": means.to_dict(), "n_correct": {"DET": n, "NOUN": n},
             "word_class": {"DET": "function", "NOUN": "content"}}},
        {"claim": "valid options reach the top in the first half of the layers, ...",
         "lens": "logit", "measured": {
             "median_dominate_layer": float(np.median(mq.dominate_layer)),
             "median_choice_settled_layer_stays": 9.0}},
    ]
    (d / "summary.json").write_text(json.dumps({
        "num_layers": Ld, "builtin_text": False, "lenses": ["logit"], "claims": claims,
        "spec": {"claims": {"early_frac": 0.2, "min_n": 5}}}))


@pytest.mark.parametrize("kw, expect", [
    (dict(top_share=0.9, flip=0.9, fw_gap=4.0, dom=3),
     {"early_freq": "holds", "early_flip": "holds", "function_words": "holds",
      "mcq_options_early": "holds", "mcq_choice_late": "holds"}),
    (dict(top_share=0.3, flip=0.3, fw_gap=-4.0, dom=8),
     {"early_freq": "fails", "early_flip": "fails", "function_words": "fails",
      "mcq_options_early": "fails", "mcq_choice_late": "holds"}),
    (dict(top_share=0.55, flip=0.7, fw_gap=0.0, dom=5, n=12, spread=3, seed=SEED),
     {"early_freq": "inconclusive", "early_flip": "inconclusive",
      "function_words": "inconclusive", "mcq_options_early": "inconclusive",
      "mcq_choice_late": "holds"}),
])
def test_depth_claims(tmp_path: Path, kw: dict, expect: dict) -> None:
    write_depth(tmp_path, **kw)
    recs = {r.claim_id: r for r in dc.depth_claims(tmp_path, "m")}
    got = {k.split(".")[1]: r.verdict for k, r in recs.items()
           if k.split(".")[1] in expect}
    assert got == expect
    for r in recs.values():
        assert r.claim_id.endswith(".logit") and "≠" not in r.reason
    facts = recs["depth.fact_first_token.logit"]
    assert facts.verdict == "not measurable"


def test_collect_skips_missing(tmp_path: Path) -> None:
    assert collect_mod.collect(tmp_path, models=["none"], runs=[]) == []
