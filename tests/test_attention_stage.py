"""The attention-rhythm stage (pipeline/attention/stage.py, docs/methods.md §3): tables against a
direct ``rhythm`` call, entropies against a naive full softmax, summary statistics by
hand (the permutation baseline by enumeration), figures render."""

from __future__ import annotations

import itertools
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.attention import default_layers, find_attention_modules, rhythm
from pipeline.attention import stage as st
from pipeline.models.builtin import build_model
from pipeline.responses import batch_from_table

SPEC = dict(batch_size=2, window=4, h_lo=3, h_hi=12, head_frac=0.3, top_frac=0.4, k=3)
LENS = [(7, 30), (4, 18), (10, 45)]  # (prompt, response) lengths
RHYTHM_KW = dict(window=4, h_lo=3, h_hi=12, head_frac=0.3, top_frac=0.4, k=3)


def make_table(vocab: int, lens=LENS, seed: int = 0) -> pd.DataFrame:
    """A responses table (pipeline/responses.py columns) of random token ids."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, (p, n) in enumerate(lens):
        pi = torch.randint(10, vocab, (p,), generator=g).tolist()
        ri = torch.randint(10, vocab, (n,), generator=g).tolist()
        rows.append(dict(prompt_index=i, sample=0, item_id=str(i), prompt="", response="",
                         prompt_ids=pi, response_ids=ri, num_response_tokens=n, finished=True,
                         correct=bool(i % 2)))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def deep_model(char_tokenizer):
    """A random Qwen3 with 4 blocks (default layers [1, 2], "all" = 4 layers)."""
    spec = dict(arch="qwen3", hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4,
                num_kv_heads=2, head_dim=None, max_position_embeddings=256,
                rope_theta=10000.0, tie_word_embeddings=True)
    return build_model(spec, char_tokenizer, seed=3).eval()


def analyse(model, tokenizer, table, **spec):
    return st.analyse_responses(model, tokenizer, table, {**SPEC, **spec}, model_name="m",
                                progress=False)


def test_tables_match_direct_rhythm(tiny_model, char_tokenizer):
    table = make_table(tiny_model.config.vocab_size)
    tokens, heads, _ = analyse(tiny_model, char_tokenizer, table)
    assert len(tokens) == sum(n for _, n in LENS)
    b = batch_from_table(table, char_tokenizer.pad_token_id, padding_side="right")
    r = rhythm(tiny_model, b["input_ids"], b["response_mask"], b["attention_mask"],
               **RHYTHM_KW)
    n_l, n_h = r.head_distance.shape[1:]
    assert len(heads) == len(LENS) * n_l * n_h
    assert list(tokens.columns) == [
        "model", "sample", "position", "token_id", "token", "waad", "fai", "fai_receiver",
        "delta", "preplan", "anchor", "dominated", "intro", "intro_of", "entropy",
        "entropy_next"]
    assert list(heads.columns) == ["model", "sample", "layer", "head", "distance", "group",
                                   "receiver"]
    assert tokens["fai_receiver"].dtype == np.float64 and heads["receiver"].dtype == bool
    for i, (p, n) in enumerate(LENS):
        df = tokens[tokens["sample"] == i]
        assert (df["model"] == "m").all()
        assert df["position"].tolist() == list(range(n))
        assert df["token_id"].tolist() == table["response_ids"][i]
        assert df["token"].tolist() == [char_tokenizer.decode([x]) for x in df["token_id"]]
        sl = slice(p, p + n)
        for name in ("waad", "fai", "fai_receiver", "delta"):
            np.testing.assert_allclose(df[name].to_numpy(), getattr(r, name)[i, sl].numpy(),
                                       atol=1e-6, rtol=0)
        for name in ("preplan", "anchor", "dominated", "intro"):
            assert df[name].tolist() == getattr(r, name)[i, sl].tolist(), name
        intro_of = r.intro_of[i, sl]
        assert df["intro_of"].tolist() == torch.where(intro_of >= 0, intro_of - p, -1).tolist()
        h = heads[heads["sample"] == i]
        assert h["layer"].tolist() == [li for li in r.layers for _ in range(n_h)]
        assert h["head"].tolist() == list(range(n_h)) * n_l
        np.testing.assert_allclose(h["distance"].to_numpy(),
                                   r.head_distance[i].reshape(-1).numpy(), atol=1e-6)
        loc, glob = r.local_heads[i].reshape(-1), r.global_heads[i].reshape(-1)
        expect = ["local" if a else "global" if g else "middle"
                  for a, g in zip(loc.tolist(), glob.tolist(), strict=True)]
        assert h["group"].tolist() == expect
        assert h["receiver"].tolist() == r.receiver_heads[i].reshape(-1).tolist()
        n_group = math.floor(0.3 * n_l * n_h + 0.5)
        assert (h["group"] == "local").sum() == n_group == (h["group"] == "global").sum()
        assert h["receiver"].sum() == n_group


def test_entropy_matches_naive_softmax(tiny_model, char_tokenizer):
    table = make_table(tiny_model.config.vocab_size)
    tokens, _, _ = analyse(tiny_model, char_tokenizer, table, batch_size=3)
    for i, (p, n) in enumerate(LENS):
        ids = torch.tensor([table["prompt_ids"][i] + table["response_ids"][i]])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0].double()
        assert logits.shape[-1] == tiny_model.config.vocab_size
        df = tokens[tokens["sample"] == i].set_index("position")
        for j in (0, 1, n // 2, n - 1):
            for col, row in (("entropy", p + j - 1), ("entropy_next", p + j)):
                prob = torch.softmax(logits[row], -1)
                expect = float(-(prob * prob.log()).sum())
                assert df.loc[j, col] == pytest.approx(expect, abs=1e-5), (i, j, col)


def test_summary_by_hand(tiny_model, char_tokenizer):
    table = make_table(tiny_model.config.vocab_size, lens=[(7, 30), (4, 18), (10, 45), (3, 6)])
    tokens, _, s = analyse(tiny_model, char_tokenizer, table)
    assert s["num_responses"] == 4 and s["num_tokens"] == len(tokens) == 99
    assert s["mean_waad"] == pytest.approx(sum(tokens["waad"]) / 99)
    assert s["mean_fai"] == pytest.approx(sum(tokens["fai"]) / 99)
    for name in ("preplan", "anchor", "dominated", "intro"):
        assert s[f"frac_{name}"] == pytest.approx(sum(tokens[name]) / 99)
    for col in ("entropy", "entropy_next"):
        ent = tokens[col].tolist()
        assert s[f"{col}_all"] == pytest.approx(sum(ent) / 99)
        for name in ("preplan", "anchor", "dominated"):
            sel = [e for e, f in zip(ent, tokens[name], strict=True) if f]
            assert s[f"{col}_{name}"] == pytest.approx(sum(sel) / len(sel))
        assert s[f"{col}_anchor_ratio"] == pytest.approx(s[f"{col}_anchor"] / s[f"{col}_all"])
    follow = anchors = expected = 0.0
    for _, g in tokens.groupby("sample"):
        pre, anc = g["preplan"].tolist(), g["anchor"].tolist()
        hit = [any(pre[u] for u in range(max(0, t - 3), t)) for t in range(len(pre))]
        follow += sum(h for h, a in zip(hit, anc, strict=True) if a)
        anchors += sum(anc)
        expected += sum(anc) * sum(hit) / len(hit)
    assert s["anchor_follows_preplan"] == pytest.approx(follow / anchors)
    assert s["anchor_follows_preplan_random"] == pytest.approx(expected / anchors)
    assert s["anchor_follows_preplan_lift"] == pytest.approx(follow / expected)
    assert 0 < s["anchor_follows_preplan_pvalue"] <= 1
    assert s["layers"] == [0, 1] and s["num_empty_responses"] == 0
    assert s["params"]["window"] == 4 and s["params"]["tau_waad"] is None


def test_follow_statistics_exact_permutation_baseline():
    """Enumerate every placement of the anchors (sizes fixed per response)."""
    pre = [[1, 0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]]
    anc = [[0, 1, 0, 1, 0, 1, 0], [1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]]
    rows = [dict(model="m", sample=s, position=t, preplan=bool(p), anchor=bool(a))
            for s, (ps, as_) in enumerate(zip(pre, anc, strict=True))
            for t, (p, a) in enumerate(zip(ps, as_, strict=True))]
    out = st.follow_statistics(pd.DataFrame(rows), k=2)
    hits = [st.follows_window(np.array(p, bool), 2) for p in pre]
    assert hits[0].tolist() == [False, True, True, False, False, True, True]
    observed = sum(int((h & np.array(a, bool)).sum()) for h, a in zip(hits, anc, strict=True))
    counts = []
    per_resp = [[sum(h[list(c)]) for c in itertools.combinations(range(len(h)), sum(a))]
                for h, a in zip(hits, anc, strict=True)]
    for combo in itertools.product(*per_resp):
        counts.append(sum(combo))
    m = sum(map(sum, anc))
    assert out["anchor_follows_preplan"] == pytest.approx(observed / m)
    assert out["anchor_follows_preplan_random"] == pytest.approx(np.mean(counts) / m)
    assert out["anchor_follows_preplan_pvalue"] == pytest.approx(
        np.mean(np.array(counts) >= observed))


def test_layers_spec_and_empty_response(deep_model, char_tokenizer):
    table = make_table(deep_model.config.vocab_size, lens=[(5, 20), (6, 0), (4, 25)])
    table.index = [10, 11, 12]
    for layers, expect in ((None, default_layers(4)), ("all", [0, 1, 2, 3]), ([2, 0], [0, 2])):
        tokens, heads, s = analyse(deep_model, char_tokenizer, table, layers=layers)
        assert s["layers"] == expect
        assert sorted(heads["layer"].unique()) == expect
        assert sorted(tokens["sample"].unique()) == [0, 2]  # row positions; row 1 is empty
        assert s["num_empty_responses"] == 1 and s["num_responses"] == 2
        assert len(heads) == 2 * len(expect) * deep_model.config.num_attention_heads
    assert st.rhythm_kwargs(deep_model, {"layers": "all"})["layers"] == [0, 1, 2, 3]


def test_attention_map_matches_eager(deep_model):
    ids = torch.randint(10, 100, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = deep_model(input_ids=ids, output_attentions=True).attentions
    a = st.attention_map(deep_model, ids[0], 2, 3, rows=(8, 30))
    assert a.shape == (22, 30)
    np.testing.assert_allclose(a, eager[2][0, 3, 8:30].numpy(), atol=1e-6)
    assert len(find_attention_modules(deep_model)) == 4


def _png(fig, path) -> None:
    fig.savefig(path, dpi=60)
    plt.close(fig)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_figures_render(deep_model, char_tokenizer, tmp_path):
    table = make_table(deep_model.config.vocab_size)
    tokens, heads, _ = analyse(deep_model, char_tokenizer, table)
    for i, prompt in enumerate((False, True)):
        fig = st.heatmap_figure(deep_model, char_tokenizer, table.iloc[2], SPEC,
                                include_prompt=prompt, max_tokens=40, model_name="m")
        assert "first 40 of 45" in fig._suptitle.get_text()
        _png(fig, tmp_path / f"heat{i}.png")
    fig = st.trace_figure(tokens, 2, max_tokens=20)
    assert "first 20 of 45" in fig.axes[0].get_title()
    _png(fig, tmp_path / "trace.png")
    fig = st.trace_figure(tokens, 1)
    assert "first" not in fig.axes[0].get_title()
    _png(fig, tmp_path / "trace_full.png")
    both = pd.concat([heads, heads.assign(model="other")])
    _png(st.head_distance_figure(both), tmp_path / "dist.png")


def test_defaults_come_from_the_config_schema():
    """The stage defaults are the schema's (one place), and the schema's agree with the
    keyword defaults of the public ``rhythm`` function."""
    import inspect

    from pipeline.config import schema_defaults

    schema = schema_defaults("analysis", "attention")
    assert {**schema, "chunk_size": None} == st.DEFAULT_SPEC
    params = inspect.signature(rhythm).parameters
    for key in st.RHYTHM_KEYS:
        assert params[key].default == st.DEFAULT_SPEC[key], key
