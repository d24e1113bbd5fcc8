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
