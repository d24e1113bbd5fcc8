"""Depth analysis (docs/methods.md §4) against brute-force references.

References run each prompt unpadded through the full model with ``output_hidden_states``
(HF's last entry is post-norm, so the raw h[L] is read with a hook on the last block and
checked against it), form full-vocabulary logits / softmax in fp64 for every layer and
count ranks, earliest layers, buckets and flips with plain Python loops.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import require_module
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from pipeline.depth import (
    BUCKETS,
    TunedLens,
    bucket_mix,
    bucket_of,
    cut_passages,
    decision_depth_curve,
    earliest_layer,
    first_word_with_tag,
    flip_rates,
    frequency_ranks,
    lens_predictions,
    mcq_prompts,
    option_ranks,
    option_token_ids,
    pack_texts,
    per_layer_kl,
    pos_prompts,
    predict_options,
    predict_prompts,
    target_ranks,
    teacher_forced_fact_prompts,
    train_tuned_lens,
)

ARCHS = ("qwen3", "llama")


def make_model(arch: str, *, vocab: int = 300, layers: int = 3, tie: bool = False,
               bias: bool = False, seed: int = 0) -> nn.Module:
    """A random model with large init, so ranks spread over the vocabulary."""
    cfg_cls, model_cls = {"qwen3": (Qwen3Config, Qwen3ForCausalLM),
                          "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    config = cfg_cls(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=8, max_position_embeddings=128, tie_word_embeddings=tie,
                     initializer_range=0.2, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_cls(config)
    if bias:
        head = nn.Linear(32, vocab, bias=True)
        nn.init.normal_(head.weight, std=0.4)
        nn.init.normal_(head.bias, std=1.0)
        model.lm_head = head
    return model.eval()


def random_lens(model: nn.Module, alignment: str, *, std: float = 0.05,
                seed: int = 1) -> TunedLens:
    lens = TunedLens.from_model(model, alignment=alignment)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return lens


def ref_translator(lens: TunedLens | None, layer: int, n_layers: int) -> int | None:
    """The documented index map, written out independently."""
    if lens is None:
        return None
    if lens.alignment == "input":
        return layer if layer < n_layers else None
    return layer - 1 if layer >= 1 else None


@torch.no_grad()
def ref_hidden(model: nn.Module, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Raw h[0..L] at the last position of one unpadded sequence, and the model logits."""
    cap: list[torch.Tensor] = []
    hook = model.model.layers[-1].register_forward_hook(
        lambda _m, _a, o: cap.append(o[0] if isinstance(o, tuple) else o))
    try:
        out = model(input_ids=ids[None], output_hidden_states=True)
    finally:
        hook.remove()
    hs = list(out.hidden_states[:-1]) + [cap[0]]
    # HF's last hidden state is the post-norm one: the raw h[L] must map onto it.
    torch.testing.assert_close(model.model.norm(cap[0]), out.hidden_states[-1])
    return [h[0, -1] for h in hs], out.logits[0, -1]


@torch.no_grad()
def ref_logits(model: nn.Module, h: torch.Tensor, lens: TunedLens | None = None,
               idx: int | None = None) -> torch.Tensor:
    """Full fp64 logits W_U norm_f(h') (+b) of one hidden state."""
    if lens is not None and idx is not None:
        lin = lens.translators[idx]
        h = h.double() + h.double() @ lin.weight.double().T + lin.bias.double()
    x = model.model.norm(h.float()).double()
    head = model.get_output_embeddings()
    z = x @ head.weight.double().T
    return z + head.bias.double() if head.bias is not None else z


def ref_rank(z: torch.Tensor, t: int) -> int:
    p = torch.softmax(z, -1)
    return 1 + int((p > p[t]).sum())


def ref_predictions(model, seqs, lens=None, targets=None):
    n_layers = model.config.num_hidden_layers
    ranks, top1, final = [], [], []
    for i, s in enumerate(seqs):
        hs, logits = ref_hidden(model, torch.tensor(s))
        f = int(logits.argmax())
        t = f if targets is None else int(targets[i])
        zs = [ref_logits(model, hs[j], lens, ref_translator(lens, j, n_layers))
              for j in range(n_layers + 1)]
        ranks.append([ref_rank(z, t) for z in zs])
        top1.append([int(z.argmax()) for z in zs])
        final.append(f)
    return torch.tensor(ranks), torch.tensor(top1), torch.tensor(final)


def pad(seqs, side: str, pad_id: int = 0):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "left":
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        else:
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
    return ids, mask


def random_seqs(vocab: int, n: int = 4, lo: int = 3, hi: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(1, vocab, (k,), generator=g).tolist() for k in lengths]


# --- ranks, top-1, padding -------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("lens_kind", [None, "input", "output"])
def test_predictions_match_full_softmax(arch, side, lens_kind):
    model = make_model(arch, bias=(arch == "llama"))
    lens = None if lens_kind is None else random_lens(model, lens_kind)
    seqs = random_seqs(300, n=5)
    ids, mask = pad(seqs, side)
    g = torch.Generator().manual_seed(3)
    targets = torch.randint(0, 300, (len(seqs),), generator=g)
    # explicit targets (spread over many ranks) and the default greedy target
    r, t1, f = lens_predictions(model, ids, mask, lens=lens, targets=targets)
    rr, rt1, rf = ref_predictions(model, seqs, lens, targets)
    assert torch.equal(r, rr) and torch.equal(t1, rt1) and torch.equal(f, rf)
    assert r.dtype == torch.long and r.shape == (len(seqs), model.config.num_hidden_layers + 1)
    assert (r > 1).float().mean() > 0.5  # the test is not vacuous
    r0 = target_ranks(model, ids, mask, lens=lens)
    rr0, _, _ = ref_predictions(model, seqs, lens, None)
    assert torch.equal(r0, rr0)
    if lens_kind != "output":  # under the logit lens / input alignment h[L] is the output
        assert (r0[:, -1] == 1).all()
    # greedy token = the model's own next-token argmax
    for i, s in enumerate(seqs):
        assert int(f[i]) == int(model(torch.tensor([s])).logits[0, -1].argmax())


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_sides_agree(arch):
    model = make_model(arch, seed=2)
    seqs = random_seqs(300, n=6, seed=5)
    outs = [lens_predictions(model, *pad(seqs, side)) for side in ("left", "right")]
    outs.append(lens_predictions(model, torch.tensor(seqs[0])[None]))
    for a, b in zip(outs[0], outs[1], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(outs[0], outs[2], strict=True):
        assert torch.equal(a[:1], b)


@pytest.mark.parametrize("arch", ARCHS)
def test_ties_do_not_count(arch):
    """Zero rows of W_U (no bias) give exactly equal logits 0: strict ranks ignore them."""
    model = make_model(arch, seed=4)
    zero = [5, 17, 42, 99, 250]
    dup_src, dup = 7, 8
    with torch.no_grad():
        w = model.lm_head.weight
        w[zero] = 0.0
        w[dup] = w[dup_src]
    seqs = random_seqs(300, n=4, seed=9)
    ids, mask = pad(seqs, "left")
    n_layers = model.config.num_hidden_layers
    r = target_ranks(model, ids, mask, targets=torch.full((4,), zero[0]))
    for i, s in enumerate(seqs):
        hs, _ = ref_hidden(model, torch.tensor(s))
        for layer in range(n_layers + 1):
            z = ref_logits(model, hs[layer])
            assert all(float(z[v]) == 0.0 for v in zero)
            assert int(r[i, layer]) == 1 + int((z > 0).sum())  # the other zeros not counted
            assert int(r[i, layer]) < 1 + int((z >= 0).sum()) - (len(zero) - 2)
    # a duplicated row ties with its source: both targets get the same rank
    ra = target_ranks(model, ids, mask, targets=torch.full((4,), dup_src))
    rb = target_ranks(model, ids, mask, targets=torch.full((4,), dup))
    assert torch.equal(ra, rb)


def test_greedy_tie_is_rank_one():
    model = make_model("llama", seed=6)
    seq = random_seqs(300, n=1, seed=1)[0]
    _, logits = ref_hidden(model, torch.tensor(seq))
    best = int(logits.argmax())
    with torch.no_grad():  # a twin of the argmax row, at a higher id
        twin = 299 if best != 299 else 298
        model.lm_head.weight[twin] = model.lm_head.weight[best]
    r, t1, f = lens_predictions(model, torch.tensor([seq]))
    assert int(f[0]) == min(best, twin) and int(r[0, -1]) == 1
    r2 = target_ranks(model, torch.tensor([seq]), targets=[max(best, twin)])
    assert int(r2[0, -1]) == 1


def test_rejects_empty_rows_and_bad_targets():
    model = make_model("qwen3", layers=1)
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="no non-padding"):
        target_ranks(model, ids, torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="targets"):
        target_ranks(model, ids, targets=[1, 2, 3])


def test_predict_prompts_batches_like_single_calls(char_tokenizer):
    model = make_model("llama", vocab=len(char_tokenizer), seed=3)
    prompts = ["The cat", "A much longer prompt here", "x", "Hello there, world"]
    res = predict_prompts(model, char_tokenizer, prompts, batch_size=3)
    for i, p in enumerate(prompts):
        ids = torch.tensor([char_tokenizer(p).input_ids])
        r, t1, f = lens_predictions(model, ids)
        assert (res.ranks[i] == r[0].numpy()).all() and (res.top1[i] == t1[0].numpy()).all()
        assert res.final_top1[i] == int(f[0]) == res.targets[i]


# --- tuned lens -----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("alignment", ["input", "output"])
def test_tuned_lens_at_init_is_the_logit_lens(arch, alignment):
    model = make_model(arch, bias=True, seed=8)
    lens = TunedLens.from_model(model, alignment=alignment)
    assert len(lens.translators) == model.config.num_hidden_layers
    ids, mask = pad(random_seqs(300, n=4, seed=2), "right")
    a = lens_predictions(model, ids, mask)
    b = lens_predictions(model, ids, mask, lens=lens)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    h = torch.randn(3, 32)
    for layer in range(model.config.num_hidden_layers + 1):
        assert torch.equal(lens.transform_hidden(h, layer), h)


def test_alignment_index_maps():
    lens_in = TunedLens(8, 4, alignment="input")
    lens_out = TunedLens(8, 4, alignment="output")
    assert [lens_in.translator_index(j) for j in range(5)] == [0, 1, 2, 3, None]
    assert [lens_out.translator_index(j) for j in range(5)] == [None, 0, 1, 2, 3]
    assert lens_in.trained_layers() == [0, 1, 2, 3]
    assert lens_out.trained_layers() == [1, 2, 3]
    with pytest.raises(ValueError, match="alignment"):
        TunedLens(8, 4, alignment="middle")


@pytest.mark.parametrize("alignment", ["input", "output"])
def test_save_load_round_trip(tmp_path, alignment):
    model = make_model("qwen3", seed=1)
    lens = random_lens(model, alignment)
    lens.save(tmp_path / "lens")
    assert (tmp_path / "lens" / "tuned_lens.safetensors").exists()
    back = TunedLens.load(tmp_path / "lens", model)
    assert back.alignment == alignment
    for (k, v), (k2, v2) in zip(lens.state_dict().items(), back.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2)
    ids, mask = pad(random_seqs(300, n=3), "left")
    for x, y in zip(lens_predictions(model, ids, mask, lens=lens),
                    lens_predictions(model, ids, mask, lens=back), strict=True):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="blocks"):
        TunedLens.load(tmp_path / "lens", make_model("qwen3", layers=2))
    with pytest.raises(FileNotFoundError):
        TunedLens.load(tmp_path / "nothing", model)


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red",
             "house", "in", "park", "we", "saw", "it", "then", "left"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(12, 30))) + "."
            for _ in range(n)]


@torch.no_grad()
def ref_per_layer_kl(model, lens, windows):
    n_layers = model.config.num_hidden_layers
    tot = torch.zeros(n_layers + 1, dtype=torch.float64)
    cap: list[torch.Tensor] = []
    hook = model.model.layers[-1].register_forward_hook(
        lambda _m, _a, o: cap.append(o[0] if isinstance(o, tuple) else o))
    try:
        for w in windows:
            cap.clear()
            out = model(input_ids=w[None], output_hidden_states=True)
            hs = list(out.hidden_states[:-1]) + [cap[0]]
            logp = torch.log_softmax(out.logits[0].double(), -1)
            for layer in range(n_layers + 1):
                idx = ref_translator(lens, layer, n_layers)
                z = torch.stack([ref_logits(model, h, lens, idx) for h in hs[layer][0]])
                logq = torch.log_softmax(z, -1)
                tot[layer] += (logp.exp() * (logp - logq)).sum()
    finally:
        hook.remove()
    return tot / windows.numel()


@pytest.mark.parametrize("arch", ARCHS)
def test_per_layer_kl_matches_reference(arch, char_tokenizer):
    model = make_model(arch, vocab=len(char_tokenizer), seed=5)
    windows = pack_texts(char_tokenizer, _texts(6, 0), 24)[:3]
    for lens in (None, random_lens(model, "output", std=0.03)):
        got = per_layer_kl(model, lens, windows, batch_size=2, chunk_tokens=17)
        want = ref_per_layer_kl(model, lens, windows)
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
        if lens is None:
            assert abs(float(got[-1])) < 1e-6


@pytest.mark.parametrize("alignment", ["input", "output"])
def test_training_lowers_heldout_kl(char_tokenizer, alignment):
    model = make_model("llama", vocab=len(char_tokenizer), layers=3, seed=7)
    params_before = {k: v.clone() for k, v in model.state_dict().items()}
    train, held = _texts(120, 1), _texts(20, 2)
    before = per_layer_kl(model, None, held, tokenizer=char_tokenizer, seq_len=32)
    logged = []
    lens, hist = train_tuned_lens(model, char_tokenizer, train, steps=30, tokens_per_step=256,
                                  seq_len=32, lr=0.5, alignment=alignment, seed=0,
                                  progress=False, on_log=logged.append)
    after = per_layer_kl(model, lens, held, tokenizer=char_tokenizer, seq_len=32)
    trained = lens.trained_layers()
    assert len(hist) == 30 and len(logged) == 30 and hist["tokens"].iloc[0] == 256
    assert hist["lr"].iloc[0] == pytest.approx(0.5) and hist["lr"].iloc[-1] < 0.05
    assert float(after[trained].mean()) < 0.8 * float(before[trained].mean())
    assert (after[trained] < before[trained]).all()
    assert hist["loss"].iloc[-5:].mean() < hist["loss"].iloc[:5].mean()
    # frozen model: no parameter changed, no gradient left on it
    for k, v in model.state_dict().items():
        assert torch.equal(v, params_before[k])
    assert all(p.grad is None for p in model.parameters())
    if alignment == "output":  # h[L]'s translator stays the identity
        assert not lens.translators[-1].weight.any() and not lens.translators[-1].bias.any()
    assert float(after[-1]) == pytest.approx(0.0, abs=1e-6)


def test_tuned_lens_library_parity(tmp_path):
    """Our translator + read-out equals the ``tuned-lens`` library's for the same weights."""
    tl = require_module("tuned_lens.nn.lenses", "no tuned-lens: pip install -e '.[test]'")
    model = make_model("llama", seed=11)
    ours = random_lens(model, "input", std=0.1)
    theirs = tl.TunedLens.from_model(model)
    theirs.layer_translators.load_state_dict(ours.translators.state_dict())
    ids = torch.tensor([random_seqs(300, n=1, seed=4)[0]])
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        from pipeline.depth import Readout

        readout = Readout(model)
        for idx in range(model.config.num_hidden_layers):  # library: h = hidden_states[idx]
            h = hs[idx][0]
            want = theirs(h, idx)
            got = readout.logits(ours.transform_hidden(h, idx))
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    theirs.save(tmp_path / "lib")
    back = TunedLens.load_library(tmp_path / "lib", model)
    for k, v in ours.translators.state_dict().items():
        assert torch.equal(back.translators.state_dict()[k], v)


# --- metrics --------------------------------------------------------------------------------

def _loop_earliest(row, k, stays, include_embedding=False):
    for j in range(0 if include_embedding else 1, len(row)):
        if row[j] <= k and (not stays or all(r <= k for r in row[j:])):
            return j
    return -1


def test_earliest_layer_and_curve_match_loops():
    g = torch.Generator().manual_seed(0)
    ranks = (torch.rand(60, 9, generator=g) * 8).exp().long() + 1  # 1 .. ~3000
    ranks[:5, -1] = 1
    ranks[5] = 5000
    for k in (1, 2, 5, 10, 37.5, 1000):
        for stays in (False, True):
            for emb in (False, True):
                got = earliest_layer(ranks, k, stays=stays, include_embedding=emb)
                want = [_loop_earliest(r.tolist(), k, stays, emb) for r in ranks]
                assert got.tolist() == want
    ks = [1, 3, 10, 100]
    curve = decision_depth_curve(ranks, ks)
    assert len(curve) == 2 * len(ks) and set(curve["variant"]) == {"first", "stays"}
    for _, row in curve.iterrows():
        e = [_loop_earliest(r.tolist(), row["k"], row["variant"] == "stays") for r in ranks]
        hit = [x for x in e if x >= 0]
        assert row["n_reached"] == len(hit)
        assert row["frac_reached"] == pytest.approx(len(hit) / 60)
        assert row["mean_layer"] == pytest.approx(np.mean(hit) if hit else np.nan,
                                                  nan_ok=True)
        assert row["mean_layer_rel"] == pytest.approx(row["mean_layer"] / 8, nan_ok=True)
    default = decision_depth_curve(ranks)
    assert len(default) == 400 and default["k"].min() == pytest.approx(1.0)
    assert default["k"].max() == pytest.approx(1e4)


def test_frequency_ranks_and_buckets(char_tokenizer):
    texts = _texts(30, 3)
    counts, rank = frequency_ranks(char_tokenizer, texts, batch_size=7)
    ref = Counter(t for s in texts for t in char_tokenizer(s, add_special_tokens=False)
                  .input_ids)
    assert counts.tolist() == [ref.get(i, 0) for i in range(len(char_tokenizer))]
    seen = sorted(ref, key=lambda i: (-ref[i], i))
    for pos, tok in enumerate(seen, 1):
        assert rank[tok] == pos
    assert all(rank[i] == 0 for i in range(len(char_tokenizer)) if i not in ref)
    # unseen tokens land in the last bucket even in a small vocabulary
    unseen = next(i for i in range(len(char_tokenizer)) if i not in ref)
    assert bucket_of(unseen, rank) == "1000+"
    assert bucket_of(seen[0], rank) == "Top1-10"

    freq_rank = np.arange(1, 2001)
    freq_rank[[3, 50]] = 0
    ids = np.array([0, 9, 10, 99, 100, 999, 1000, 1999, 3, 50, 5000, -1])
    got = bucket_of(ids, freq_rank)

    def loop(i):
        if i < 0 or i >= len(freq_rank) or freq_rank[i] == 0:
            return "1000+"
        r = freq_rank[i]
        return "Top1-10" if r <= 10 else "11-100" if r <= 100 else \
            "101-1000" if r <= 1000 else "1000+"

    assert list(got) == [loop(i) for i in ids]
    assert list(got[:8]) == ["Top1-10", "Top1-10", "11-100", "11-100", "101-1000",
                             "101-1000", "1000+", "1000+"]


def test_bucket_mix_and_flip_rates_match_loops():
    rng = np.random.default_rng(0)
    freq_rank = rng.permutation(3000) + 1
    n, n_layers = 80, 6
    pool = rng.choice(3000, 40, replace=False)  # few distinct tokens: flips and agreements
    top1 = pool[rng.integers(0, 40, (n, n_layers + 1))]
    final = pool[rng.integers(0, 40, n)]
    top1[: n // 2, 3:] = final[: n // 2, None]
    mix = bucket_mix(top1, final, freq_rank)
    flips = flip_rates(torch.as_tensor(top1), torch.as_tensor(final), freq_rank)
    assert len(mix) == len(flips) == (n_layers + 1) * len(BUCKETS)
    for layer in range(n_layers + 1):
        col = final if layer == n_layers else top1[:, layer]
        labels = [bucket_of(int(t), freq_rank) for t in col]
        for b in BUCKETS:
            in_b = [i for i in range(n) if labels[i] == b]
            fl = [i for i in in_b if col[i] != final[i]]
            m = mix[(mix.layer == layer) & (mix.bucket == b)].iloc[0]
            assert m["count"] == len(in_b) and m["share"] == pytest.approx(len(in_b) / n)
            f = flips[(flips.layer == layer) & (flips.bucket == b)].iloc[0]
            assert f["n_in_bucket"] == len(in_b) and f["n_flip"] == len(fl)
            assert f["flip_share"] == pytest.approx(len(fl) / n)
            if in_b:
                assert f["flip_rate"] == pytest.approx(len(fl) / len(in_b))
            else:
                assert np.isnan(f["flip_rate"])
    assert (flips[flips.layer == n_layers]["n_flip"] == 0).all()
    shares = mix.groupby("layer")["share"].sum()
    assert np.allclose(shares, 1.0)


# --- prompts and multiple choice ------------------------------------------------------------

def test_cut_passages():
    texts = _texts(20, 4) + ["too short"]
    out = cut_passages(texts, 10, seed=3, min_words=5)
    assert len(out) == 10
    for rec in out:
        src = texts[rec["passage"]]
        words = src.split()
        assert src.startswith(rec["prompt"]) and not rec["prompt"].endswith(" ")
        assert rec["prompt"].split() == words[: rec["cut_words"]]
        assert rec["next_word"] == words[rec["cut_words"]]
        assert 5 <= rec["cut_words"] < len(words)
    assert out == cut_passages(texts, 10, seed=3, min_words=5)
    assert out != cut_passages(texts, 10, seed=4, min_words=5)
    assert len(cut_passages(texts, 100, seed=0, min_words=5)) == 20


def test_teacher_forced_fact_prompts(char_tokenizer):
    from pipeline.data import load_source

    facts = load_source("facts")[:30]
    recs = teacher_forced_fact_prompts(char_tokenizer, facts, max_answer_tokens=3)
    by_fact: dict[str, list[dict]] = {}
    for r in recs:
        by_fact.setdefault(r["fact_id"], []).append(r)
    assert len(by_fact) == 30
    for fact in facts:
        rs = by_fact[str(fact["id"])]
        sentence = char_tokenizer(fact["prompt"] + " " + fact["answer"]).input_ids
        p_len = len(char_tokenizer(fact["prompt"]).input_ids)
        assert [r["answer_token"] for r in rs] == [1, 2, 3][: len(rs)]
        for r in rs:
            j = r["answer_token"]
            assert r["input_ids"] == sentence[: p_len + j - 1]
            assert r["target"] == sentence[p_len + j - 1]
    # the char tokenizer: answer token 1 is the space, 2 the first letter
    assert recs[1]["target"] == char_tokenizer(facts[0]["answer"][0]).input_ids[0]


def _mcq_items(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": f"Question {i}?",
             "choices": [f"opt{i}{c}" for c in "abcd"], "answer": "ABCD"[(i * 7) % 4]}
            for i in range(n)]


def test_mcq_prompts_balanced():
    items = _mcq_items(20)
    recs = mcq_prompts(items, shots=4, limit=5)
    assert len(recs) == 5
    first = recs[0]["prompt"]
    assert first.endswith("Answer:")
    demo_answers = [line.split("Answer: ")[1] for line in first.split("\n")
                    if line.startswith("Answer: ")]
    assert demo_answers == ["A", "B", "C", "D"]
    assert all(r["id"] not in first.split(r["prompt"][-40:])[0] for r in recs)


@pytest.mark.parametrize("arch", ARCHS)
def test_option_ranks_match_reference(arch, char_tokenizer):
    model = make_model(arch, vocab=len(char_tokenizer), bias=True, layers=4, seed=12)
    opts = option_token_ids(char_tokenizer)
    with torch.no_grad():  # push options up so that "dominate" happens at some layers
        model.lm_head.bias[opts] += 10.2
    prompts = [r["prompt"] for r in mcq_prompts(_mcq_items(12), shots=2, limit=5)]
    enc = [char_tokenizer(p).input_ids for p in prompts]
    ids, mask = pad(enc, "left", pad_id=char_tokenizer.pad_token_id)
    lens = random_lens(model, "input", std=0.05)
    n_layers = model.config.num_hidden_layers
    for use_lens in (None, lens):
        res = option_ranks(model, ids, mask, opts, lens=use_lens)
        res_emb = option_ranks(model, ids, mask, opts, lens=use_lens, include_embedding=True)
        for i, s in enumerate(enc):
            hs, logits = ref_hidden(model, torch.tensor(s))
            choice = int(logits[opts].argmax())
            assert int(res["choice"][i]) == choice
            dom, top, settled = [], [], []
            for layer in range(n_layers + 1):
                z = ref_logits(model, hs[layer], use_lens, ref_translator(use_lens, layer,
                                                                            n_layers))
                rk = [ref_rank(z, o) for o in opts]
                assert res["ranks"][i, layer].tolist() == rk
                others = [v for v in range(z.shape[0]) if v not in opts]
                dom.append(bool(min(z[opts]) > max(z[others])))
                top.append(rk[choice] == 1)
                zo = z[opts].tolist()
                settled.append(all(zo[choice] > zo[k] for k in range(4) if k != choice))
            assert res["dominate"][i].tolist() == dom
            assert res["choice_top1"][i].tolist() == top
            assert res["choice_settled"][i].tolist() == settled
            # first layers over h[1]..h[L] (docs/methods.md §4.4), h[0]..h[L] with emb
            for r, lo in ((res, 1), (res_emb, 0)):
                first = lambda xs, lo=lo: next(  # noqa: E731
                    (j for j, x in enumerate(xs) if x and j >= lo), -1)
                stays = lambda xs, lo=lo: next(  # noqa: E731
                    (j for j in range(lo, len(xs)) if all(xs[j:])), -1)
                assert int(r["dominate_layer"][i]) == first(dom)
                assert int(r["choice_top1_layer"][i]) == first(top)
                assert int(r["choice_settled_layer"][i]) == first(settled)
                assert int(r["dominate_layer_stays"][i]) == stays(dom)
                assert int(r["choice_top1_layer_stays"][i]) == stays(top)
                assert int(r["choice_settled_layer_stays"][i]) == stays(settled)
    assert res["dominate"].any() and not res["dominate"].all()
    for emb in (False, True):
        many = predict_options(model, char_tokenizer, prompts, opts, batch_size=2,
                               include_embedding=emb)
        single = option_ranks(model, ids, mask, opts, include_embedding=emb)
        for k, v in single.items():
            assert (many[k] == v.numpy()).all(), k


def test_pos_prompts():
    text = "The old man walked to the store, and he bought bread."
    ex = [{"text": text, "word_index": 5, "upos": "DET"},  # whitespace words: "the"
          {"text": text, "char_start": text.index(","), "char_end": text.index(",") + 1,
           "word_index": 7, "upos": "PUNCT"},
          {"text": text, "word_index": 0, "upos": "DET"}]  # nothing before: dropped
    recs = pos_prompts(ex)
    assert len(recs) == 2
    assert recs[0]["prompt"] == "The old man walked to" and recs[0]["word"] == "the"
    assert recs[0]["continuation"] == " the"
    assert recs[1]["prompt"] == "The old man walked to the store"
    assert recs[1]["word"] == "," and recs[1]["continuation"] == ","
    assert first_word_with_tag(["DET", "NOUN", "DET", "ADP"], "DET") == 2
    assert first_word_with_tag(["DET", "NOUN"], "ADP") is None
