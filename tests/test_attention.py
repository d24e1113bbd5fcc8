"""pipeline.attention (docs/methods.md §3) against a brute-force reference built from the full
eager ``output_attentions`` maps, on tiny random Qwen3/Llama models with GQA/MQA."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from pipeline.attention import (
    METHODS,
    Rhythm,
    capture_qk,
    credit_weights,
    default_layers,
    find_attention_modules,
    rhythm,
)
from pipeline.attention.head_stats import attention_rows
from pipeline.models.builtin import build_model

SMALL = dict(window=4, h_lo=3, h_hi=12, head_frac=0.3, top_frac=0.4)


def _batch(pad: str, vocab: int, seed: int = 0):
    """3 sequences of different lengths (T=40), padded on ``pad``; responses of different
    lengths after prompts of different lengths."""
    g = torch.Generator().manual_seed(seed)
    lens, prompts, t = [40, 31, 23], [9, 5, 12], 40
    ids = torch.full((3, t), 0, dtype=torch.long)
    am = torch.zeros(3, t, dtype=torch.long)
    rm = torch.zeros(3, t, dtype=torch.long)
    for b, (n, p) in enumerate(zip(lens, prompts, strict=True)):
        off = t - n if pad == "left" else 0
        ids[b, off : off + n] = torch.randint(4, vocab, (n,), generator=g)
        am[b, off : off + n] = 1
        rm[b, off + p : off + n] = 1
    return ids, am, rm


def _eager_attn(model, ids, am, layers):
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=am, position_ids=pos, output_attentions=True)
    return [out.attentions[i].double() for i in layers]


def _count(frac, n):
    return 0 if n == 0 else min(n, max(1, math.floor(frac * n + 0.5)))


def _kurtosis(xs):
    """Pearson kurtosis m4 / m2² with population moments; NaN below 4 values or constant."""
    n = len(xs)
    if n < 4 or max(xs) == min(xs):
        return math.nan
    mu = sum(xs) / n
    m2 = sum((x - mu) ** 2 for x in xs) / n
    m4 = sum((x - mu) ** 4 for x in xs) / n
    return m4 / (m2 * m2)


def naive_rhythm(model, ids, am, rm, layers, *, window, h_lo, h_hi, head_frac, top_frac, k=3,
                 group_scope="pooled"):
    """Brute force from the definitions, one sequence at a time (python loops)."""
    maps = [a.tolist() for a in _eager_attn(model, ids, am, layers)]
    b_n, t_n = ids.shape
    n_heads = len(maps[0][0])
    out = {
        n: []
        for n in ("d", "loc", "glob", "waad", "fai", "delta", "pre", "anc", "dom", "intro",
                  "recv", "fai_recv", "kurt")
    }
    for b in range(b_n):
        real = [t for t in range(t_n) if am[b, t]]
        rank = {t: i for i, t in enumerate(real)}  # unpadded positions
        resp = [t for t in range(t_n) if rm[b, t]]
        if not resp:  # no response rows: no heads, NaN everywhere
            for key in out:
                out[key].append([] if key in ("loc", "glob", "recv", "pre", "anc", "dom")
                                else {})
            out["d"][-1] = [[math.nan] * n_heads for _ in layers]
            continue
        d = [
            [
                sum(
                    sum(maps[li][b][h][t][s] * (rank[t] - rank[s]) for s in real if s <= t)
                    for t in resp
                )
                / len(resp)
                for h in range(n_heads)
            ]
            for li in range(len(layers))
        ]
        heads = [(li, h) for li in range(len(layers)) for h in range(n_heads)]
        pools = ([heads] if group_scope == "pooled" else
                 [[(li, h) for h in range(n_heads)] for li in range(len(layers))])
        loc, glob = [], []
        for pool in pools:
            n = _count(head_frac, len(pool))
            loc += sorted(pool, key=lambda x: (d[x[0]][x[1]], heads.index(x)))[:n]
            glob += sorted(pool, key=lambda x: (-d[x[0]][x[1]], heads.index(x)))[:n]

        def mean_map(group, t, s, b=b):
            return sum(maps[li][b][h][t][s] for li, h in group) / len(group)

        waad = {
            t: sum(mean_map(loc, t, s) * min(rank[t] - rank[s], window) for s in real if s <= t)
            for t in resp
        }
        fai = {}
        for s in resp:
            ts = [t for t in resp if rank[s] + h_lo <= rank[t] <= min(len(real), rank[s] + h_hi)]
            fai[s] = sum(mean_map(glob, t, s) for t in ts) / len(ts) if ts else 0.0
        # receiver heads: per-head FAI f_h[s] over the tokens with a non-empty T(s), the
        # kurtosis of each head's f_h, the top heads by kurtosis (NaN last), their mean f_h
        windows = {
            s: [t for t in resp if rank[s] + h_lo <= rank[t] <= min(len(real), rank[s] + h_hi)]
            for s in resp
        }
        f = {
            (li, h): {s: sum(maps[li][b][h][t][s] for t in ts) / len(ts)
                      for s, ts in windows.items() if ts}
            for li, h in heads
        }
        kurt = {x: _kurtosis(list(f[x].values())) for x in heads}
        recv = []
        for pool in pools:
            n = _count(head_frac, len(pool))
            recv += sorted(pool, key=lambda x: (math.inf if math.isnan(kurt[x]) else -kurt[x],
                                                heads.index(x)))[:n]
        fai_recv = {s: sum(f[x][s] for x in recv) / len(recv) if windows[s] else 0.0
                    for s in resp}
        delta = {t: abs(waad[t] - waad[t + 1]) if t + 1 in waad else 0.0 for t in resp}
        m = _count(top_frac, len(resp))
        pre = sorted(resp, key=lambda t: (-delta[t], t))[:m]
        anc = sorted(resp, key=lambda t: (-fai[t], t))[:m]
        tw, td = statistics.median(waad.values()), statistics.median(delta.values())
        dom, intro = [], {}
        for t in anc:
            us = [u for u in range(t - k, t) if u in delta]
            if us and waad[t] <= tw and max(delta[u] for u in us) >= td:
                dom.append(t)
                intro[t] = max(us, key=lambda u: (delta[u], -u))
        for key, val in (
            ("d", d),
            ("loc", loc),
            ("glob", glob),
            ("waad", waad),
            ("fai", fai),
            ("delta", delta),
            ("pre", pre),
            ("anc", anc),
            ("dom", dom),
            ("intro", intro),
            ("recv", recv),
            ("fai_recv", fai_recv),
            ("kurt", kurt),
        ):
            out[key].append(val)
    return out


def _dense(values: dict[int, float], t_n: int) -> torch.Tensor:
    x = torch.full((t_n,), math.nan, dtype=torch.float64)
    for t, v in values.items():
        x[t] = v
    return x


def _mask(idx, t_n: int) -> torch.Tensor:
    x = torch.zeros(t_n, dtype=torch.bool)
    x[list(idx)] = True
    return x


def assert_matches_naive(r: Rhythm, ref, t_n: int, n_heads: int) -> None:
    close = dict(atol=1e-5, rtol=1e-5, equal_nan=True)
    for b in range(len(ref["d"])):
        torch.testing.assert_close(
            r.head_distance[b].double(), torch.tensor(ref["d"][b], dtype=torch.float64), **close
        )
        for name, key in (("local_heads", "loc"), ("global_heads", "glob"),
                          ("receiver_heads", "recv")):
            expect = torch.zeros(len(r.layers), n_heads, dtype=torch.bool)
            for li, h in ref[key][b]:
                expect[li, h] = True
            assert torch.equal(getattr(r, name)[b], expect), name
        for name, key in (("waad", "waad"), ("fai", "fai"), ("delta", "delta"),
                          ("fai_receiver", "fai_recv")):
            torch.testing.assert_close(
                getattr(r, name)[b].double(), _dense(ref[key][b], t_n), **close
            )
        for name, key in (("preplan", "pre"), ("anchor", "anc"), ("dominated", "dom")):
            assert torch.equal(getattr(r, name)[b], _mask(ref[key][b], t_n)), name
        assert torch.equal(r.intro[b], _mask(ref["intro"][b].values(), t_n))
        for t, u in ref["intro"][b].items():
            assert r.intro_of[b, t] == u


@pytest.fixture(params=["qwen3-mqa", "llama-mha"], scope="module")
def other_model(request, char_tokenizer):
    """3 blocks; MQA with a non-default head_dim (Qwen3) and plain multi-head (Llama)."""
    arch, kind = request.param.split("-")
    spec = dict(
        arch=arch,
        hidden_size=32,
        intermediate_size=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=1 if kind == "mqa" else 4,
        head_dim=12 if kind == "mqa" else None,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    return build_model(spec, char_tokenizer, seed=1).eval()


# ---------------------------------------------------------------------------- capture


@pytest.mark.parametrize("pad", ["left", "right"])
def test_captured_qk_reproduce_eager_attention(tiny_model, pad):
    ids, am, _ = _batch(pad, tiny_model.config.vocab_size)
    layers = [0, 1]
    qk = capture_qk(tiny_model, ids, am, layers)
    eager = _eager_attn(tiny_model, ids, am, layers)
    mods = find_attention_modules(tiny_model)
    t_n = ids.shape[1]
    allowed = torch.tril(torch.ones(t_n, t_n, dtype=torch.bool))[None] & am.bool()[:, None, :]
    for i, ref in zip(layers, eager, strict=True):
        q, k = qk[i]
        assert q.shape[1] == tiny_model.config.num_attention_heads
        assert k.shape[1] == tiny_model.config.num_key_value_heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        s = (q @ k.transpose(-1, -2)) * mods[i].scaling
        a = s.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
        real = am.bool()[:, None, :, None].expand_as(a)  # compare real query rows
        torch.testing.assert_close(a[real].double(), ref[real], atol=1e-6, rtol=1e-5)
        rows = attention_rows(*qk[i], am.bool(), 0, t_n, scaling=mods[i].scaling)
        assert not rows.isnan().any()
        torch.testing.assert_close(rows[real].double(), ref[real], atol=1e-6, rtol=1e-5)


def test_early_stop_skips_later_layers(tiny_model):
    ids, am, rm = _batch("right", tiny_model.config.vocab_size)
    fired: list[str] = []
    blocks = tiny_model.model.layers
    hooks = [
        blocks[1].register_forward_hook(lambda *a: fired.append("block1")),
        blocks[0].self_attn.register_forward_hook(lambda *a: fired.append("attn0")),
        blocks[0].register_forward_pre_hook(lambda *a: fired.append("block0-in")),
        tiny_model.lm_head.register_forward_hook(lambda *a: fired.append("lm_head")),
    ]
    try:
        r = rhythm(tiny_model, ids, rm, am, layers=[0], **SMALL)
        assert r.layers == (0,)
        # layer 0's q/k come from its normed input: block 0 is not even entered, its
        # attention (and everything after) never ran
        assert fired == []
        fired.clear()
        with torch.no_grad():
            tiny_model(ids, attention_mask=am)
        assert set(fired) == {"block0-in", "attn0", "block1", "lm_head"}
    finally:
        for h in hooks:
            h.remove()


def test_layers_default_and_errors(tiny_model):
    assert default_layers(28) == [9, 11, 14, 16, 18]
    assert default_layers(36) == [12, 15, 18, 21, 24]
    assert default_layers(2) == [0, 1]
    ids, am, rm = _batch("right", tiny_model.config.vocab_size)
    assert rhythm(tiny_model, ids, rm, am, **SMALL).layers == (0, 1)
    with pytest.raises(ValueError, match="nope"):
        find_attention_modules(tiny_model, r"nope\.(\d+)")
    with pytest.raises(ValueError, match="layers"):
        rhythm(tiny_model, ids, rm, am, layers=[5])
    holes = am.clone()
    holes[0, 3] = 0
    with pytest.raises(ValueError, match="contiguous"):
        rhythm(tiny_model, ids, rm * holes, holes)
    with pytest.raises(ValueError, match="padding"):
        rhythm(tiny_model, ids, torch.ones_like(ids), am)  # am has right padding


# ----------------------------------------------------------------- metrics vs brute force


@pytest.mark.parametrize("pad", ["left", "right"])
def test_rhythm_matches_naive(tiny_model, pad):
    ids, am, rm = _batch(pad, tiny_model.config.vocab_size)
    r = rhythm(tiny_model, ids, rm, am, layers=[0, 1], chunk_size=7, **SMALL)
    ref = naive_rhythm(tiny_model, ids, am, rm, [0, 1], **SMALL)
    assert_matches_naive(r, ref, ids.shape[1], tiny_model.config.num_attention_heads)
    assert r.anchor.any() and r.preplan.any() and r.dominated.any()
    outside = ~rm.bool()
    assert r.waad[outside].isnan().all() and r.fai[outside].isnan().all()
    assert not (r.preplan | r.anchor | r.intro)[outside].any()


@pytest.mark.parametrize("pad", ["left", "right"])
def test_rhythm_matches_naive_gqa_variants_and_defaults(other_model, pad):
    ids, am, rm = _batch(pad, other_model.config.vocab_size, seed=3)
    r = rhythm(other_model, ids, rm, am, layers=[0, 2], **SMALL)
    ref = naive_rhythm(other_model, ids, am, rm, [0, 2], **SMALL)
    assert_matches_naive(r, ref, ids.shape[1], other_model.config.num_attention_heads)
    # paper defaults (W=10, H_lo=10, H_hi=100) and the default layer choice
    r = rhythm(other_model, ids, rm, am)
    defaults = dict(window=10, h_lo=10, h_hi=100, head_frac=0.3, top_frac=0.4)
    ref = naive_rhythm(other_model, ids, am, rm, list(r.layers), **defaults)
    assert_matches_naive(r, ref, ids.shape[1], other_model.config.num_attention_heads)


@pytest.mark.parametrize("scope", ["pooled", "per_layer"])
@pytest.mark.parametrize("pad", ["left", "right"])
def test_receiver_heads_match_naive(tiny_model, pad, scope):
    """Receiver heads (top kurtosis of the per-head FAI) and their FAI against the brute
    force, both group scopes, with a sequence that has no response rows."""
    ids, am, rm = _batch(pad, tiny_model.config.vocab_size, seed=7)
    rm[1] = 0  # no response: no heads, NaN
    kw = dict(SMALL, head_frac=0.25)
    r = rhythm(tiny_model, ids, rm, am, layers=[0, 1], group_scope=scope, chunk_size=6, **kw)
    ref = naive_rhythm(tiny_model, ids, am, rm, [0, 1], group_scope=scope, **kw)
    assert_matches_naive(r, ref, ids.shape[1], tiny_model.config.num_attention_heads)
    assert not r.receiver_heads[1].any() and r.fai_receiver[1].isnan().all()
    assert r.fai_receiver.dtype == torch.float32
    n = 2 if scope == "pooled" else 1  # round(0.25·8) pooled, round(0.25·4) per layer
    assert (r.receiver_heads[[0, 2]].sum((-1, -2)) == n * (1 if scope == "pooled" else 2)).all()
    outside = ~rm.bool()
    assert r.fai_receiver[outside].isnan().all()
    # not the global heads in disguise: the kurtosis ranking picks other heads somewhere
    assert not torch.equal(r.receiver_heads, r.global_heads)
    kurt = [v for b in (0, 2) for v in ref["kurt"][b].values()]
    assert all(v >= 1 for v in kurt)  # none NaN here; m4/m2² ≥ 1 (Pearson, not excess)


def test_receiver_scores_by_hand():
    """Kurtosis of known samples; NaN below 4 tokens with a non-empty T(s), and for a
    constant f_h."""
    from pipeline.attention.rhythm import receiver_scores

    rm = torch.zeros(2, 9, dtype=torch.bool)
    rm[0, :] = True  # h_lo=h_hi=5: T(s) = {s+5}, non-empty for s = 0..3 (4 tokens)
    rm[1, 4:] = True  # s = 4..8: s+5 > 8, every T(s) is empty
    per_head = torch.zeros(2, 1, 3, 9)
    per_head[0, 0, 0, :4] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # Bernoulli(1/4): 7/3
    per_head[0, 0, 1, :4] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # symmetric ±1: 1
    per_head[0, 0, 2, :4] = 0.3  # constant: NaN
    per_head[0, 0, 2, 4:] = 5.0  # outside the counted tokens: ignored
    k = receiver_scores(per_head, rm, 5, 5)
    assert k.dtype == torch.float64 and k.shape == (2, 1, 3)
    assert k[0, 0, 0].item() == pytest.approx(7 / 3) and k[0, 0, 1].item() == pytest.approx(1)
    assert k[0, 0, 2].isnan() and k[1].isnan().all()


@pytest.mark.parametrize("arch", ["mistral-sliding", "qwen2-bias"])
def test_other_architectures(arch):
    """Mistral with a sliding window (masked in the recomputation too) and Qwen2 (q/k
    biases), built directly from transformers' config classes."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation="eager",
    )
    torch.manual_seed(2)
    if arch.startswith("mistral"):
        model = MistralForCausalLM(MistralConfig(sliding_window=6, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    model.eval()
    ids, am, rm = _batch("left", 64, seed=4)
    r = rhythm(model, ids, rm, am, layers=[0, 1], chunk_size=5, **SMALL)
    ref = naive_rhythm(model, ids, am, rm, [0, 1], **SMALL)
    assert_matches_naive(r, ref, ids.shape[1], 4)


def test_chunk_size_invariance(tiny_model):
    ids, am, rm = _batch("left", tiny_model.config.vocab_size, seed=5)
    base = rhythm(tiny_model, ids, rm, am, chunk_size=1, **SMALL)
    for chunk in (3, 16, 1000, None):
        r = rhythm(tiny_model, ids, rm, am, chunk_size=chunk, **SMALL)
        for name in ("head_distance", "waad", "fai", "delta"):
            torch.testing.assert_close(
                getattr(r, name), getattr(base, name), atol=1e-6, rtol=1e-6, equal_nan=True
            )
        for name in ("local_heads", "preplan", "anchor", "dominated", "intro"):
            assert torch.equal(getattr(r, name), getattr(base, name))
    tiny = rhythm(tiny_model, ids, rm, am, chunk_bytes=4 * 3 * 4 * 40 * 2, **SMALL)
    torch.testing.assert_close(tiny.fai, base.fai, atol=1e-6, rtol=1e-6, equal_nan=True)


def test_padding_side_invariance(tiny_model):
    """Distances live in the unpadded index space: left and right padding agree."""
    ids_l, am_l, rm_l = _batch("left", tiny_model.config.vocab_size)
    ids_r, am_r, rm_r = _batch("right", tiny_model.config.vocab_size)
    left = rhythm(tiny_model, ids_l, rm_l, am_l, **SMALL)
    right = rhythm(tiny_model, ids_r, rm_r, am_r, **SMALL)
    torch.testing.assert_close(left.head_distance, right.head_distance, atol=1e-5, rtol=1e-5)
    for b in range(3):
        sel_l, sel_r = am_l[b].bool(), am_r[b].bool()
        torch.testing.assert_close(
            left.waad[b, sel_l], right.waad[b, sel_r], atol=1e-5, rtol=1e-5, equal_nan=True
        )
        assert torch.equal(left.anchor[b, sel_l], right.anchor[b, sel_r])


def test_open_choices_are_configurable(tiny_model):
    ids, am, rm = _batch("right", tiny_model.config.vocab_size)
    base = rhythm(tiny_model, ids, rm, am, **SMALL)
    per_layer = rhythm(tiny_model, ids, rm, am, group_scope="per_layer", **SMALL)
    # per layer: the same number of heads in each layer
    assert (per_layer.local_heads.sum(-1) == per_layer.local_heads[:, :1].sum(-1)).all()
    nan_empty = rhythm(tiny_model, ids, rm, am, fai_empty=float("nan"), **SMALL)
    empty = rm.bool() & (base.fai == 0)
    assert empty.any() and nan_empty.fai[empty].isnan().all()
    strict = rhythm(tiny_model, ids, rm, am, tau_waad=-1.0, **SMALL)
    assert not strict.dominated.any()
    with pytest.raises(ValueError, match="group_scope"):
        rhythm(tiny_model, ids, rm, am, group_scope="bogus")


# ---------------------------------------------------------------------- credit weights


def _hand_rhythm() -> Rhythm:
    """One sequence, T=10, response = positions 2..8."""
    t_n = 10

    def m(*idx):
        x = torch.zeros(1, t_n, dtype=torch.bool)
        x[0, list(idx)] = True
        return x

    nan = torch.full((1, t_n), math.nan)
    return Rhythm(
        layers=(0,),
        head_distance=torch.zeros(1, 1, 2),
        local_heads=torch.ones(1, 1, 2).bool(),
        global_heads=torch.ones(1, 1, 2).bool(),
        waad=nan,
        fai=nan,
        delta=nan,
        preplan=m(3, 4),
        anchor=m(2, 5, 7),
        dominated=m(5),
        intro=m(2, 4),
        intro_of=torch.full((1, t_n), -1),
        response_mask=m(*range(2, 9)),
        top_frac=0.4,
    )


def test_credit_formulas_on_hand_made_rhythm():
    r = _hand_rhythm()
    g = lambda method, **kw: credit_weights(r, method, **kw)[0].tolist()  # noqa: E731
    assert g("local") == [1, 1, 1, 1.5, 1.5, 1, 1, 1, 1, 1]
    assert g("global", gamma_amp=2.0) == [1, 1, 2, 1, 1, 2, 1, 2, 1, 1]
    # T_glob∖D = {2, 7}: +0.5; D = {5}: +(1−α)·0.5; intro(D) = {2, 4}: +α·0.5 (additive)
    assert g("coupled", alpha=0.5) == [1, 1, 1.75, 1, 1.25, 1.25, 1, 1.5, 1, 1]
    assert g("coupled", alpha=0.2) == pytest.approx([1, 1, 1.6, 1, 1.1, 1.4, 1, 1.5, 1, 1])
    # shift=1: token t takes row t−1; row 8 is the last response row → token 9 is outside
    assert g("global", shift=1) == [1, 1, 1, 1.5, 1, 1, 1.5, 1, 1.5, 1]
    ent = torch.tensor([[9.0, 9.0, 0.1, 0.5, 0.3, 0.9, 0.2, 0.8, 0.4, 9.0]])
    assert g("entropy", entropy=ent) == [1, 1, 1, 1.5, 1, 1.5, 1, 1.5, 1, 1]  # 3 of 7
    rnd = credit_weights(r, "random", seed=3)
    assert rnd[0, :2].eq(1).all() and rnd[0, 9] == 1 and (rnd == 1.5).sum() == 3
    assert torch.equal(rnd, credit_weights(r, "random", seed=3))
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(rnd, credit_weights(r, "random", generator=gen))
    out = credit_weights(r, "coupled")
    assert out.dtype == torch.float32 and not out.requires_grad and out.shape == (1, 10)


def test_credit_errors():
    r = _hand_rhythm()
    with pytest.raises(ValueError, match="known") as err:
        credit_weights(r, "bogus")
    for name in METHODS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="entropy"):
        credit_weights(r, "entropy")
    with pytest.raises(ValueError, match="shift"):
        credit_weights(r, "local", shift=2)


@pytest.mark.parametrize("pad", ["left", "right"])
def test_alignment_with_logprobs(tiny_model, pad):
    """An anchor at attention row t* (input token ids[t*]) gets its γ at index t* of
    credit_weights, i.e. on the log-prob of ids[t*] = logits[t*−1]: column t*−1 of the
    shifted log-prob tensor; with shift=1 it moves to token t*+1."""
    ids, am, rm = _batch(pad, tiny_model.config.vocab_size)
    r = rhythm(
        tiny_model,
        ids,
        rm,
        am,
        top_frac=0.05,
        **{k: v for k, v in SMALL.items() if k != "top_frac"},
    )
    with torch.no_grad():
        logits = tiny_model(
            ids, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp(min=0)
        ).logits
    logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # [B, T−1]
    for b in range(ids.shape[0]):
        anchors = r.anchor[b].nonzero().flatten().tolist()
        t_star = int(r.fai[b].nan_to_num(-1).argmax())
        assert t_star in anchors
        gamma = credit_weights(r, "global")
        assert gamma[b, t_star] == 1.5 and set(
            gamma[b].eq(1.5).nonzero().flatten().tolist()
        ) == set(anchors)
        shaped = logp * gamma[:, 1:]  # the documented pairing
        j = t_star - 1
        assert shaped[b, j] == pytest.approx(
            1.5 * float(logits[b, t_star - 1].log_softmax(-1)[ids[b, t_star]]), rel=1e-6
        )
        g1 = credit_weights(r, "global", shift=1)
        if t_star + 1 < ids.shape[1] and rm[b, t_star + 1]:
            assert g1[b, t_star + 1] == 1.5
        assert g1[b, t_star] == (1.5 if t_star - 1 in anchors else 1.0)


def test_rhythm_name_is_the_function_and_the_module_stays_reachable():
    """The package binds ``rhythm`` to the function last, over the submodule of the same
    name (WAAD, FAI, token classes); the module is still importable by its full name."""
    import importlib
    import sys
    import types

    import pipeline.attention
    from pipeline.attention import metrics
    from pipeline.attention import rhythm as from_package

    module = importlib.import_module("pipeline.attention.rhythm")
    assert isinstance(module, types.ModuleType) and module.__name__ == "pipeline.attention.rhythm"
    assert sys.modules["pipeline.attention.rhythm"] is module
    assert from_package is metrics.rhythm and pipeline.attention.rhythm is metrics.rhythm
    assert callable(pipeline.attention.rhythm) and not isinstance(from_package, types.ModuleType)
    from pipeline.attention.rhythm import fai, token_classes, top_mask, waad

    assert {f.__module__ for f in (fai, token_classes, top_mask, waad)} == {module.__name__}
    # importing the module again does not rebind the package attribute
    importlib.import_module("pipeline.attention.rhythm")
    exec("import pipeline.attention.rhythm", {})
    assert pipeline.attention.rhythm is metrics.rhythm
