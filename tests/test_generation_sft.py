"""Batched sampling against an unbatched no-cache greedy loop; SFT masking and learning."""

from __future__ import annotations

import torch

from pipeline.generation import generate
from pipeline.tasks import countdown
from pipeline.training.sft import collate, encode_pairs, train_sft


def _naive_greedy(model, tok, prompt: str, max_new: int) -> str:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = []
    for _ in range(max_new):
        with torch.no_grad():
            nxt = int(model(ids).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(out)


def test_batched_greedy_matches_naive_loop(tiny_model, char_tokenizer):
    # prompts of different lengths → left padding inside the batch
    prompts = ["Numbers: 1 2 3\nTarget: 6\n", "Numbers: 10 20 3\nTarget: 33\n", "N"]
    gens = generate(tiny_model, char_tokenizer, prompts, temperature=0.0, max_new_tokens=12,
                    batch_size=3, progress=False)
    assert [g.prompt_index for g in gens] == [0, 1, 2]
    for g, p in zip(gens, prompts, strict=True):
        assert g.text == _naive_greedy(tiny_model, char_tokenizer, p, 12)
    assert char_tokenizer.padding_side == "left"


def test_sampling_shapes_and_seed(tiny_model, char_tokenizer):
    kw = dict(n=3, temperature=1.0, max_new_tokens=8, batch_size=4, progress=False, seed=7)
    a = generate(tiny_model, char_tokenizer, ["ab", "abcd"], **kw)
    b = generate(tiny_model, char_tokenizer, ["ab", "abcd"], **kw)
    assert [(g.prompt_index, g.sample_index) for g in a] == [(i, j) for i in (0, 1)
                                                              for j in range(3)]
    assert [g.text for g in a] == [g.text for g in b]
    assert all(g.num_tokens <= 8 for g in a)


def test_collate_masks_prompt_and_padding(char_tokenizer):
    pairs = [("Numbers: 1 2\n", "<answer>1+2</answer>"), ("N", "x")]
    enc = encode_pairs(char_tokenizer, pairs)
    batch = collate(enc, char_tokenizer.pad_token_id)
    p0, c0 = enc[0]
    assert batch["labels"][0, : len(p0)].eq(-100).all()
    assert batch["labels"][0, len(p0): len(p0) + len(c0)].tolist() == c0
    assert c0[-1] == char_tokenizer.eos_token_id
    assert batch["attention_mask"][1].sum() == len(enc[1][0]) + len(enc[1][1])
    assert batch["labels"][1, len(enc[1][0]) + len(enc[1][1]):].eq(-100).all()


def test_sft_lowers_completion_loss(tiny_model, char_tokenizer):
    import copy

    model = copy.deepcopy(tiny_model)
    problems = countdown.generate(32, seed=5)
    pairs = [(countdown.prompt(p), countdown.trace(p)) for p in problems]
    hist = train_sft(model, char_tokenizer, pairs, steps=80, batch_size=16, lr=3e-3,
                     warmup_steps=2, log_every=10, progress=False)
    assert hist[-1]["loss"] < 0.6 * hist[0]["loss"]
    assert not model.training


def test_rows_finishing_early_are_dropped_correctly(tiny_model, char_tokenizer):
    """Make a token the greedy path emits mid-way the EOS: that row must stop there while
    the other rows (and their caches, after the batch shrinks) continue unchanged."""
    import copy

    prompts = ["Numbers: 1 2 3\nTarget: 6\n", "Numbers: 10 20 3\nTarget: 33\n", "N"]
    free = [_naive_greedy(tiny_model, char_tokenizer, p, 10) for p in prompts]
    tok = copy.deepcopy(char_tokenizer)
    stop_char = free[0][3]
    tok.eos_token = stop_char
    gens = generate(tiny_model, tok, prompts, temperature=0.0, max_new_tokens=10,
                    batch_size=3, progress=False)
    for g, full in zip(gens, free, strict=True):
        cut = full.find(stop_char)
        if cut >= 0:
            assert g.finished and g.text == full[:cut] and g.num_tokens == cut + 1
        else:
            assert not g.finished and g.text == full


def test_hf_generate_agrees_on_greedy(tiny_model, char_tokenizer):
    prompts = ["Numbers: 4 5\nTarget: 9\n", "N"]
    ours = generate(tiny_model, char_tokenizer, prompts, temperature=0.0, max_new_tokens=8,
                    batch_size=2, progress=False, min_new_tokens=8)
    enc = char_tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    hf = tiny_model.generate(**enc, do_sample=False, max_new_tokens=8, min_new_tokens=8,
                             pad_token_id=char_tokenizer.pad_token_id)
    for g, row in zip(ours, hf[:, enc["input_ids"].shape[1]:], strict=True):
        assert g.token_ids == row.tolist()


def test_top_p_keeps_the_nucleus():
    from pipeline.generation import sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits, 1.0, 0.75, g)
    assert set(picks.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75: tokens 2, 3 never drawn
    share = (picks == 0).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.04
    assert sample_next(logits[:1], 0.0, 1.0, None).item() == 0


def test_sampling_model_casts_a_copy_and_leaves_the_model(tiny_model, char_tokenizer):
    from pipeline.generation import sampling_model

    assert sampling_model(tiny_model, None) is tiny_model
    assert sampling_model(tiny_model, "float32") is tiny_model  # already fp32
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    attn = tiny_model.config._attn_implementation
    copy = sampling_model(tiny_model, torch.bfloat16)
    assert copy is not tiny_model and not copy.training
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert copy.config._attn_implementation == "sdpa"
    assert tiny_model.config._attn_implementation == attn
    for n, p in tiny_model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
    for n, p in copy.named_parameters():  # the copy carries the current weights, rounded
        torch.testing.assert_close(p.float(), before[n], atol=0, rtol=2 ** -8)


def test_bf16_sampling_decodes_the_bf16_model_greedily(tiny_model, char_tokenizer):
    """The transformers path with dtype=bfloat16 == a naive greedy loop over full forwards of
    the bf16 copy (the static path is compared in tests/test_static_decode.py)."""
    from pipeline.generation import sampling_model

    prompts = ["12+3=", "7*8-1="]
    got = generate(tiny_model, char_tokenizer, prompts, temperature=0.0, max_new_tokens=6,
                   progress=False, dtype="bfloat16", static=False)
    ref_model = sampling_model(tiny_model, torch.bfloat16)
    for g, prompt in zip(got, prompts, strict=True):
        ids = char_tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        out = []
        with torch.no_grad():
            for _ in range(len(g.token_ids)):
                nxt = int(ref_model(input_ids=ids).logits[0, -1].argmax())
                out.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
                if nxt == char_tokenizer.eos_token_id:
                    break
        assert g.token_ids == out
