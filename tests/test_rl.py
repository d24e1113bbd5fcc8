"""Fast tests of pipeline.rl: advantages, the clipped surrogate, internal-policy log-probs
and their gradients (IPA), γ alignment, the BuPO phase switch (docs/methods.md §2, §3)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.attention import Rhythm, credit_weights, rhythm
from pipeline.model_access import find_layout
from pipeline.models.builtin import build_model
from pipeline.rl import (
    RLConfig,
    credit_gamma,
    group_advantages,
    internal_token_logprobs,
    policy_loss,
    policy_loss_stats,
    policy_stats,
    reinforce_pp_advantages,
    rloo_advantages,
    token_advantages,
    token_logprobs,
)

TINY = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=None, max_position_embeddings=256, rope_theta=10000.0,
            tie_word_embeddings=True, seed=0)


# --------------------------------------------------------------------------- advantages
def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    adv = group_advantages(r, 4)
    expected = []
    for g in range(3):
        grp = r[4 * g:4 * g + 4].tolist()
        mean = sum(grp) / 4
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / 3)
        expected += [(x - mean) / (std + 1e-6) for x in grp]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert adv[4:8].tolist() == [0.0] * 4  # constant group
    assert group_advantages(torch.tensor([1.0, 0.0, 1.0]), 1).tolist() == [0.0] * 3
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 2)


def test_rloo_and_reinforce_pp():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    adv = rloo_advantages(r, 3)
    for i in range(6):
        g = i // 3
        others = [r[j].item() for j in range(3 * g, 3 * g + 3) if j != i]
        assert adv[i].item() == pytest.approx(r[i].item() - sum(others) / 2)
    assert rloo_advantages(r, 1).abs().sum() == 0
    rpp = reinforce_pp_advantages(r, 3)
    mean, std = r.mean(), r.std(unbiased=False)
    assert torch.allclose(rpp, (r - mean) / (std + 1e-6))
    lengths = torch.tensor([1, 3, 1, 1, 2, 2])
    w = lengths.float() / lengths.sum()
    m = (w * r).sum()
    s = (w * (r - m) ** 2).sum().sqrt()
    assert torch.allclose(reinforce_pp_advantages(r, 3, lengths=lengths), (r - m) / (s + 1e-6))
    assert reinforce_pp_advantages(torch.ones(4), 2).abs().sum() == 0


# --------------------------------------------------------------------------- surrogate
def _reference_loss(logp, old, adv, mask, lo, hi):
    total, n, clipped = 0.0, 0, 0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b][t]:
                continue
            a = adv[b] if adv.dim() == 1 else adv[b][t]
            a = float(a)
            ratio = math.exp(float(logp[b][t]) - float(old[b][t]))
            c = min(max(ratio, 1 - lo), 1 + hi)
            total += -min(ratio * a, c * a)
            n += 1
            clipped += (ratio < 1 - lo and a < 0) or (ratio > 1 + hi and a > 0)
    return total / n, clipped / n


@pytest.mark.parametrize("per_token", [False, True])
def test_policy_loss_matches_loops(per_token):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g) * 3
    old = logp + (torch.rand(3, 5, generator=g) - 0.5) * 0.8  # ratios around 0.67..1.5
    mask = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.5, -0.7, 0.3])
    if per_token:
        adv = adv[:, None] * (1 + torch.rand(3, 5, generator=g))
    ref, ref_clip = _reference_loss(logp, old, adv, mask, 0.2, 0.28)
    st = policy_loss_stats(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert st.loss.item() == pytest.approx(ref, rel=1e-5)
    assert st.clip_frac == pytest.approx(ref_clip)
    assert 0 < st.clip_frac < 1
    assert st.num_tokens == int(mask.sum())
    assert policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28).item() == \
        pytest.approx(ref, rel=1e-5)


def test_policy_loss_gradient_zero_where_clipped():
    old = torch.zeros(1, 3)
    logp = torch.tensor([[0.5, 0.0, -0.5]], requires_grad=True)  # ratios 1.65, 1, 0.61
    policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 3, dtype=torch.bool)).backward()
    # A>0: the high-clipped token gets no gradient, the others -ratio/3
    assert logp.grad[0, 0] == 0
    assert logp.grad[0, 1].item() == pytest.approx(-1 / 3)
    assert logp.grad[0, 2].item() == pytest.approx(-math.exp(-0.5) / 3)


# --------------------------------------------------------------------------- log-probs
def _batch(seed=0, vocab=100, pad=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 12), generator=g)
    am = torch.ones(3, 12, dtype=torch.long)
    am[1, 9:] = 0  # right padding
    am[2, 7:] = 0
    ids[am == 0] = pad
    rm = torch.zeros(3, 12, dtype=torch.bool)
    rm[0, 4:] = True
    rm[1, 5:9] = True
    rm[2, 3:7] = True
    return ids, am, rm


def _naive_hidden(model, ids, am):
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=am, position_ids=pos, output_hidden_states=True)
    return out


def _gather(logits, ids):
    return torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)


def test_token_logprobs_match_logits(tiny_model):
    ids, am, rm = _batch()
    out = _naive_hidden(tiny_model, ids, am)
    ref = _gather(out.logits, ids) * rm[:, 1:]
    with torch.no_grad():
        for chunk in (None, 3):
            lp = token_logprobs(tiny_model, ids, am, rm, chunk_tokens=chunk)
            assert lp.shape == (3, 11)
            torch.testing.assert_close(lp, ref, atol=1e-5, rtol=1e-5)
            assert (lp[~rm[:, 1:]] == 0).all()


def test_internal_logprobs_match_hidden_states(tiny_model):
    ids, am, rm = _batch(1)
    out = _naive_hidden(tiny_model, ids, am)
    layout = find_layout(tiny_model)
    w = layout.lm_head.weight
    n_layers = len(layout.blocks)
    for k in range(1, n_layers):  # hidden_states[k] is the raw residual for k < L
        h = out.hidden_states[k]
        ref = _gather(h @ w.T, ids) * rm[:, 1:]
        ref_norm = _gather(layout.lm_head(layout.final_norm(h)), ids) * rm[:, 1:]
        with torch.no_grad():
            lp = internal_token_logprobs(tiny_model, ids, am, rm, k, chunk_tokens=4)
            lpn = internal_token_logprobs(tiny_model, ids, am, rm, k, apply_final_norm=True)
        torch.testing.assert_close(lp, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lpn, ref_norm, atol=1e-5, rtol=1e-5)
    # k = L with the final norm is the model's own policy (HF's last state is post-norm)
    with torch.no_grad():
        top = internal_token_logprobs(tiny_model, ids, am, rm, n_layers, apply_final_norm=True)
    torch.testing.assert_close(top, _gather(out.logits, ids) * rm[:, 1:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="1-based"):
        internal_token_logprobs(tiny_model, ids, am, rm, 0)


def test_policy_stats_match_naive(tiny_model):
    ids, am, rm = _batch(2)
    out = _naive_hidden(tiny_model, ids, am)
    layout = find_layout(tiny_model)
    raw = {}
    handle = layout.blocks[-1].block.register_forward_hook(
        lambda _m, _a, o: raw.__setitem__("L", o if torch.is_tensor(o) else o[0]))
    try:
        _naive_hidden(tiny_model, ids, am)
    finally:
        handle.remove()
    st = policy_stats(tiny_model, ids, am, rm, layer=1, internal=True, cosine_kL=True)
    m = rm[:, 1:]
    logp = torch.log_softmax(out.logits.float(), -1)[:, :-1]
    ent = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(st.entropy[m], ent[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st.logp[m], _gather(out.logits, ids)[m], atol=1e-5, rtol=1e-5)
    hk = out.hidden_states[1]
    lpk = torch.log_softmax(hk @ layout.lm_head.weight.T, -1)[:, :-1]
    torch.testing.assert_close(st.entropy_k[m], -(lpk.exp() * lpk).sum(-1)[m], atol=1e-5,
                               rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(hk, raw["L"], dim=-1)[:, :-1]
    torch.testing.assert_close(st.cos_kL[m], cos[m], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.hidden_states[-1], raw["L"], atol=1e-3)  # HF's is post-norm


@pytest.mark.parametrize("layer", [1, 2])
def test_policy_stats_entropy_km1_matches_naive(tiny_model, layer):
    """H(π^{k−1}) = the full-softmax entropy of lm_head(h[k−1]) with h[k−1] =
    ``hidden_states[k−1]`` (h[0], the embedding output, for k = 1), with π^k's norm and
    temperature; ΔH^k = H(π^k) − H(π^{k−1})."""
    import copy

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():  # larger weights: entropies far from uniform and from each other
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    ids, am, rm = _batch(4)
    out = _naive_hidden(model, ids, am)
    layout = find_layout(model)
    assert layer - 1 < len(layout.blocks)  # hidden_states[k−1] is the raw h[k−1]
    m = rm[:, 1:]
    for final_norm, temp in ((False, 1.0), (True, 0.7)):
        def naive(h, final_norm=final_norm, temp=temp):
            x = layout.final_norm(h) if final_norm else h
            z = x.double() @ layout.lm_head.weight.double().T / temp
            p = torch.softmax(z, -1)[:, :-1]
            return -(p * torch.log(p)).sum(-1).float()

        kw = dict(layer=layer, apply_final_norm=final_norm, temperature=temp)
        st = policy_stats(model, ids, am, rm, internal=True, delta_k=True, **kw)
        want = naive(out.hidden_states[layer - 1])
        torch.testing.assert_close(st.entropy_km1[m], want[m], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(st.entropy_k[m], naive(out.hidden_states[layer])[m]
                                   if layer < len(layout.blocks) else st.entropy_k[m])
        assert (st.entropy_km1[~m] == 0).all()
        assert not torch.allclose(st.entropy_km1[m], st.entropy_k[m], atol=1e-3)
        # alone (the forward stops after block k) and next to every other statistic
        alone = policy_stats(model, ids, am, rm, final=False, delta_k=True, **kw)
        assert alone.entropy_k is None and alone.logp is None
        every = policy_stats(model, ids, am, rm, internal=True, cosine_kL=True,
                             delta_k=True, **kw)
        for got in (alone, every):
            torch.testing.assert_close(got.entropy_km1, st.entropy_km1)
    assert policy_stats(model, ids, am, rm, layer=1).entropy_km1 is None
    with pytest.raises(ValueError, match="delta_k"):
        policy_stats(model, ids, am, rm, delta_k=True)


def _untied(arch: str, char_tokenizer, layers: int = 3):
    spec = {**TINY, "arch": arch, "num_layers": layers, "tie_word_embeddings": False}
    return build_model(spec, char_tokenizer, seed=0).eval()


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_ipa_gradient_stops_at_block_k(arch, char_tokenizer):
    model = _untied(arch, char_tokenizer)
    layout = find_layout(model)
    ids, am, rm = _batch(3, vocab=len(char_tokenizer), pad=char_tokenizer.pad_token_id)
    k = 2
    calls = []
    handle = layout.blocks[k].block.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        lp = internal_token_logprobs(model, ids, am, rm, k)
    finally:
        handle.remove()
    assert not calls  # block k+1 (0-based k) never ran
    policy_loss(lp, lp.detach() - 0.1, torch.tensor([1.0, -1.0, 0.5]), rm[:, 1:]).backward()

    def nonzero(module):
        grads = [p.grad for p in module.parameters()]
        return all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)

    def zero(module):
        return all(p.grad is None or (p.grad == 0).all() for p in module.parameters())

    embed = model.get_input_embeddings()
    assert embed is not layout.lm_head and nonzero(embed) and nonzero(layout.lm_head)
    for i, blk in enumerate(layout.blocks):
        assert nonzero(blk.block) if i < k else zero(blk.block), f"block {i + 1}"
    assert zero(layout.final_norm)


def test_chunked_gradients_equal(tiny_model):
    ids, am, rm = _batch(4)
    grads = []
    for chunk in (None, 2):
        tiny_model.zero_grad(set_to_none=True)
        token_logprobs(tiny_model, ids, am, rm, chunk_tokens=chunk).sum().backward()
        grads.append([p.grad.clone() for p in tiny_model.parameters()])
    tiny_model.zero_grad(set_to_none=True)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- γ alignment
def _rhythm_with_anchor(t_anchor: int) -> Rhythm:
    rm = torch.zeros(1, 8, dtype=torch.bool)
    rm[0, 3:] = True
    flag = torch.zeros_like(rm)
    flag[0, t_anchor] = True
    nan = torch.full((1, 8), math.nan)
    empty = torch.zeros(1, 0, 0, dtype=torch.bool)
    return Rhythm(layers=(), head_distance=empty.float(), local_heads=empty, global_heads=empty,
                  waad=nan, fai=nan, delta=nan, preplan=torch.zeros_like(rm), anchor=flag,
                  dominated=torch.zeros_like(rm), intro=torch.zeros_like(rm),
                  intro_of=torch.full((1, 8), -1), response_mask=rm, top_frac=0.4)


@pytest.mark.parametrize("shift", [0, 1])
def test_anchor_gamma_lands_on_its_logprob(shift, tiny_model):
    t = 5  # attention row of the anchor
    gamma = credit_weights(_rhythm_with_anchor(t), "global", shift=shift)
    adv = token_advantages(torch.tensor([-2.0]), gamma, 7)
    tok = t + shift  # the token credited (shift=1: the token sampled from row t)
    expected = torch.full((1, 7), -2.0)
    expected[0, tok - 1] = -3.0  # γ_amp·Â at the log-prob of input_ids[tok]
    torch.testing.assert_close(adv, expected)
    # ... and logp[:, tok-1] is indeed log p(input_ids[tok] | input_ids[:tok])
    ids = torch.arange(10, 18)[None]
    am = torch.ones_like(ids)
    rm = _rhythm_with_anchor(t).response_mask
    lp = token_logprobs(tiny_model, ids, am, rm).detach()
    with torch.no_grad():
        logits = tiny_model(input_ids=ids[:, :tok]).logits[0, -1]
    assert lp[0, tok - 1].item() == pytest.approx(
        torch.log_softmax(logits, -1)[ids[0, tok]].item(), abs=1e-5)


def test_rhythm_anchors_shape_token_advantages(tiny_model):
    ids, am, rm = _batch(5)
    rh = rhythm(tiny_model, ids, rm, am)
    gamma = credit_gamma(tiny_model, ids, am, rm, "global")
    adv = torch.tensor([1.0, -1.0, 2.0])
    tok_adv = token_advantages(adv, gamma, ids.shape[1] - 1)
    for b, t in rh.anchor.nonzero().tolist():
        assert tok_adv[b, t - 1] == pytest.approx(1.5 * adv[b].item())
    plain = rm & ~rh.anchor
    for b, t in plain.nonzero().tolist():
        assert tok_adv[b, t - 1] == pytest.approx(adv[b].item())


def test_entropy_credit_uses_the_sampling_distribution(tiny_model):
    ids, am, rm = _batch(6)
    st = policy_stats(tiny_model, ids, am, rm)
    gamma = credit_gamma(tiny_model, ids, am, rm, "entropy", entropy=st.entropy)
    out = _naive_hidden(tiny_model, ids, am)
    lp = torch.log_softmax(out.logits.float(), -1)
    ent = -(lp.exp() * lp).sum(-1)  # ent[b, t-1] sampled token t
    for b in range(3):
        pos = rm[b].nonzero().flatten()
        n = max(1, math.floor(0.4 * len(pos) + 0.5))
        top = pos[ent[b, pos - 1].argsort(descending=True, stable=True)[:n]]
        assert set(top.tolist()) == set((gamma[b] > 1).nonzero().flatten().tolist())


# --------------------------------------------------------------------------- BuPO switch
def test_bupo_phase_switch():
    cfg = RLConfig(method="bupo", bupo_layer=1, s_inter=3, steps=6)
    assert [cfg.phase(s) for s in range(1, 7)] == ["ipa"] * 3 + ["grpo"] * 3
    assert RLConfig(method="grpo").phase(1) == "grpo"
    both = RLConfig(method="bupo+rhythm_coupled", bupo_layer=2, s_inter=1)
    assert both.credit == "coupled" and both.phase(1) == "ipa" and both.phase(2) == "grpo"
    with pytest.raises(ValueError, match="bupo_layer"):
        RLConfig(method="bupo")
    with pytest.raises(ValueError, match="unknown RL method"):
        RLConfig(method="ppo")
