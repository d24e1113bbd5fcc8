"""The static-cache decoder against full no-cache transformers forwards (eager attention),
its KV cache (sample dtype, allocated once) against fp32 and the memory planner."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from pipeline import memory_plan as mp
from pipeline.generation import _HFStepper, decoder, generate, sample_next
from pipeline.static_decode import StaticDecoder, unsupported_reason

COMMON = dict(vocab_size=61, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
              pad_token_id=0, eos_token_id=1, bos_token_id=2, initializer_range=0.25)


def _models():
    torch.manual_seed(0)
    out = {
        "qwen3": Qwen3ForCausalLM(Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True)),
        # untied head, biases on q/k/v/o and the MLP, llama3 rope scaling
        "llama-bias": LlamaForCausalLM(LlamaConfig(
            **COMMON, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 32})),
        "qwen2": Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=False)),
    }
    for m in out.values():  # random init is near-uniform; spread the logits
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() == 1:
                    p.add_(0.3 * torch.randn_like(p))
        m.eval().set_attn_implementation("eager")
    return out


MODELS = _models()


def _batch(pad: int = 0, seed: int = 0):
    """Left-padded prompts of lengths 7, 3, 5 (pad id 0)."""
    g = torch.Generator().manual_seed(seed)
    lens = [7, 3, 5]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for r, n in enumerate(lens):
        ids[r, 7 - n:] = torch.randint(3, 61, (n,), generator=g)
        mask[r, 7 - n:] = 1
    return ids, mask


@torch.no_grad()
def _reference_logits(model, ids, mask):
    """Last-position logits of a full forward over the whole sequence, no cache."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()


@pytest.mark.parametrize("name", list(MODELS))
def test_prefill_and_steps_match_full_forwards_fp32(name):
    model = MODELS[name]
    assert unsupported_reason(model) is None
    ids, mask = _batch()
    dec = StaticDecoder(model)
    dec.reset(3, 7 + 6, "cpu")
    assert all(k.dtype == torch.float32 for k in dec.k + dec.v)  # the model's own dtype
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = dec.forward(ids, pos, mask)
    last = pos[:, -1]
    for _ in range(6):
        torch.testing.assert_close(logits, _reference_logits(model, ids, mask),
                                   atol=2e-5, rtol=1e-5)
        nxt = logits.argmax(-1)[:, None]
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        last = last + 1
        logits = dec.forward(nxt, last[:, None])
    assert dec.length == 13
    with pytest.raises(ValueError, match="static cache full"):
        dec.forward(nxt, last[:, None] + 1)


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_weights_stay_close_to_fp32_and_leave_the_model(name):
    model = MODELS[name]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids, mask = _batch(seed=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    dec = StaticDecoder(model, dtype=torch.bfloat16)
    dec.reset(3, 8, "cpu")
    got = dec.forward(ids, pos, mask).float()
    ref = _reference_logits(model, ids, mask)
    err = (got - ref).abs().max().item()
    assert 0 < err < 0.05 * ref.abs().max().item()  # rounded weights, not the fp32 model
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_select_drops_rows_like_a_smaller_batch(dtype):
    model = MODELS["qwen3"]
    ids, mask = _batch(seed=2)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    full, part, last = (StaticDecoder(model, dtype=dtype, cache_dtype=dtype) for _ in range(3))
    full.reset(3, 10, "cpu")
    part.reset(2, 10, "cpu")
    last.reset(1, 10, "cpu")
    full.forward(ids, pos, mask)
    part.forward(ids[[0, 2]], pos[[0, 2]], mask[[0, 2]])
    full.select(torch.tensor([0, 2]))
    tok = torch.tensor([[5], [9]])
    nxt = pos[[0, 2], -1:] + 1
    torch.testing.assert_close(full.forward(tok, nxt), part.forward(tok, nxt))
    # then the second kept row alone (a row behind another moves forward), one more step
    last.forward(ids[[2]], pos[[2]], mask[[2]])
    last.forward(tok[[1]], nxt[[1]])
    full.select(torch.tensor([1]))
    torch.testing.assert_close(full.forward(tok[[0]], nxt[[1]] + 1),
                               last.forward(tok[[0]], nxt[[1]] + 1))
    assert [tuple(k.shape) for k in full.k] == [(1, 2, 10, 16)] * 3


@pytest.mark.parametrize("name", list(MODELS))
def test_cache_allocated_once_in_the_sample_dtype(name):
    """reset allocates every layer's k and v at the batch's full length in the decoder's
    dtype; prefill, steps and dropping rows write into those same buffers (no growth, no
    second copy of the cache)."""
    model = MODELS[name]
    ids, mask = _batch(seed=3)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    dec = StaticDecoder(model, dtype=torch.bfloat16, cache_dtype=torch.bfloat16)
    dec.reset(3, 7 + 5, "cpu")
    hd = getattr(model.config, "head_dim", None) or 48 // 6
    bufs = dec.k + dec.v
    ptrs = [b.untyped_storage().data_ptr() for b in bufs]
    assert all(b.dtype == torch.bfloat16 and tuple(b.shape) == (3, 2, 12, hd) for b in bufs)
    # rows × positions × layers × (k, v) × KV heads × head_dim × 2 bytes
    assert sum(b.untyped_storage().nbytes() for b in bufs) == 3 * 12 * 3 * 2 * 2 * hd * 2
    dec.forward(ids, pos, mask)
    last = pos[:, -1:]
    for step in range(4):
        if step == 2:
            dec.select(torch.tensor([0, 2]))
            last = last[[0, 2]]
        last = last + 1
        dec.forward(torch.full_like(last, 7), last)
    bufs = dec.k + dec.v
    assert [b.untyped_storage().data_ptr() for b in bufs] == ptrs
    assert all(b.dtype == torch.bfloat16 and tuple(b.shape) == (2, 2, 12, hd) for b in bufs)
    # decode steps read each layer back into one preallocated fp32 buffer pair
    assert [b.untyped_storage().nbytes() for b in dec._fp32] == [3 * 2 * 12 * hd * 4] * 2
    assert dec.length == 11 and not hasattr(dec, "_grow")


@pytest.mark.parametrize("name,sample_dtype", [("qwen3", "bfloat16"), ("llama-bias", None)])
def test_kv_cache_bytes_equal_the_memory_planner(name, sample_dtype):
    """The planner's cache term (pipeline.memory_plan.sampling_phases) is what reset
    allocates: B rows × prompt + max_new positions in the sample dtype, and for a
    half-precision cache one layer's fp32 read-back buffer; sampling allocates no other."""
    model = MODELS[name]
    shape = mp.shape_from_hf_config(model.config.to_dict())
    _, kv, _, _ = mp.sampling_phases(shape, 3, 7, 6, sample_dtype)
    dt = getattr(torch, sample_dtype or "float32")
    dec = StaticDecoder(model, dtype=dt, cache_dtype=dt)  # as on a GPU (CPU default: fp32)
    dec.reset(3, 7 + 6, "cpu")
    assert (dec._fp32 is None) == (sample_dtype is None)
    bufs = dec.k + dec.v + list(dec._fp32 or ())
    ptrs = {b.untyped_storage().data_ptr() for b in bufs}
    assert sum(b.untyped_storage().nbytes() for b in bufs) == kv
    ids, mask = _batch(seed=1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    dec.forward(ids, pos, mask)
    dec.select(torch.tensor([0, 2]))
    dec.forward(torch.tensor([[4], [5]]), pos[[0, 2], -1:] + 1)
    assert {b.untyped_storage().data_ptr() for b in dec.k + dec.v + list(dec._fp32 or ())} \
        == ptrs


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_cache_stays_close_to_fp32_cache(name):
    """Teacher-forced logits (prefill + 11 steps, 3 prompt sets) of the bf16 decoder with its
    bf16 cache against the same bf16 weights over an fp32 cache (the cache as it was before
    it followed the sample dtype), and against the fp32 decoder; errors relative to the
    step's max |fp32 logit| (5.5-7.4 on these deliberately spread tiny models).

    Measured over 6 prompt sets per model: rounding k and v to bf16 (relative error
    <= 2^-9 per element) moves the logits by at most 3.6 % (qwen2; qwen3 <= 2.4 %, llama
    <= 3.2 %), about what rounding the weights does (bf16 weights over an fp32 cache vs
    fp32: up to 7.4 %); the whole bf16 decoder is within 8.2 % of fp32. Bounds: 6 % for
    the cache alone, 12 % for the whole bf16 decoder (~1.5x the worst measured; a cache
    written at a wrong position or read uninitialised moves logits by whole units)."""
    model = MODELS[name]
    g = torch.Generator().manual_seed(0)
    for seed in range(3):
        ids, mask = _batch(seed=seed)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        dec, ref = (StaticDecoder(model, dtype=torch.bfloat16, cache_dtype=torch.bfloat16)
                    for _ in range(2))
        fp32 = StaticDecoder(model)
        for d in (dec, ref, fp32):
            d.reset(3, 7 + 12, "cpu")
        assert dec.k[0].dtype == torch.bfloat16
        ref.k, ref.v = [k.float() for k in ref.k], [v.float() for v in ref.v]
        a, b, c = (d.forward(ids, pos, mask).float() for d in (dec, ref, fp32))
        last = pos[:, -1]
        cache_err = total_err = 0.0
        for _ in range(11):
            scale = c.abs().max().item()
            cache_err = max(cache_err, (a - b).abs().max().item() / scale)
            total_err = max(total_err, (a - c).abs().max().item() / scale)
            nxt = torch.randint(3, 61, (3, 1), generator=g)
            last = last + 1
            a, b, c = (d.forward(nxt, last[:, None]).float() for d in (dec, ref, fp32))
        assert 0 < cache_err <= 0.06, (seed, cache_err)
        assert total_err <= 0.12, (seed, total_err)


def test_cpu_default_cache_is_fp32_accelerator_default_is_the_sample_dtype(monkeypatch):
    """Without cache_dtype the cache is fp32 on CPU (no native bf16 arithmetic there) and
    the compute dtype elsewhere (checked by asking for a 'meta' device allocation)."""
    model = MODELS["qwen3"]
    dec = StaticDecoder(model, dtype=torch.bfloat16)
    dec.reset(2, 9, "cpu")
    assert dec.k[0].dtype == torch.float32 and dec._fp32 is None
    dec.reset(2, 9, "meta")
    assert dec.k[0].dtype == torch.bfloat16 and dec._fp32 is not None


def test_unsupported_models_fall_back_to_transformers():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=61, n_embd=32, n_layer=2, n_head=4)).eval()
    assert "gpt2" in unsupported_reason(gpt2)
    assert isinstance(decoder(gpt2), _HFStepper)
    with pytest.raises(ValueError, match="does not support"):
        StaticDecoder(gpt2)
    sliding = Qwen2ForCausalLM(Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=4,
                                           max_window_layers=0))
    assert unsupported_reason(sliding) == "sliding-window layers"


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_static_and_transformers_paths_sample_the_same_tokens(tiny_model, char_tokenizer, dtype):
    """Both engines of ``generate`` on left-padded batches with rows finishing early: same
    greedy tokens in fp32; in bf16 the static path keeps fp32 activations, so compare it
    with fp32 greedy instead (tiny models: rounding the weights and the bf16 KV cache flips
    no argmax here)."""
    prompts = ["Numbers: 1 2 3\nTarget: 6\n", "N", "Numbers: 10 20 3\nTarget: 33\n"]
    kw = dict(temperature=0.0, max_new_tokens=12, batch_size=3, progress=False)
    ref = generate(tiny_model, char_tokenizer, prompts, static=False, **kw)
    got = generate(tiny_model, char_tokenizer, prompts, static=True, dtype=dtype, **kw)
    assert [g.token_ids for g in got] == [g.token_ids for g in ref]


def test_inverse_cdf_sampling_follows_the_distribution():
    p = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.25, 0.05, 0.0])
    logits = torch.log(p).repeat(40000, 1)
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits, 1.0, 1.0, g)
    freq = torch.bincount(picks, minlength=7).float() / len(picks)
    assert freq[p == 0].sum() == 0  # zero-probability tokens are never drawn
    # binomial standard error at n=40000 is <= 0.0025: 4 sigma
    assert (freq - p).abs().max() < 0.01
    hot = sample_next(torch.log(p).repeat(40000, 1), 0.5, 1.0, g)  # T=0.5 sharpens: p^2
    q = p ** 2 / (p ** 2).sum()
    freq = torch.bincount(hot, minlength=7).float() / len(hot)
    assert (freq - q).abs().max() < 0.01
