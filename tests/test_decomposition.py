"""Internal-policy decomposition (docs/methods.md §1) against naive full-vocabulary references.

The reference recomputes every block by calling its submodules by hand on HF's
``output_hidden_states``, materialises full [T, V] logits and takes −Σ p log p in fp64.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from pipeline.decomposition import (
    aggregate,
    boundary_layer,
    entropy_changes,
    internal_entropies,
)

TOL = dict(atol=1e-5, rtol=1e-5)
KEYS = ("layer", "attn", "ffn", "attn_in", "ffn_in", "cos_attn", "cos_ffn")


def make_model(arch: str, *, vocab: int = 300, layers: int = 3, tie: bool = False,
               bias: bool = False, seed: int = 0) -> nn.Module:
    """A random model with large init so that the entropies are far from uniform."""
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


def entropy_ref(x: torch.Tensor, model: nn.Module, final_norm: bool) -> torch.Tensor:
    """Naive: full logits [T, V], full softmax, −Σ p log p (fp64)."""
    if final_norm:
        x = model.model.norm(x)
    head = model.get_output_embeddings()
    logits = x.double() @ head.weight.double().T
    if head.bias is not None:
        logits = logits + head.bias.double()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = cap * torch.tanh(logits / cap)
    return torch.special.entr(torch.softmax(logits, dim=-1)).sum(-1).float()


@torch.no_grad()
def reference(model: nn.Module, ids: torch.Tensor, final_norm: bool) -> dict[str, torch.Tensor]:
    """All quantities for one unpadded sequence ``ids`` [T], by calling submodules by hand."""
    ids = ids[None]
    n_tok = ids.shape[1]
    hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    dec = model.model
    pe = dec.rotary_emb(hs[0], torch.arange(n_tok)[None])
    causal = torch.full((n_tok, n_tok), -math.inf).triu(1)[None, None]
    h = hs[0]
    acts: dict[str, list[torch.Tensor]] = {k: [] for k in KEYS}
    acts["layer"].append(h)
    for layer in dec.layers:
        x_in = layer.input_layernorm(h)
        a = layer.self_attn(hidden_states=x_in, position_embeddings=pe, attention_mask=causal)[0]
        mid = h + a
        f_in = layer.post_attention_layernorm(mid)
        f = layer.mlp(f_in)
        acts["attn_in"].append(x_in)
        acts["attn"].append(a)
        acts["ffn_in"].append(f_in)
        acts["ffn"].append(f)
        acts["cos_attn"].append(nn.functional.cosine_similarity(a, h, dim=-1))
        acts["cos_ffn"].append(nn.functional.cosine_similarity(f, mid, dim=-1))
        h = mid + f
        acts["layer"].append(h)
    n_layers = len(dec.layers)
    # The hand-made blocks reproduce HF's hidden states; HF's last entry is post-norm.
    for i in range(n_layers):
        torch.testing.assert_close(acts["layer"][i], hs[i], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dec.norm(acts["layer"][-1]), hs[-1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(acts["layer"][-1], hs[-1], atol=1e-2)
    out = {}
    for key, xs in acts.items():
        if key.startswith("cos"):
            out[key] = torch.stack([x[0] for x in xs])
        else:
            out[key] = torch.stack([entropy_ref(x[0], model, final_norm) for x in xs])
    out["hf_last"] = entropy_ref(hs[-1][0], model, final_norm)
    return out  # each [L or L+1, T]


def pad(seqs: list[torch.Tensor], side: str, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    n_tok = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n_tok), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n_tok), dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(n_tok - len(s), n_tok)
        ids[b, sl] = s
        mask[b, sl] = 1
    return ids, mask


def seqs_for(vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, vocab, (n,), generator=g) for n in (9, 4, 7)]


@pytest.mark.parametrize("final_norm", [False, True])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_single_sequence_matches_reference(arch: str, final_norm: bool) -> None:
    model = make_model(arch, bias=arch == "llama")
    ids = seqs_for(300)[0]
    ref = reference(model, ids, final_norm)
    ours = internal_entropies(model, ids[None], apply_final_norm=final_norm)
    for key in KEYS:
        assert ours[key].dtype == torch.float32
        torch.testing.assert_close(ours[key][0], ref[key], **TOL, msg=key)
    # The raw h[L] is used, not HF's post-norm last hidden state.
    if not final_norm:
        assert not torch.allclose(ours["layer"][0, -1], ref["hf_last"], atol=1e-3)
    else:  # norm_f(h[L]) is the model's own final policy
        torch.testing.assert_close(ours["layer"][0, -1], ref["hf_last"], **TOL)
    # Entropies are not trivially uniform in these models.
    assert ours["layer"].std() > 0.05
    deltas = entropy_changes(ours)
    torch.testing.assert_close(deltas["layer"][0], ref["layer"][1:] - ref["layer"][:-1], **TOL)
    torch.testing.assert_close(deltas["attn"][0], ref["attn"] - ref["attn_in"], **TOL)
    torch.testing.assert_close(deltas["ffn"][0], ref["ffn"] - ref["ffn_in"], **TOL)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("final_norm", [False, True])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_padded_batch_matches_single_sequences(arch: str, final_norm: bool, side: str) -> None:
    model = make_model(arch, tie=arch == "qwen3")
    seqs = seqs_for(300)
    ids, mask = pad(seqs, side)
    ours = internal_entropies(model, ids, mask, apply_final_norm=final_norm)
    n_layers = len(model.model.layers)
    assert ours["layer"].shape == (3, n_layers + 1, ids.shape[1])
    for key in KEYS[1:]:
        assert ours[key].shape == (3, n_layers, ids.shape[1])
    for key in KEYS:
        assert torch.equal(torch.isnan(ours[key]), (mask == 0)[:, None].expand_as(ours[key]))
    for b, s in enumerate(seqs):
        ref = reference(model, s, final_norm)
        single = internal_entropies(model, s[None], apply_final_norm=final_norm)
        real = mask[b].bool()
        for key in KEYS:
            torch.testing.assert_close(ours[key][b][:, real], ref[key], **TOL, msg=key)
            torch.testing.assert_close(ours[key][b][:, real], single[key][0], **TOL, msg=key)


def test_sdpa_left_padding() -> None:
    model = make_model("qwen3")
    model.set_attn_implementation("sdpa")
    seqs = seqs_for(300)
    ids, mask = pad(seqs, "left")
    ours = internal_entropies(model, ids, mask)
    for b, s in enumerate(seqs):
        ref = reference(model, s, False)
        for key in KEYS:
            torch.testing.assert_close(ours[key][b][:, mask[b].bool()], ref[key], **TOL)


def test_fixture_models_match_reference(tiny_model, char_tokenizer) -> None:
    ids = torch.tensor(char_tokenizer("3 + 4 * 5 = 23")["input_ids"])
    for final_norm in (False, True):
        ref = reference(tiny_model, ids, final_norm)
        ours = internal_entropies(tiny_model, ids[None], apply_final_norm=final_norm)
        for key in KEYS:
            torch.testing.assert_close(ours[key][0], ref[key], **TOL, msg=key)


def test_chunking_invariance() -> None:
    model = make_model("llama", vocab=1000, bias=True)
    ids, mask = pad(seqs_for(1000), "left")
    small = internal_entropies(model, ids, mask, chunk_tokens=3)
    large = internal_entropies(model, ids, mask, chunk_tokens=10_000)
    auto = internal_entropies(model, ids, mask)
    for key in KEYS:
        torch.testing.assert_close(small[key], large[key], atol=1e-6, rtol=1e-6, equal_nan=True)
        torch.testing.assert_close(auto[key], large[key], atol=1e-6, rtol=1e-6, equal_nan=True)


def test_hooks_removed_and_mode_restored() -> None:
    model = make_model("qwen3").train()
    internal_entropies(model, seqs_for(300)[0][None])
    assert model.training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_bf16_model_gives_fp32_results() -> None:
    model = make_model("qwen3")
    ids = seqs_for(300)[0][None]
    ref = internal_entropies(model, ids)
    ours = internal_entropies(copy.deepcopy(model).to(torch.bfloat16), ids)
    for key in KEYS:
        assert ours[key].dtype == torch.float32
    torch.testing.assert_close(ours["layer"], ref["layer"], atol=0.1, rtol=0.05)


def test_sandwich_norm_block_and_softcap() -> None:
    """Gemma 2: A^l, F^l are the post-normed contributions; softcapped final logits."""
    config = Gemma2Config(vocab_size=200, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=8, final_logit_softcapping=3.0, initializer_range=0.4,
                          attn_implementation="eager")
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    ids = seqs_for(200)[0][None]
    store: dict[str, list[torch.Tensor]] = {"attn": [], "ffn": [], "attn_in": [], "ffn_in": []}
    handles = []
    for layer in model.model.layers:
        handles += [
            layer.post_attention_layernorm.register_forward_hook(
                lambda m, a, o: store["attn"].append(o)),
            layer.post_feedforward_layernorm.register_forward_hook(
                lambda m, a, o: store["ffn"].append(o)),
            layer.input_layernorm.register_forward_hook(
                lambda m, a, o: store["attn_in"].append(o)),
            layer.pre_feedforward_layernorm.register_forward_hook(
                lambda m, a, o: store["ffn_in"].append(o)),
        ]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    for h in handles:
        h.remove()
    hs = out.hidden_states
    # h[l] = h[l-1] + A^l + F^l with the post-normed contributions.
    torch.testing.assert_close(hs[1], hs[0] + store["attn"][0] + store["ffn"][0])
    ours = internal_entropies(model, ids)
    for key, xs in store.items():
        for i, x in enumerate(xs):
            torch.testing.assert_close(ours[key][0, i], entropy_ref(x[0], model, False), **TOL)
    torch.testing.assert_close(ours["layer"][0, 0], entropy_ref(hs[0][0], model, False), **TOL)
    lens = internal_entropies(model, ids, apply_final_norm=True)
    final = torch.special.entr(torch.softmax(out.logits[0].double(), -1)).sum(-1).float()
    torch.testing.assert_close(lens["layer"][0, -1], final, **TOL)


def test_missing_modules_raise(tiny_model) -> None:
    broken = copy.deepcopy(tiny_model)
    del broken.model.layers[1].mlp
    with pytest.raises(ValueError, match=r"layers\[1\]\.\{mlp\|feed_forward"):
        internal_entropies(broken, torch.ones(1, 4, dtype=torch.long))
    no_attn = copy.deepcopy(tiny_model)
    del no_attn.model.layers[0].self_attn
    with pytest.raises(ValueError, match=r"self_attn\|attn"):
        internal_entropies(no_attn, torch.ones(1, 4, dtype=torch.long))
    no_norm = copy.deepcopy(tiny_model)
    del no_norm.model.norm
    with pytest.raises(ValueError, match=r"\{norm\|final_layernorm"):
        internal_entropies(no_norm, torch.ones(1, 4, dtype=torch.long), apply_final_norm=True)
    with pytest.raises(ValueError, match=r"decoder layers.*layers\|h\|blocks"):
        internal_entropies(nn.Linear(3, 3), torch.ones(1, 4, dtype=torch.long))


def test_entropy_changes_by_hand() -> None:
    ents = {"layer": torch.tensor([[[1.0, 2.0], [1.5, 1.0], [0.5, 4.0]]]),
            "attn": torch.tensor([[[3.0, 3.0], [2.0, 2.0]]]),
            "attn_in": torch.tensor([[[1.0, 2.0], [2.5, 0.0]]]),
            "ffn": torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]),
            "ffn_in": torch.tensor([[[1.0, 1.0], [0.0, 3.0]]])}
    d = entropy_changes(ents)
    assert torch.equal(d["layer"], torch.tensor([[[0.5, -1.0], [-1.0, 3.0]]]))
    assert torch.equal(d["attn"], torch.tensor([[[2.0, 1.0], [-0.5, 2.0]]]))
    assert torch.equal(d["ffn"], torch.tensor([[[-1.0, 0.0], [1.0, -2.0]]]))


def test_aggregate_by_hand() -> None:
    nan = math.nan
    # B=2, L=2, T=4; sample 0 has padding (NaN) at t=3, sample 1 has NaN at t=0.
    values = torch.tensor([[[1.0, 2.0, 3.0, nan], [0.0, 0.0, 6.0, nan]],
                           [[nan, 10.0, 20.0, 30.0], [nan, 1.0, 1.0, 4.0]]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.bool)
    token_mean, per_sample = aggregate(values, mask)
    # selected finite: s0 -> t1,t2; s1 -> t2,t3
    torch.testing.assert_close(per_sample, torch.tensor([[2.5, 3.0], [25.0, 2.5]]))
    expected = torch.tensor([(2 + 3 + 20 + 30) / 4, (0 + 6 + 1 + 4) / 4])
    torch.testing.assert_close(token_mean, expected)
    empty = torch.zeros(2, 4, dtype=torch.bool)
    empty[0, 1] = True
    token_mean, per_sample = aggregate(values, empty)
    assert torch.isnan(per_sample[1]).all()
    torch.testing.assert_close(token_mean, torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError):
        aggregate(values[0], mask)


@pytest.mark.parametrize("scale", [1.0, 1 / 50])
def test_boundary_layer_synthetic(scale: float) -> None:
    def k(curve: list[float], **kw) -> int:
        return boundary_layer(torch.tensor(curve) * scale, **kw)

    # Qwen3-like EIC: exploration in layers 1-6, integration ~0, convergence (-).
    eic = [0.8, 1.2, 0.9, 0.5, 0.4, 0.3, 0.01, -0.005, 0.0, 0.02, -0.2, -0.6]
    assert k(eic) == 6
    assert k(eic[:-1] + [-3.0]) == 6                    # a strong convergence end is fine
    # Llama-like: noise around 0, abrupt convergence at the top -> no exploration phase.
    assert k([0.001, -0.002, 0.0015, 0.0005, -0.001, -0.3, -0.8]) == 6
    assert k([-2.0, 0.5, 0.6, 0.02, -0.1]) == 3        # leading negative layer skipped
    assert k([1.0, 1.0, 0.01, 0.04, -0.5]) == 2        # near-zero noise does not extend
    assert k([1.0, 1.0, 0.0, 0.0, 0.5, -1.0]) == 2     # a late bump is ignored
    assert k([-0.1, -0.2, 0.0, -0.5]) == 3             # no exploration: penultimate
    assert k([0.3, 0.2, 0.1, 0.4]) == 3                # never turns: penultimate
    assert k([-0.1, -0.2, 0.0, -0.5], fallback=2) == 2
    assert k([0.5, math.nan, 0.5, -1.0]) == 1          # NaN counts as non-exploring
    assert k([0.5]) == 1
    assert boundary_layer([0.3, 0.01, 0.02, -0.1], tol=0.0, relative=False) == 3
    assert boundary_layer([0.0, 0.0, 0.0]) == 2


@pytest.mark.parametrize("side", ["left", "right"])
def test_token_mask_projects_only_selected_positions(side: str) -> None:
    model = make_model("llama", vocab=1000)
    ids, mask = pad(seqs_for(1000), side)
    full = internal_entropies(model, ids, mask)
    sel = mask.bool() & (torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    part = internal_entropies(model, ids, mask, token_mask=sel)
    for key in KEYS:
        assert torch.equal(~torch.isnan(part[key]), sel[:, None].expand_as(part[key]))
        picked = sel[:, None].expand_as(part[key])
        torch.testing.assert_close(part[key][picked], full[key][picked], **TOL)


def test_within_token_budget_keeps_leading_responses() -> None:
    """The decomposition's token budget (methods §1.1 "Data"): leading rows whose response
    tokens sum to ≤ budget, at least one, all for None; checked against a plain loop."""
    import pandas as pd

    from pipeline.decomposition.stage import within_token_budget

    table = pd.DataFrame({"num_response_tokens": [128, 40, 128, 7, 128], "sample": range(5)})

    def naive(budget: int) -> int:
        kept, used = 0, 0
        for n in table["num_response_tokens"]:
            if used + n > budget:
                break
            kept, used = kept + 1, used + n
        return max(kept, 1)

    for budget in (1, 127, 128, 168, 295, 296, 303, 431, 10_000):
        got = within_token_budget(table, budget)
        assert list(got["sample"]) == list(range(naive(budget))), budget
    assert within_token_budget(table, None) is table
    with pytest.raises(ValueError, match="max_response_tokens"):
        within_token_budget(table, 0)


@torch.no_grad()
def rms_weights_random(model: nn.Module, seed: int = 3) -> None:
    """Non-uniform RMSNorm weights: with the default ones a norm only rescales each row,
    so a cosine could not tell the raw h[L] from norm_f(h[L])."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 1.8 + 0.2)


@torch.no_grad()
def naive_cos_final(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """cos(h[l], h[L]) [L+1, T] for one unpadded sequence by per-token loops: h[0]..h[L−1]
    from HF's ``output_hidden_states``, the raw h[L] (HF's last entry is post-norm) from a
    forward hook on the last decoder layer's output."""
    got: dict[str, torch.Tensor] = {}
    handle = model.model.layers[-1].register_forward_hook(
        lambda _m, _a, out: got.__setitem__("h", out[0] if isinstance(out, tuple) else out))
    try:
        hs = model(input_ids=ids[None], output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    top = got["h"][0].double()
    torch.testing.assert_close(model.model.norm(got["h"]), hs[-1], **TOL)
    states = [h[0].double() for h in hs[:-1]] + [top]
    out = torch.empty(len(states), len(ids))
    for layer, h in enumerate(states):
        for t in range(len(ids)):
            a, b = h[t], top[t]
            out[layer, t] = float(a @ b / (a.norm() * b.norm()))
    return out


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_cos_final_matches_naive_loops(arch: str, side: str) -> None:
    """``cos_final`` = cos(h[l], h[L]) with the raw h[L] (BuPO Fig. 5), l = 0..L, NaN
    outside the mask; the same under both conventions and with a token mask."""
    model = make_model(arch, layers=4, tie=arch == "qwen3", bias=arch == "llama")
    rms_weights_random(model)
    seqs = seqs_for(300)
    ids, mask = pad(seqs, side)
    n_layers = len(model.model.layers)
    raw = internal_entropies(model, ids, mask)
    lens = internal_entropies(model, ids, mask, apply_final_norm=True)
    cos = raw["cos_final"]
    assert cos.shape == (3, n_layers + 1, ids.shape[1]) and cos.dtype == torch.float32
    assert torch.equal(torch.isnan(cos), (mask == 0)[:, None].expand_as(cos))
    torch.testing.assert_close(lens["cos_final"], cos, equal_nan=True, **TOL)
    for b, s in enumerate(seqs):
        got = cos[b][:, mask[b].bool()]
        torch.testing.assert_close(got, naive_cos_final(model, s), **TOL)
        torch.testing.assert_close(got[n_layers], torch.ones(len(s)), **TOL)
        # the raw h[L], not HF's post-norm last hidden state (a non-uniform norm weight
        # turns the direction)
        hs = model(input_ids=s[None], output_hidden_states=True).hidden_states
        post = torch.stack([nn.functional.cosine_similarity(h[0], hs[-1][0], dim=-1)
                            for h in hs[:-1]])
        assert not torch.allclose(got[:n_layers], post, atol=1e-2)
    real = cos[:, :n_layers][~torch.isnan(cos[:, :n_layers])]
    assert real.abs().max() < 0.999 and real.std() > 0.05  # not trivially 1
    sel = mask.bool() & (torch.arange(ids.shape[1]) % 2 == 0)
    part = internal_entropies(model, ids, mask, token_mask=sel)["cos_final"]
    picked = sel[:, None].expand_as(part)
    assert torch.equal(~torch.isnan(part), picked)
    torch.testing.assert_close(part[picked], cos[picked], **TOL)


def test_stage_tables_carry_layer_cos() -> None:
    """decompose_responses: module ``layer`` quantity ``cos`` at layers 0..L (per sample:
    the mean of cos(h[l], h[L]) over response tokens), next to the layer entropies (0..L)
    and ΔH (1..L); per_layer gets the token-weighted means."""
    import pandas as pd

    from pipeline.decomposition.stage import decompose_responses

    model = make_model("qwen3", layers=3)
    rms_weights_random(model)
    n_layers = 3
    seqs = seqs_for(300)
    table = pd.DataFrame({"prompt_ids": [s[:2].tolist() for s in seqs],
                          "response_ids": [s[2:].tolist() for s in seqs]})
    tidy, summary = decompose_responses(model, table, 0, model_name="m", batch_size=2,
                                        progress=False)
    lay = tidy[tidy.module == "layer"]
    for conv in ("raw", "final_norm"):
        got = {q: sorted(set(lay[(lay.convention == conv) & (lay.quantity == q)].layer))
               for q in ("entropy", "cos", "delta")}
        assert got == {"entropy": list(range(n_layers + 1)), "cos": list(range(n_layers + 1)),
                       "delta": list(range(1, n_layers + 1))}
    cos = lay[(lay.quantity == "cos") & (lay.convention == "raw")]
    for i, s in enumerate(seqs):
        want = naive_cos_final(model, s)[:, 2:].mean(-1)  # response tokens only
        mine = cos[cos["sample"] == i].sort_values("layer")
        torch.testing.assert_close(torch.tensor(mine.value.to_numpy(), dtype=torch.float32),
                                   want, **TOL)
        assert (mine.tokens == len(s) - 2).all()
    per = pd.DataFrame(summary["per_layer"])
    pc = per[(per.module == "layer") & (per.quantity == "cos") & (per.convention == "raw")]
    assert sorted(pc.layer) == list(range(n_layers + 1))
    assert abs(float(pc[pc.layer == n_layers]["mean"].iloc[0]) - 1) < 1e-5
    n_tok = sum(len(s) - 2 for s in seqs)
    want = sum(naive_cos_final(model, s)[:, 2:].sum(-1) for s in seqs) / n_tok
    torch.testing.assert_close(torch.tensor(pc.sort_values("layer")["mean"].to_numpy(),
                                            dtype=torch.float32), want, **TOL)
    pd_ = per[(per.module == "layer") & (per.quantity == "delta")]
    assert sorted(set(pd_.layer)) == list(range(1, n_layers + 1))
