"""The depth stage (pipeline/depth/stage.py) end to end on tiny random models.

Two paths: builtin-task text (the char-tokenizer fixtures, Countdown text, token classes)
and natural text (a tiny Llama with a word-level tokenizer of > 1000 entries and fake
``load_source`` records in the documented formats: wikipedia / openwebtext text, facts,
MMLU). Every summary number checked here is recomputed from the tables.
"""

from __future__ import annotations

import copy
import json
import math
import random

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import pipeline.data
from pipeline.depth import BUCKETS, TunedLens, predict_options, predict_prompts
from pipeline.depth.stage import (
    BUILTIN_TEXT_KIND,
    DEFAULT_SPEC,
    TOKEN_CLASSES,
    early_layers,
    figures,
    is_builtin,
    multi_lens_predictions,
    resolve_spec,
    run_depth,
    token_class,
)

MIN_SPEC = {
    "batch_size": 4,
    "tuned": {"steps": 2, "tokens_per_step": 32, "seq_len": 16, "n_train_texts": 12,
              "heldout_windows": 2, "heldout_seq_len": 16},
    "baseline": {"n_prompts": 12, "min_words": 4, "max_words": 20},
    "frequency": {"n_texts": 40},
    "facts": {"n_facts": 8, "min_answer_tokens": 2},
    "mcq": {"shots": 4, "n_problems": 6, "max_chars": None},
    "pos": {"n_passages": 20, "min_words": 4, "max_words": 30},
    "decision_depth": {"n_ks": 12, "k_max": 1000},
    "claims": {"min_n": 1},
    "builtin": {"n_prompts": 24, "n_freq_texts": 30},
}

WORDS = ["the", "a", "of", "and", "to", "in", "is", "was", "for", "on", "with", "as", "by",
         "at", "from", "that", "this", "it", "river", "city", "town", "king", "north", "south",
         "old", "new", "first", "great", "small", "land", "sea", "hill", "stone"]


# --- fixtures: a natural-text model and fake data sources ----------------------------------

def _passages(n: int, seed: int, source: str) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"{source}/{i}", "source": source,
             "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 45))) + "."}
            for i in range(n)]


def _mmlu(n: int = 16) -> list[dict]:
    rng = random.Random(3)
    out = []
    for i in range(n):
        out.append({"id": f"mmlu/{i}", "source": "mmlu",
                    "question": " ".join(rng.choice(WORDS) for _ in range(6)) + "?",
                    "choices": [" ".join(rng.choice(WORDS) for _ in range(2)) for _ in range(4)],
                    "answer": "ABCD"[i % 4]})
    return out


@pytest.fixture(scope="module")
def text_world():
    """(model, tokenizer, sources): a random 3-block Llama over a word-level vocabulary of
    1200 entries, and fake records; facts whose first answer word is the model's own greedy
    token (so correct-only statistics are not empty)."""
    pre = pre_tokenizers.Whitespace()
    wiki, owt, mmlu = _passages(30, 1, "wikipedia"), _passages(40, 2, "openwebtext"), _mmlu()
    seen: list[str] = []
    texts = [r["text"] for r in wiki + owt]
    texts += [r["question"] + " " + " ".join(r["choices"]) for r in mmlu]
    texts += ["The following are multiple choice questions (with answers). A. B. C. D. "
              "Answer: The capital of is"]
    for t in texts:
        seen += [w for w, _ in pre.pre_tokenize_str(t)]
    vocab = ["<pad>", "<eos>", "<unk>"] + sorted(set(seen))
    vocab += [f"filler{i}" for i in range(1200 - len(vocab))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>", padding_side="left")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, max_position_embeddings=512, tie_word_embeddings=False,
                         initializer_range=0.2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    facts = []
    for i in range(12):
        prompt = f"The capital of {WORDS[i + 10]} is"
        with torch.no_grad():
            g = int(model(torch.tensor([tok(prompt).input_ids])).logits[0, -1].argmax())
        word = tok.convert_ids_to_tokens(g)
        if word.startswith("<"):
            continue
        facts.append({"id": f"capital/{i}", "subject": WORDS[i + 10], "relation": "capital",
                      "prompt": prompt, "answer": f"{word} town", "source": "fake"})
    sources = {"wikipedia": wiki, "openwebtext": owt, "mmlu": mmlu, "facts": facts}
    return model, tok, sources


@pytest.fixture
def fake_sources(monkeypatch, text_world):
    sources = text_world[2]
    calls = []

    def load_source(name, *, cache_dir=None, split=None, **kw):
        calls.append(name)
        return [dict(r) for r in sources[name]]

    monkeypatch.setattr(pipeline.data, "load_source", load_source)
    return calls


# --- consistency checks shared by both paths -----------------------------------------------

def check_common(tables: dict, summary: dict, num_layers: int) -> None:
    L = num_layers
    json.dumps(summary, allow_nan=False)  # JSON-safe (NaN → None)
    for df in tables.values():
        assert "model" in df.columns
    lenses = summary["lenses"]
    # KL: summary lists = table; h[L] has no translator under "input" → both 0
    kl = tables["kl"]
    assert set(kl.columns) >= {"lens", "layer", "kl", "n_tokens"}
    for name in lenses:
        col = kl[kl.lens == name].sort_values("layer")["kl"].to_numpy()
        np.testing.assert_allclose(col, summary["kl"]["per_layer"][name], rtol=1e-6)
        assert len(col) == L + 1 and abs(col[-1]) < 1e-5
    # baseline long table
    base = tables["baseline"]
    assert set(base.columns) >= {"lens", "prompt", "layer", "rank", "top1", "final", "target",
                                 "top1_bucket", "flip"}
    n = summary["baseline"]["n_prompts"]
    assert len(base) == n * (L + 1) * len(lenses) and len(tables["baseline_prompts"]) == n
    last = base[base.layer == L]
    assert (last["rank"] == 1).all() and not last["flip"].any()
    # bucket mix: rows sum to 1 per (lens, layer), and it is the baseline table counted
    mix = tables["bucket_mix"]
    assert set(mix.columns) >= {"lens", "layer", "bucket", "count", "share", "n_prompts"}
    np.testing.assert_allclose(mix.groupby(["lens", "layer"])["share"].sum(), 1.0)
    counted = base.groupby(["lens", "layer", "top1_bucket"]).size()
    for r in mix.itertuples():
        assert r.count == counted.get((r.lens, r.layer, r.bucket), 0)
        assert math.isclose(r.share, r.count / n)
    # flip rates from the baseline table
    fl = tables["flip_rates"]
    assert set(fl.columns) >= {"lens", "layer", "bucket", "n_in_bucket", "n_flip", "flip_rate",
                               "flip_share"}
    flips = base.groupby(["lens", "layer", "top1_bucket"])["flip"].sum()
    for r in fl.itertuples():
        assert r.n_in_bucket == counted.get((r.lens, r.layer, r.bucket), 0)
        assert r.n_flip == flips.get((r.lens, r.layer, r.bucket), 0)
        if r.n_in_bucket:
            assert math.isclose(r.flip_rate, r.n_flip / r.n_in_bucket)
    for name in lenses:  # summary lists = table
        for b in BUCKETS:
            got = summary["baseline"]["bucket_share_per_layer"][name][b]
            want = mix[(mix.lens == name) & (mix.bucket == b)].sort_values("layer")["share"]
            np.testing.assert_allclose(got, want)
    # decision depth at k = 1 / 10: mean first layer with rank ≤ k over prompts reaching it
    dd = tables["decision_depth"]
    assert set(dd.columns) >= {"lens", "variant", "k", "mean_layer", "frac_reached"}
    for name in lenses:
        ranks = base[base.lens == name].pivot(index="prompt", columns="layer", values="rank")
        for k in (1, 10):
            hit = (ranks.to_numpy()[:, 1:] <= k)  # blocks 1..L (docs/methods.md §4.4)
            first = np.where(hit.any(1), hit.argmax(1) + 1, -1)
            stays_flags = np.flip(np.cumprod(np.flip(hit, 1), 1), 1).astype(bool)
            stays = np.where(stays_flags.any(1), stays_flags.argmax(1) + 1, -1)
            for variant, e in (("first", first), ("stays", stays)):
                want = e[e >= 0].mean()
                got = summary["baseline"]["mean_earliest_layer"][name][f"{variant}_k{k}"]
                assert math.isclose(got, want)
                row = dd[(dd.lens == name) & (dd.variant == variant) & np.isclose(dd.k, k)]
                assert math.isclose(row.mean_layer.iloc[0], want)
    # claims 1 and 2 recomputed from the tables
    early = early_layers(L, summary["spec"]["claims"]["early_frac"])
    for name in lenses:
        c1 = claim(summary, "early guesses", name)
        share = mix[(mix.lens == name) & (mix.bucket == "Top1-10") & mix.layer.isin(early)]
        want = share["share"].mean()
        assert math.isclose(c1["measured"]["mean_top1_10_share_early"], want)
        assert c1["holds"] == bool(want > 0.5)
        assert c1["criterion"]
        c2 = claim(summary, ">70 %", name)
        f = fl[(fl.lens == name) & (fl.bucket == "Top1-10") & fl.layer.isin(early)]
        n_in = f.n_in_bucket.sum()
        assert c2["measured"]["n_top1_10_guesses"] == n_in
        if n_in:
            assert math.isclose(c2["measured"]["flip_rate_top1_10_early"],
                                f.n_flip.sum() / n_in)
            assert c2["holds"] == bool(f.n_flip.sum() / n_in > 0.7)
    for c in summary["claims"]:
        assert set(c) == {"claim", "lens", "measured", "criterion", "holds"}
        assert c["holds"] in (True, False, None)
    assert set(summary["timings_s"]) >= {"baseline", "heldout_kl", "total"}


def check_earliest_summary(summ, detail, group: str) -> None:
    """An ``earliest_summary`` table recomputed from its per-prompt table: correct prompts
    only; every correct prompt reaches rank 1 (at h[L] at the latest)."""
    for r in summ.itertuples():
        sub = detail[(detail.lens == r.lens) & (detail[group] == getattr(r, group))
                     & detail.correct]
        col = "earliest_k1" if r.variant == "first" else "earliest_k1_stays"
        assert r.n_correct == len(sub) == r.n_used
        assert (sub[col] >= 0).all()
        if len(sub):
            assert math.isclose(r.mean_layer, sub[col].mean())
            assert math.isclose(r.median_layer, sub[col].median())


def claim(summary: dict, prefix: str, lens: str) -> dict:
    (c,) = [c for c in summary["claims"] if c["claim"].startswith(prefix) and c["lens"] == lens]
    return c


def render(tables, summary, name, expected):
    figs = figures(tables, summary, name)
    assert set(figs) == set(expected)
    for fig in figs.values():
        fig.canvas.draw()
        plt.close(fig)


# --- tests ------------------------------------------------------------------------------------

def test_builtin_path(tiny_model, char_tokenizer):
    tables, summary, lens = run_depth(tiny_model, char_tokenizer, MIN_SPEC,
                                      model_name="tiny", progress=False)
    L = tiny_model.config.num_hidden_layers
    assert summary["builtin_text"] is True and summary["text_kind"] == BUILTIN_TEXT_KIND
    assert isinstance(lens, TunedLens) and len(tables["lens_history"]) == 2
    assert "facts" not in tables and "mcq" not in tables
    assert summary["facts"].startswith("not run") and summary["mcq"].startswith("not run")
    check_common(tables, summary, L)
    # prompts are cut inside the trace; the true next token and the class breakdown
    bp = tables["baseline_prompts"]
    assert (bp["true_next"] >= 0).all()
    assert bp["correct"].tolist() == (bp["final"] == bp["true_next"]).astype(float).tolist()
    tc = tables["token_classes"]
    assert set(tc.columns) >= {"lens", "prompt", "token_class", "true_next", "correct",
                               "earliest_k1", "earliest_k1_stays"}
    assert set(tc.token_class) <= set(TOKEN_CLASSES)
    for r in tc.itertuples():
        assert r.token_class == token_class(char_tokenizer.decode([int(r.true_next)]))
    tcs = tables["token_class_summary"]
    check_earliest_summary(tcs, tc, "token_class")
    assert claim(summary, "the first answer", "tuned")["holds"] is None
    assert BUILTIN_TEXT_KIND in claim(summary, "the first answer", "tuned")["criterion"]
    assert claim(summary, "valid options", "logit")["holds"] is None
    assert BUILTIN_TEXT_KIND in claim(summary, "function words", "tuned")["claim"]
    assert "spaCy" in summary["pos"] and "pos" not in tables
    check_exit(tables, summary, L, {"all", *TOKEN_CLASSES})
    render(tables, summary, "tiny", {"kl_per_layer.png", "decision_depth.png",
                                     "bucket_mix.png", "flip_rates.png", "token_classes.png",
                                     "exit_curves.png"})


def test_text_path(text_world, fake_sources):
    model, tok, sources = text_world
    assert not is_builtin(tok, DEFAULT_SPEC)  # 1200 entries: natural-text path by itself
    tables, summary, lens = run_depth(model, tok, MIN_SPEC, model_name="word",
                                      cache_dir="unused", progress=False)
    L = model.config.num_hidden_layers
    assert summary["builtin_text"] is False and summary["text_kind"] == "natural text"
    assert set(fake_sources) == {"openwebtext", "wikipedia", "facts", "mmlu"}
    check_common(tables, summary, L)
    # baseline prompts are wikipedia cuts; target = greedy
    bp = tables["baseline_prompts"]
    assert (bp["target"] == bp["final"]).all()
    wiki = [r["text"] for r in sources["wikipedia"]]
    assert all(any(w.startswith(p) for w in wiki) for p in bp["text"])
    # facts: correct = greedy == target; summary = table
    facts = tables["facts"]
    assert set(facts.columns) >= {"lens", "id", "fact_id", "answer_token", "n_answer_tokens",
                                  "target", "final", "correct", "earliest_k1",
                                  "earliest_k1_stays"}
    assert (facts["correct"] == (facts["final"] == facts["target"])).all()
    assert (facts["n_answer_tokens"] >= 2).all()
    fs = tables["facts_summary"]
    assert fs[(fs.answer_token == 1) & (fs.variant == "first")].n_correct.min() > 0
    check_earliest_summary(fs, facts, "answer_token")
    for name in summary["lenses"]:
        c3 = claim(summary, "the first answer", name)
        s = fs[(fs.lens == name) & (fs.variant == "first")].set_index("answer_token")
        for j, v in c3["measured"]["mean_earliest_layer"].items():
            want = s.loc[int(j), "mean_layer"]  # NaN (None in the JSON summary): no data
            assert (v is None and math.isnan(want)) or math.isclose(v, want)
    # MCQ: per-layer fractions and the claim's medians from the mcq table
    mcq, ml = tables["mcq"], tables["mcq_layers"]
    assert set(mcq.columns) >= {"lens", "id", "answer", "choice", "correct", "dominate_layer",
                                "dominate_layer_stays", "choice_settled_layer",
                                "choice_settled_layer_stays", "choice_top1_layer",
                                "choice_top1_layer_stays"}
    assert len(mcq) == 6 * len(summary["lenses"])
    assert math.isclose(summary["mcq"]["accuracy"],
                        (mcq[mcq.lens == "logit"].choice == mcq[mcq.lens == "logit"].answer).mean())
    assert set(ml.columns) >= {"lens", "layer", "frac_dominate", "frac_choice_top1",
                               "frac_choice_settled", "median_choice_rank"}
    logit_last = ml[(ml.lens == "logit") & (ml.layer == L)]
    assert logit_last.frac_choice_settled.iloc[0] == 1.0  # the choice is the output's argmax
    for name in summary["lenses"]:
        q = mcq[mcq.lens == name]
        c4 = claim(summary, "valid options", name)
        dom = np.where(q.dominate_layer < 0, L + 1, q.dominate_layer)
        settled = np.where(q.choice_settled_layer_stays < 0, L + 1,
                           q.choice_settled_layer_stays)
        assert c4["measured"]["median_dominate_layer"] == float(np.median(dom))
        assert c4["measured"]["median_choice_settled_layer_stays"] == float(np.median(settled))
        assert c4["holds"] == bool(np.median(dom) <= L / 2 and np.median(settled) > L / 2)
    check_pos(tables, summary, sources, tok)
    guess = tables["facts_guess"]  # the early-guess probe: one first-token read per fact
    n_first = int((facts[facts.lens == "logit"].answer_token == 1).sum())
    assert set(guess.statistic) == {"depth", "persists", "early_guess"}
    assert ((guess.n_correct + guess.n_wrong) == n_first).all()
    assert set(summary["facts"]["early_guess"]) == set(summary["lenses"])
    check_exit(tables, summary, L, {"all", "first answer token", "later answer tokens",
                                    "MCQ letter", "function words", "content words"})
    render(tables, summary, "word", {"kl_per_layer.png", "decision_depth.png",
                                     "bucket_mix.png", "flip_rates.png",
                                     "facts_earliest_layer.png", "mcq_layers.png",
                                     "pos_earliest_layer.png", "pos_decision_depth.png",
                                     "exit_curves.png"})


def check_exit(tables: dict, summary: dict, L: int, classes: set[str]) -> None:
    """The exit-curve table (methods §4.10): every head, rule and class; a rule that cannot
    stop before L (m ≥ L) uses every block and agrees fully; ``all`` counts the BASELINE
    reads."""
    ex = tables["exit_curves"]
    assert set(ex.lens) == set(summary["lenses"]) and set(ex.token_class) == classes
    assert set(ex.rule) == {"confidence", "stability"} and (ex.num_layers == L).all()
    never = ex[(ex.rule == "stability") & (ex.threshold >= L) & (ex.n > 0)]
    assert len(never) and (never.fraction == 1).all() and (never.agreement == 1).all()
    assert (ex[ex.token_class == "all"].n == len(tables["baseline_prompts"])).all()
    assert (ex.layers_used.between(1, L) | (ex.n == 0)).all()
    assert set(summary["exit"]["token_classes"]) == classes


def check_pos(tables: dict, summary: dict, sources: dict, tok) -> None:
    """POS tables: prompts cut from the wikipedia passages before a word of the tag, the
    target its first token, correct-only statistics; summary and claim from the tables."""
    pos, ps, pdd = tables["pos"], tables["pos_summary"], tables["pos_decision_depth"]
    spec = summary["spec"]["pos"]
    tags = spec["function_tags"] + spec["content_tags"]
    assert set(pos.upos) <= set(tags)
    assert summary["pos"]["n_passages"] == min(spec["n_passages"], len(sources["wikipedia"]))
    wiki = [r["text"] for r in sources["wikipedia"]]
    one = pos[pos.lens == "logit"]
    for r in one.itertuples():
        assert wiki[r.passage].startswith(r.prompt)
        assert tok(r.prompt).input_ids + [r.target] == \
            tok(wiki[r.passage]).input_ids[:r.n_tokens + 1]
        assert tok.decode([r.target]).strip() == r.word.strip()  # word-level vocabulary
    assert (pos["correct"] == (pos["final"] == pos["target"])).all()
    assert (pos.loc[~pos.correct, ["earliest_k1", "earliest_k1_stays"]] == -1).all().all()
    assert (pos.loc[pos.correct, "earliest_k1"] >= 0).all()
    check_earliest_summary(ps, pos, "upos")
    for r in pdd[np.isclose(pdd.k, 1) & (pdd.variant == "first")].itertuples():
        sub = pos[(pos.lens == r.lens) & (pos.upos == r.upos) & pos.correct]
        assert r.n_prompts == len(sub)
        if len(sub):
            assert math.isclose(r.mean_layer, sub.earliest_k1.mean())
    for name in summary["lenses"]:
        c = claim(summary, "function words", name)
        first = ps[(ps.lens == name) & (ps.variant == "first")].set_index("upos")
        for t, v in c["measured"]["mean_earliest_layer"].items():
            want = first.loc[t, "mean_layer"]
            assert (v is None and math.isnan(want)) or math.isclose(v, want)
        ok = first[first.n_used >= 1]
        f, ct = ok[ok.word_class == "function"], ok[ok.word_class == "content"]
        want = None if not len(f) or not len(ct) else \
            bool(f.mean_layer.max() < ct.mean_layer.min())
        assert c["holds"] == want
        for t, v in summary["pos"]["median_earliest_layer"][name].items():
            want = first.loc[t, "median_layer"]
            assert (v is None and math.isnan(want)) or math.isclose(v, want)


def test_pos_with_correct_prompts(text_world, fake_sources):
    """The random model never predicts a real word; with an output bias towards "the" and
    "river" it sometimes does, so DET and NOUN prompts pass the correct-only filter and
    the per-POS statistics and the claim are computed on real rows."""
    model, tok, sources = text_world
    biased = copy.deepcopy(model)
    head = nn.Linear(biased.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        head.weight.copy_(biased.lm_head.weight)
        head.bias.zero_()
        ids = [tok(r["text"]).input_ids for r in sources["wikipedia"]]
        logits = torch.cat([biased(torch.tensor([x])).logits[0] for x in ids])
        for word in ("the", "river"):
            gap = logits.max(-1).values - logits[:, tok.convert_tokens_to_ids(word)]
            head.bias[tok.convert_tokens_to_ids(word)] = gap.quantile(0.5)
    biased.lm_head = head
    spec = {**MIN_SPEC, "lenses": ["logit"], "pos": {**MIN_SPEC["pos"], "n_passages": 30}}
    tables, summary, _ = run_depth(biased, tok, spec, model_name="w", progress=False)
    pos = tables["pos"]
    assert pos[pos.upos == "DET"].correct.any() and pos[pos.upos == "NOUN"].correct.any()
    assert not pos.correct.all()
    check_pos(tables, summary, sources, tok)
    assert claim(summary, "function words", "logit")["holds"] is not None


def test_logit_only_and_pretrained_lens(text_world, fake_sources):
    model, tok, _ = text_world
    spec = {**MIN_SPEC, "lenses": ["logit"], "pos": {"n_passages": 0}}
    tables, summary, lens = run_depth(model, tok, spec, model_name="w", progress=False)
    assert lens is None and set(tables["baseline"].lens) == {"logit"}
    assert "pos" not in tables and summary["pos"].startswith("POS case study not run")
    assert claim(summary, "function words", "logit")["holds"] is None
    assert summary["primary_lens"] == "logit" and "lens_history" not in tables
    given = TunedLens.from_model(model)
    tables2, summary2, lens2 = run_depth(model, tok, MIN_SPEC, model_name="w",
                                         progress=False, lens=given)
    assert lens2 is given and "lens_history" not in tables2
    # a zero lens is the logit lens: identical KL and predictions
    kl = tables2["kl"].pivot(index="layer", columns="lens", values="kl")
    np.testing.assert_allclose(kl["tuned"], kl["logit"], rtol=1e-5, atol=1e-6)
    b = tables2["baseline"]
    assert (b[b.lens == "tuned"]["top1"].to_numpy()
            == b[b.lens == "logit"]["top1"].to_numpy()).all()


def test_multi_lens_matches_library(text_world):
    """One shared forward per batch gives exactly predict_prompts / predict_options."""
    model, tok, sources = text_world
    lens = TunedLens.from_model(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    prompts = [r["text"][:60 + 7 * i] for i, r in enumerate(sources["wikipedia"][:7])]
    lenses = {"logit": None, "tuned": lens}
    got = multi_lens_predictions(model, tok, prompts, lenses, batch_size=3)
    targets = list(range(5, 12))
    got_t = multi_lens_predictions(model, tok, prompts, lenses, targets=targets, batch_size=3)
    opts = [tok.convert_tokens_to_ids(x) for x in "ABCD"]
    got_o = multi_lens_predictions(model, tok, prompts, lenses, option_ids=opts, batch_size=3)
    for name, lz in lenses.items():
        ref = predict_prompts(model, tok, prompts, lens=lz, batch_size=3)
        assert (got[name]["ranks"] == ref.ranks).all() and (got[name]["top1"] == ref.top1).all()
        assert (got[name]["final"] == ref.final_top1).all()
        ref_t = predict_prompts(model, tok, prompts, lens=lz, targets=targets, batch_size=3)
        assert (got_t[name]["ranks"] == ref_t.ranks).all()
        assert (got_t[name]["targets"] == np.array(targets)).all()
        ref_o = predict_options(model, tok, prompts, opts, lens=lz, batch_size=3)
        assert (got_o[name]["option_ranks"] == ref_o["ranks"]).all()
        for key, v in ref_o.items():
            if key != "ranks":
                assert (np.asarray(got_o[name][key]) == v).all(), key
    assert (got["tuned"]["ranks"] != got["logit"]["ranks"]).any()  # not vacuous


def test_text_sources_reach_load_source(monkeypatch):
    from pipeline.depth.stage import _text_records, source_key

    calls = []

    def load_source(name, *, cache_dir=None, **kw):
        calls.append((name, cache_dir, kw))
        return [{"id": "x/0", "text": "one"}, {"id": "x/1", "text": "two"}]

    monkeypatch.setattr(pipeline.data, "load_source", load_source)
    assert _text_records("wikipedia", "c") == ["one", "two"]
    src = {"name": "openwebtext", "path": "/data/owt.jsonl", "columns": {"text": "body"},
           "limit": 5}
    assert _text_records(src, None) == ["one", "two"]
    assert calls == [("wikipedia", "c", {}), ("openwebtext", None, {
        "path": "/data/owt.jsonl", "columns": {"text": "body"}, "limit": 5})]
    assert source_key("wikipedia") == "wikipedia"
    assert source_key(src) == source_key(dict(reversed(list(src.items()))))


def test_spec_and_helpers():
    spec = resolve_spec({"tuned": {"steps": 3}, "builtin": {"countdown": {"max_number": 9}}})
    assert spec["tuned"]["steps"] == 3 and spec["tuned"]["lr"] == DEFAULT_SPEC["tuned"]["lr"]
    assert spec["builtin"]["countdown"]["max_number"] == 9
    assert spec["builtin"]["countdown"]["num_numbers"] == 3
    with pytest.raises(ValueError, match="tuned.stepz"):
        resolve_spec({"tuned": {"stepz": 3}})
    with pytest.raises(ValueError, match="lenses"):
        resolve_spec({"lenses": ["pca"]})
    # a text source is a registry name or a load_source call (hub id / local file)
    hub = {"name": "wikipedia", "hub_id": "Salesforce/wikitext", "config": "wikitext-103-raw-v1",
           "split": "test"}
    spec = resolve_spec({"tuned": {"heldout_source": hub}, "pos": {"source": "openwebtext"}})
    assert spec["tuned"]["heldout_source"] == hub and spec["tuned"]["source"] == "openwebtext"
    assert spec["pos"]["source"] == "openwebtext"
    with pytest.raises(ValueError, match="tuned.source"):
        resolve_spec({"tuned": {"source": {"hub_id": "a/b"}}})
    with pytest.raises(ValueError, match="baseline.source.bogus"):
        resolve_spec({"baseline": {"source": {"name": "wikipedia", "bogus": 1}}})

    class Tok:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    assert is_builtin(Tok(107), {"builtin_text": None})
    assert not is_builtin(Tok(49152), {"builtin_text": None})
    assert is_builtin(Tok(49152), {"builtin_text": True})
    assert not is_builtin(Tok(107), {"builtin_text": False})
    assert [token_class(x) for x in ("7", "+", "=", "(", ")", "a", " ", "<think>")] == [
        "digit", "operator", "operator", "bracket", "bracket", "other", "other", "other"]
    assert early_layers(30, 0.25) == list(range(1, 8)) and early_layers(2, 0.25) == [1]
