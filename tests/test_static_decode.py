"""The static-cache decoder against full no-cache transformers forwards (eager attention)."""

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
    dec.reset(3, 7 + 6, "cpu", reserve=8)  # grows from 8 to 13 positions on the way
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


def test_select_drops_rows_like_a_smaller_batch():
    model = MODELS["qwen3"]
    ids, mask = _batch(seed=2)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    full, part = StaticDecoder(model), StaticDecoder(model)
    full.reset(3, 10, "cpu")
    part.reset(2, 10, "cpu")
    full.forward(ids, pos, mask)
    part.forward(ids[[0, 2]], pos[[0, 2]], mask[[0, 2]])
    full.select(torch.tensor([0, 2]))
    tok = torch.tensor([[5], [9]])
    nxt = pos[[0, 2], -1:] + 1
    torch.testing.assert_close(full.forward(tok, nxt), part.forward(tok, nxt))


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
    with fp32 greedy instead (tiny models: rounding the weights flips no argmax here)."""
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
