"""The model-access layer against the transformers forward and naive full-vocabulary math.

Runner: the explicit loop must reproduce ``model.model(...)`` (the decoder's own forward)
on every architecture it replays, left- and right-padded, sliding windows included; reads
come in forward order; ``stop_after`` really skips the later blocks. Unembed: every
reduction equals full ``[N, V]`` fp64 logits → softmax computed directly.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, make_hf_model, padded_batch
from torch import nn

from pipeline.model_access import (
    KINDS,
    Point,
    Unembed,
    find_layout,
    loop_supported,
    position_ids,
    run,
)

ATOL = dict(atol=2e-6, rtol=1e-5)


def _hf_hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    out = model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                      output_hidden_states=True, use_cache=False)
    return out.last_hidden_state, out.hidden_states


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ARCHS)
def test_loop_equals_decoder_forward(arch, side):
    extra = {"sliding_window": 4} if arch in ("mistral", "gemma2") else {}
    model = make_hf_model(arch, **extra)
    assert loop_supported(model, find_layout(model))
    ids, mask = padded_batch(300, side, (9, 4, 6))
    resid: dict[int, torch.Tensor] = {}
    reads = {Point("resid_pre", 0): lambda h: resid.__setitem__(0, h)}
    reads.update({f"resid_post[{i}]": (lambda h, i=i: resid.__setitem__(i + 1, h))
                  for i in range(3)})
    with torch.no_grad():
        final = run(model, ids, mask, read=reads, final_norm=True)
        ref_final, ref_hidden = _hf_hidden(model, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(final[real], ref_final[real], **ATOL)
    for i in range(3):  # HF's hidden_states[l] for l < L are the raw h[l]
        torch.testing.assert_close(resid[i][real], ref_hidden[i][real], **ATOL)


def test_qwen2_layer_types_sliding():
    """Qwen2 with some sliding-window layers: each block gets its own mask type."""
    model = make_hf_model("qwen2", layers=4, use_sliding_window=True, sliding_window=3,
                          max_window_layers=2)
    assert "sliding_attention" in model.config.layer_types
    ids, mask = padded_batch(300, "left", (10, 6))
    with torch.no_grad():
        final = run(model, ids, mask, final_norm=True)
        ref, _ = _hf_hidden(model, ids, mask)
    torch.testing.assert_close(final[mask.bool()], ref[mask.bool()], **ATOL)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_stop_after_skips_later_blocks_and_reads_in_order(arch):
    model = make_hf_model(arch, layers=3)
    ids, mask = padded_batch(300, "right")
    fired: list[str] = []
    blocks = model.model.layers
    handles = [blocks[2].register_forward_pre_hook(lambda *a: fired.append("block2")),
               model.model.norm.register_forward_hook(lambda *a: fired.append("norm")),
               model.lm_head.register_forward_hook(lambda *a: fired.append("lm_head"))]
    order: list[str] = []
    reads = {Point(kind, layer): (lambda _x, n=f"{kind}[{layer}]": order.append(n))
             for layer in range(2) for kind in KINDS}
    try:
        with torch.no_grad():
            h2 = run(model, ids, mask, read=reads, stop_after=2)
    finally:
        for h in handles:
            h.remove()
    assert fired == []
    assert order == [f"{kind}[{layer}]" for layer in range(2) for kind in KINDS]
    with torch.no_grad():
        _, ref_hidden = _hf_hidden(model, ids, mask)
    torch.testing.assert_close(h2[mask.bool()], ref_hidden[2][mask.bool()], **ATOL)


def test_gradients_stop_at_block_k():
    model = make_hf_model("qwen3", layers=3).train()
    ids, mask = padded_batch(300, "left")
    run(model, ids, mask, stop_after=1).pow(2).sum().backward()
    grads = {n: p.grad is not None for n, p in model.named_parameters()}
    assert grads["model.embed_tokens.weight"]
    assert any(g for n, g in grads.items() if n.startswith("model.layers.0."))
    assert not any(g for n, g in grads.items() if n.startswith(("model.layers.1.",
                                                                 "model.layers.2.",
                                                                 "model.norm")))


@pytest.mark.parametrize("arch", ["qwen3", "llama", "olmo2"])
def test_qk_ahead_of_stop_equals_hook_read(arch):
    """q/k of block k read without running it equal the hook read inside a full run."""
    model = make_hf_model(arch, layers=3)
    ids, mask = padded_batch(300, "left")
    a: dict[str, torch.Tensor] = {}
    b: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        run(model, ids, mask, read={"q[2]": lambda t: a.__setitem__("q", t),
                                    "k[2]": lambda t: a.__setitem__("k", t)}, stop_after=2)
        run(model, ids, mask, read={"q[2]": lambda t: b.__setitem__("q", t),
                                    "k[2]": lambda t: b.__setitem__("k", t)})
    assert a["q"].shape == (3, 4, 7, model.config.hidden_size // 4)
    torch.testing.assert_close(a["q"], b["q"], atol=0, rtol=0)
    torch.testing.assert_close(a["k"], b["k"], atol=0, rtol=0)


def test_fallback_layout_runs_own_forward():
    """GPT-2 is not replayed by the loop: the decoder's own forward with the same reads."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                       n_positions=64)).eval()
    assert not loop_supported(model, find_layout(model))
    ids = torch.randint(0, 100, (2, 6))
    mask = torch.ones_like(ids)
    got: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        h1 = run(model, ids, mask, read={"resid_post[0]": lambda h: got.__setitem__(1, h),
                                         "resid_pre[0]": lambda h: got.__setitem__(0, h)},
                 stop_after=1)
        ref = model.transformer(ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(got[0], ref.hidden_states[0], **ATOL)
    torch.testing.assert_close(h1, ref.hidden_states[1], **ATOL)


def test_bad_points_and_stops():
    model = make_hf_model("llama", layers=2)
    ids, mask = padded_batch(300, "right")
    with pytest.raises(ValueError, match="bad read point"):
        run(model, ids, mask, read={"resid_post3": print})
    with pytest.raises(ValueError, match="unknown read point kind"):
        run(model, ids, mask, read={"mlp_out[0]": print})
    with pytest.raises(ValueError, match=r"after the last block run"):
        run(model, ids, mask, read={"ffn_out[1]": print}, stop_after=1)
    with pytest.raises(ValueError, match="stop_after"):
        run(model, ids, mask, stop_after=3)
    with pytest.raises(ValueError, match="final_norm"):
        run(model, ids, mask, stop_after=1, final_norm=True)


# ------------------------------------------------------------------------ Unembed


def _naive(x, head, norm=None, cap=None, temp=1.0):
    x = x.double() if norm is None else norm(x).double()
    z = x @ head.weight.double().T
    if head.bias is not None:
        z = z + head.bias.double()
    if cap:
        z = cap * torch.tanh(z / cap)
    return torch.log_softmax(z / temp, -1)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("opts", [dict(), dict(cap=5.0, temp=0.7, use_norm=True)])
def test_unembed_reductions_equal_full_softmax(frozen, opts):
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=True)
    nn.init.normal_(head.weight, std=0.8)
    norm = nn.LayerNorm(16) if opts.get("use_norm") else None
    un = Unembed(head, norm=norm, softcap=opts.get("cap"), temperature=opts.get("temp", 1.0),
                 chunk_rows=3, frozen=frozen)
    x = torch.randn(11, 16)
    t = torch.randint(0, 50, (11,))
    with torch.no_grad():
        ref = _naive(x, head, norm, opts.get("cap"), opts.get("temp", 1.0))
    lp, ent = un.target_logprobs(x, t, with_entropy=True)
    torch.testing.assert_close(lp.double(), ref.gather(-1, t[:, None])[:, 0], atol=1e-5,
                               rtol=1e-5)
    ref_ent = -(ref.exp() * ref).sum(-1)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(un.entropy(x).double(), ref_ent, atol=1e-5, rtol=1e-5)
    ref_rank = 1 + (ref > ref.gather(-1, t[:, None])).sum(-1)
    assert torch.equal(un.ranks(x, t), ref_rank)
    _, ids = un.topk(x, 3)
    assert torch.equal(ids, ref.topk(3, -1).indices)


def test_unembed_checkpointed_gradients_equal_unchunked():
    torch.manual_seed(1)
    head = nn.Linear(16, 40)
    x = torch.randn(9, 16, requires_grad=True)
    t = torch.randint(0, 40, (9,))
    grads = []
    for rows in (2, 100):  # chunked + checkpointed vs one chunk
        head.zero_grad()
        x.grad = None
        lp, _ = Unembed(head, chunk_rows=rows).target_logprobs(x, t)
        lp.sum().backward()
        grads.append((x.grad.clone(), head.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    frozen = Unembed(head, frozen=True)
    head.zero_grad()
    frozen.log_probs(x).sum().backward()
    assert head.weight.grad is None or not head.weight.grad.any()


def test_live_unembed_of_half_head_makes_no_fp32_copy():
    """The trainable path reads the live head; the fp32 copy is made only when a no-grad
    reduction (entropy) or the frozen path asks for it."""
    head = nn.Linear(16, 40).to(torch.bfloat16)
    un = Unembed(head)
    x = torch.randn(5, 16, dtype=torch.bfloat16)
    un.target_logprobs(x, torch.randint(0, 40, (5,)))
    assert un._fp32 is None
    un.entropy(x)
    assert un.weight.dtype == torch.float32 and un._fp32 is not None
