"""The early-exit decoder (docs/methods.md §4.12) against the full static decoder and against
transformers' own forward: τ = 1 is the full decoder exactly; an exit returns the lens's
logits of h[l] (full forward with ``output_hidden_states``); the skipped blocks' keys and
values are the blocks' own k/v projections of the propagated state (computed with the HF
modules), and the next token's attention over them equals an HF forward on a cache holding
those keys and values. Qwen3 (q/k-norm) and Llama families, left-padded batches."""

from __future__ import annotations

import pytest
import torch
from conftest import make_hf_model, padded_batch

from pipeline.depth.lens import TunedLens
from pipeline.early_exit import EarlyExitDecoder
from pipeline.generation import generate
from pipeline.static_decode import StaticDecoder

FAMILIES = ("qwen3", "llama")
LAYERS = 4


def _model(arch: str):
    model = make_hf_model(arch, vocab=97, layers=LAYERS, seed=3)
    with torch.no_grad():  # spread the logits: random init is near-uniform
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _lens(model, seed: int = 0) -> TunedLens:
    lens = TunedLens.from_model(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in lens.translators:
            lin.weight.copy_(0.1 * torch.randn(lin.weight.shape, generator=g))
            lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=g))
    return lens


def _prefill(dec, ids, mask, steps):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    dec.reset(ids.shape[0], ids.shape[1] + steps, "cpu")
    return dec.forward(ids, pos, mask), pos[:, -1]


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("head", ["logit", "tuned"])
def test_threshold_one_is_the_full_decoder_exactly(arch, head):
    model = _model(arch)
    lens = _lens(model) if head == "tuned" else None
    ids, mask = padded_batch(97, "left")
    full = StaticDecoder(model)
    ee = EarlyExitDecoder(model, exit_layers=range(1, LAYERS), threshold=1.0, head=head,
                          lens=lens)
    a, last_a = _prefill(full, ids, mask, 8)
    b, last_b = _prefill(ee, ids, mask, 8)
    for _ in range(7):
        assert torch.equal(a, b)
        nxt = a.argmax(-1)[:, None]
        last_a, last_b = last_a + 1, last_b + 1
        a, b = full.forward(nxt, last_a[:, None]), ee.forward(nxt, last_b[:, None])
    assert torch.equal(a, b)
    assert ee.exits == {LAYERS: 7} and ee.mean_layers() == LAYERS
    for ka, kb in zip(full.k + full.v, ee.k + ee.v, strict=True):
        assert torch.equal(ka, kb)


def test_threshold_one_generates_the_same_tokens_through_generate(tiny_model, char_tokenizer):
    prompts = ["12+7=", "a longer prompt: 3*4=", "x"]
    n = tiny_model.config.num_hidden_layers
    ref = generate(tiny_model, char_tokenizer, prompts, n=2, temperature=0.0,
                   max_new_tokens=12, batch_size=4, progress=False)
    ee = EarlyExitDecoder(tiny_model, exit_layers=range(1, n), threshold=1.0)
    got = generate(tiny_model, char_tokenizer, prompts, n=2, temperature=0.0,
                   max_new_tokens=12, batch_size=4, progress=False, engine=ee)
    assert [g.token_ids for g in got] == [g.token_ids for g in ref]
    assert set(ee.exits) == {n} and sum(ee.exits.values()) > 0
    # τ = 0 exits at the first check on every step: fewer blocks per step
    ee0 = EarlyExitDecoder(tiny_model, exit_layers=[1], threshold=0.0)
    generate(tiny_model, char_tokenizer, prompts, temperature=0.0, max_new_tokens=6,
             progress=False, engine=ee0)
    assert set(ee0.exits) == {1} and ee0.mean_layers() == 1.0


def _hf_kv(model, j: int, h: torch.Tensor, pos: torch.Tensor):
    """Block j's rotated keys and values [B, kv, 1, hd] of hidden states h [B, 1, d]
    through its HF modules (input norm, k/v projections, k-norm, rotary)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    blk = model.model.layers[j]
    attn = blk.self_attn
    x = blk.input_layernorm(h)
    b = h.shape[0]
    k = attn.k_proj(x).view(b, 1, -1, attn.head_dim)
    v = attn.v_proj(x).view(b, 1, -1, attn.head_dim)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    cos, sin = model.model.rotary_emb(h, pos)
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    return k, v


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("head", ["logit", "tuned"])
@pytest.mark.parametrize("exit_at", [1, 2])
def test_exit_logits_and_propagated_keys_values(arch, head, exit_at):
    model = _model(arch)
    lens = _lens(model, seed=1) if head == "tuned" else None
    ids, mask = padded_batch(97, "left", seed=2)
    ee = EarlyExitDecoder(model, exit_layers=[exit_at], threshold=0.0, head=head, lens=lens)
    logits, last = _prefill(ee, ids, mask, 4)
    tok1 = logits.argmax(-1)[:, None]
    t = ids.shape[1]
    exited = ee.forward(tok1, (last + 1)[:, None])  # τ = 0: exits after block exit_at
    assert ee.exits == {exit_at: 1}

    ids1 = torch.cat([ids, tok1], 1)
    mask1 = torch.cat([mask, torch.ones_like(tok1)], 1)
    pos1 = (mask1.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids1, attention_mask=mask1, position_ids=pos1,
                    output_hidden_states=True, use_cache=True)
        h = out.hidden_states[exit_at][:, -1:]  # h[l] of the new token, the full model's
        hl = h if lens is None else lens.transform_hidden(h, exit_at)
        ref = model.lm_head(model.model.norm(hl))[:, -1]
    torch.testing.assert_close(exited, ref, atol=2e-5, rtol=1e-5)

    cache = out.past_key_values
    for j in range(LAYERS):
        if j < exit_at:  # blocks that ran: the model's own keys and values
            k_ref, v_ref = cache.layers[j].keys[:, :, t], cache.layers[j].values[:, :, t]
        else:  # skipped: block j's k/v of the propagated h[exit_at]
            k_ref, v_ref = (x[:, :, 0] for x in _hf_kv(model, j, h, pos1[:, -1:]))
            # block exit_at reads h[exit_at] in the full model too; the ones above read
            # h[j] there, not the propagated h[exit_at]
            assert (j == exit_at) == torch.allclose(ee.k[j][:, :, t], cache.layers[j].keys[:, :, t],
                                      atol=1e-3)
            cache.layers[j].keys[:, :, t] = k_ref  # the cache an exact CALM step leaves
            cache.layers[j].values[:, :, t] = v_ref
        torch.testing.assert_close(ee.k[j][:, :, t], k_ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ee.v[j][:, :, t], v_ref, atol=2e-5, rtol=1e-5)

    # the next token (no exit) attends to the propagated keys/values in blocks > exit_at:
    # the same as transformers' forward on a cache holding them
    ee.threshold = 1.0
    tok2 = exited.argmax(-1)[:, None]
    got = ee.forward(tok2, (last + 2)[:, None])
    mask2 = torch.cat([mask1, torch.ones_like(tok2)], 1)
    with torch.no_grad():
        ref2 = model(input_ids=tok2, attention_mask=mask2, position_ids=pos1[:, -1:] + 1,
                     past_key_values=cache, use_cache=True).logits[:, -1]
    torch.testing.assert_close(got, ref2, atol=3e-5, rtol=1e-5)


def test_bad_arguments_get_one_line():
    model = _model("llama")
    with pytest.raises(ValueError, match=r"exit_layers must be block outputs h\[1\]..h\[3\]"):
        EarlyExitDecoder(model, exit_layers=[4], threshold=0.9)
    with pytest.raises(ValueError, match="exit_layers"):
        EarlyExitDecoder(model, exit_layers=[0], threshold=0.9)
    with pytest.raises(ValueError, match="needs a tuned lens"):
        EarlyExitDecoder(model, exit_layers=[2], threshold=0.9, head="tuned")
    with pytest.raises(ValueError, match="unknown exit head"):
        EarlyExitDecoder(model, exit_layers=[2], threshold=0.9, head="mlp")
    with pytest.raises(ValueError, match="threshold"):
        EarlyExitDecoder(model, exit_layers=[2], threshold=float("nan"))


def test_benchmark_helpers_count_exits_and_agreement():
    """``pipeline.bench early_exit``'s loop: per-token exit flags, and agreement against the
    full model's greedy token on each prefix (1 for the full decoder; a direct loop for an
    engine that always exits)."""
    from pipeline.bench import early_exit as bench

    model = _model("llama")
    prompts = [bench.Prompt("t", {}, [5, 9, 11, 3], 6), bench.Prompt("t", {}, [7, 2], 4)]
    full = bench._run("full", StaticDecoder(model), prompts, eos=None)
    assert full.exited == [[False] * 6, [False] * 4]
    assert bench._agreement(model, prompts, full)[0] == 1.0
    ee = bench._run("ee", EarlyExitDecoder(model, exit_layers=[1], threshold=0.0), prompts, None)
    assert ee.exited == [[True] * 6, [True] * 4] and ee.layers == 1.0
    same = total = 0
    with torch.no_grad():
        for p, out in zip(prompts, ee.outputs, strict=True):
            for j, tok in enumerate(out):  # the full model's greedy token on each prefix
                ref = model(input_ids=torch.tensor([p.ids + out[:j]])).logits[0, -1].argmax()
                same += int(ref == tok)
                total += 1
    agree, agree_exited, agree_rest = bench._agreement(model, prompts, ee)
    assert agree == pytest.approx(same / total) and agree_exited == agree
    assert agree_rest != agree_rest  # NaN: no token came from a full step
