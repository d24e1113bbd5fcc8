"""The depth stage's case studies (docs/methods.md §4), each ``(tables, summary entry)``:
fact recall (:func:`facts_study`), multiple choice (:func:`mcq_study`) and parts of speech
(:func:`pos_study`) on natural text; on builtin-task text the token-class breakdown
(:func:`token_class_study`) stands in for them.

Tables (``lens`` is ``"logit"`` or ``"tuned"``):

- ``facts``: lens, id, fact_id, relation, answer_token, n_answer_tokens, target,
  target_text, final, correct, earliest_k1, earliest_k1_stays (−1 = never).
- ``facts_summary``: lens, variant, answer_token, n_total, n_correct, mean_layer,
  ci95_lo, ci95_hi, mean_layer_rel (correct prompts only).
- ``mcq``: lens, id, answer, choice, correct, and ``<flag>_layer`` /
  ``<flag>_layer_stays`` for flag in dominate, choice_top1, choice_settled (−1 = never;
  h[1]..h[L] unless ``decision_depth.include_embedding``, as the earliest layers).
- ``mcq_layers``: lens, layer, frac_dominate, frac_choice_top1, frac_choice_settled,
  median_choice_rank, n_prompts.
- ``pos``: lens, id, passage, upos, word_class (function / content), word, prompt,
  n_tokens, target, target_text, final, correct, earliest_k1, earliest_k1_stays (−1 =
  never or not evaluated: incorrect prompts get no lens read-out).
- ``pos_summary``: as ``facts_summary`` by ``upos`` (+ word_class).
- ``pos_decision_depth``: lens, upos, word_class + :func:`decision_depth_curve` columns over
  the correct prompts of each tag.
- builtin only — ``token_classes``: lens, prompt, token_class, true_next, correct,
  earliest_k1, earliest_k1_stays; ``token_class_summary``: lens, variant, token_class,
  n_total, n_correct, mean_layer, ci95_lo, ci95_hi, mean_layer_rel.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from pipeline.depth.data import Preds, shuffled
from pipeline.depth.exit import exit_curves
from pipeline.depth.guess import guess_reads, probe_table
from pipeline.depth.lens import TunedLens
from pipeline.depth.metrics import decision_depth_curve, earliest_layer
from pipeline.depth.options import option_token_ids
from pipeline.depth.prompts import (
    first_tagged_words,
    mcq_prompts,
    passage_order,
    pos_prompts,
    pos_token_prompts,
    spacy_model_info,
    teacher_forced_fact_prompts,
    truncate_words,
    upos_tag,
    word_count,
)
from pipeline.depth.ranks import multi_lens_predictions
from pipeline.depth.spec import BUILTIN_TEXT_KIND, TOKEN_CLASSES, DepthSpec, depth_spec

Lenses = Mapping[str, TunedLens | None]
EXIT_PART = "exit_curves"  # a study's share of the exit-curve table (methods §4.10)
Study = tuple[dict[str, pd.DataFrame], Any]  # (tables, the summary's entry)
_OPERATORS = set("+-*/=")
_BRACKETS = set("()")


# --------------------------------------------------------------------------- summaries
def _mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    from pipeline.evaluation.metrics import mean_ci

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    return mean_ci(v)


def earliest_summary(df: pd.DataFrame, group: str, *, num_layers: int) -> pd.DataFrame:
    """Mean (with 95 % CI) and median earliest layer (k = 1) over *correct* prompts, per
    lens, variant (first / stays) and ``group`` value."""
    rows = []
    for (lens, g), sub in df.groupby(["lens", group], sort=True):
        ok = sub[sub["correct"].astype(bool)]
        for variant, col in (("first", "earliest_k1"), ("stays", "earliest_k1_stays")):
            vals = ok[col].to_numpy()
            vals = vals[vals >= 0]
            mean, lo, hi = _mean_ci(vals)
            rows.append({"lens": lens, "variant": variant, group: g, "n_total": len(sub),
                         "n_correct": len(ok), "n_used": len(vals), "mean_layer": mean,
                         "ci95_lo": lo, "ci95_hi": hi,
                         "median_layer": float(np.median(vals)) if len(vals) else math.nan,
                         "mean_layer_rel": mean / num_layers})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- token classes
def token_class(text: str) -> str:
    """Class of a decoded token for the builtin "POS-like" breakdown: ``digit`` (0-9),
    ``operator`` (+ - * / =), ``bracket`` (parentheses), ``other`` (letters, space,
    newline, task tags, EOS …)."""
    if len(text) == 1:
        if text.isdigit():
            return "digit"
        if text in _OPERATORS:
            return "operator"
        if text in _BRACKETS:
            return "bracket"
    return "other"


def token_class_study(tokenizer, preds: Preds, baseline_prompts: pd.DataFrame, *,
                      num_layers: int, primary_lens: str,
                      include_embedding: bool = False) -> Study:
    """Builtin-task text: the BASELINE read-outs by class of the true next token
    (:func:`token_class`), correct-only earliest layers per class."""
    true_next = baseline_prompts["true_next"].to_numpy()
    final = baseline_prompts["final"].to_numpy()
    classes = [token_class(tokenizer.decode([int(t)])) for t in true_next]
    rows = []
    for name, r in preds.items():
        e1 = earliest_layer(r["ranks"], 1, include_embedding=include_embedding).numpy()
        e1s = earliest_layer(r["ranks"], 1, stays=True,
                             include_embedding=include_embedding).numpy()
        rows.append(pd.DataFrame({"lens": name, "prompt": np.arange(len(true_next)),
                                  "token_class": classes, "true_next": true_next,
                                  "correct": final == true_next,
                                  "earliest_k1": e1, "earliest_k1_stays": e1s}))
    detail = pd.concat(rows, ignore_index=True)
    summ = earliest_summary(detail, "token_class", num_layers=num_layers)
    first = summ[summ.variant == "first"]
    return {"token_classes": detail, "token_class_summary": summ}, {
        "text": BUILTIN_TEXT_KIND, "classes": list(TOKEN_CLASSES),
        "definition": "class of the true next token: digit 0-9; operator + - * / =; "
                      "bracket ( ); other (letters, space, newline, tags, EOS)",
        "mean_earliest_layer": {
            name: {str(r.token_class): r.mean_layer for r in first.itertuples()
                   if r.lens == name} for name in preds},
        "n_correct": {str(r.token_class): int(r.n_correct)
                      for r in first[first.lens == primary_lens].itertuples()}}


# --------------------------------------------------------------------------- facts
def facts_study(model, tokenizer, spec: DepthSpec | Mapping[str, Any], lenses: Lenses, *,
                cache_dir,
                num_layers: int, progress: bool) -> Study:
    """Fact recall: teacher-forced answer tokens 1..``facts.max_answer_tokens`` of facts
    with at least ``min_answer_tokens`` answer tokens; correct-only earliest layers per
    answer-token position."""
    from pipeline.data import load_source

    s = depth_spec(spec)
    fs, emb = s.facts, s.decision_depth.include_embedding
    facts = load_source("facts", cache_dir=cache_dir, split=fs.relations)
    facts = shuffled(facts, fs.seed)
    recs: list[dict[str, Any]] = []
    relation: dict[str, str] = {}
    n_kept = 0
    for fact in facts:
        if n_kept >= fs.n_facts:
            break
        r = teacher_forced_fact_prompts(tokenizer, [fact], fs.max_answer_tokens)
        if not r or r[0]["n_answer_tokens"] < fs.min_answer_tokens:
            continue
        for x in r:
            x["fact_id"] = str(fact["id"])
            x["id"] = f"{fact['id']}#{x['answer_token']}"
        relation[str(fact["id"])] = fact.get("relation", "")
        recs += r
        n_kept += 1
    if not recs:
        return {}, "no facts tokenised cleanly"
    preds = multi_lens_predictions(model, tokenizer, [r["input_ids"] for r in recs], lenses,
                                   targets=[r["target"] for r in recs],
                                   batch_size=s.batch_size * 2,
                                   progress=progress, desc="facts")
    rows = []
    for name, p in preds.items():
        rows.append(pd.DataFrame({
            "lens": name, "id": [r["id"] for r in recs],
            "fact_id": [r["fact_id"] for r in recs],
            "relation": [relation[r["fact_id"]] for r in recs],
            "answer_token": [r["answer_token"] for r in recs],
            "n_answer_tokens": [r["n_answer_tokens"] for r in recs],
            "target": p["targets"],
            "target_text": [tokenizer.decode([int(t)]) for t in p["targets"]],
            "final": p["final"], "correct": p["final"] == p["targets"],
            "earliest_k1": earliest_layer(p["ranks"], 1, include_embedding=emb).numpy(),
            "earliest_k1_stays": earliest_layer(p["ranks"], 1, stays=True,
                                                include_embedding=emb).numpy()}))
    detail = pd.concat(rows, ignore_index=True)
    fsum = earliest_summary(detail, "answer_token", num_layers=num_layers)
    first = fsum[fsum.variant == "first"]
    lens0 = first[first.lens == next(iter(preds))]
    at = np.asarray([r["answer_token"] for r in recs])
    exits = exit_curves(preds, {"first answer token": at == 1, "later answer tokens": at > 1})
    first_tok = at == 1  # one read per fact: the early-guess probe's units (methods §4.11)
    p0 = next(iter(preds.values()))
    guess = probe_table({name: guess_reads(p["top1"][first_tok], p["final"][first_tok],
                                           early_frac=s.claims.early_frac)
                         for name, p in preds.items()},
                        (p0["final"] == p0["targets"])[first_tok])
    return {"facts": detail, "facts_summary": fsum, "facts_guess": guess, EXIT_PART: exits}, {
        "early_guess": {name: {r.statistic: {"correct": r.mean_correct, "wrong": r.mean_wrong,
                                              "diff": r.diff, "ci95": [r.diff_lo, r.diff_hi]}
                               for r in guess[guess.lens == name].itertuples()}
                        for name in preds},
        "n_facts": n_kept, "n_prompts": len(recs),
        "n_correct": {int(r.answer_token): int(r.n_correct) for r in lens0.itertuples()},
        "n_total": {int(r.answer_token): int(r.n_total) for r in lens0.itertuples()},
        "mean_earliest_layer": {name: {int(r.answer_token): r.mean_layer
                                       for r in first[first.lens == name].itertuples()}
                                for name in preds},
        "selection": f"facts with ≥ {fs.min_answer_tokens} answer tokens; correct-only "
                     "(greedy token = teacher-forced target) in the earliest-layer means"}


# --------------------------------------------------------------------------- MCQ
def mcq_layer_table(preds: Preds) -> pd.DataFrame:
    """Per lens and layer: fraction of prompts with options dominating / the chosen
    option top-1 / settled among the options, and the median rank of the chosen option."""
    rows = []
    for name, r in preds.items():
        n, cols = r["dominate"].shape
        rows_ = np.arange(n)
        choice_rank = r["option_ranks"][rows_, :, r["choice"]] if n else np.zeros((0, cols))
        for layer in range(cols):
            rows.append({"lens": name, "layer": layer,
                         "frac_dominate": float(r["dominate"][:, layer].mean()) if n else math.nan,
                         "frac_choice_top1": float(r["choice_top1"][:, layer].mean())
                         if n else math.nan,
                         "frac_choice_settled": float(r["choice_settled"][:, layer].mean())
                         if n else math.nan,
                         "median_choice_rank": float(np.median(choice_rank[:, layer]))
                         if n else math.nan,
                         "n_prompts": n})
    return pd.DataFrame(rows)


def mcq_study(model, tokenizer, spec: DepthSpec | Mapping[str, Any], lenses: Lenses, *,
              cache_dir, progress: bool) -> Study:
    """Multiple choice: ``mcq.shots``-shot MMLU; option-letter reads per layer (where the
    four options dominate, where the model's choice is settled among them / top-1)."""
    from pipeline.data import load_source

    s = depth_spec(spec)
    ms, emb = s.mcq, s.decision_depth.include_embedding
    items = load_source("mmlu", cache_dir=cache_dir)
    if ms.max_chars:
        items = [it for it in items if len(it["question"]) + sum(map(len, it["choices"]))
                 <= ms.max_chars]
    prompts = mcq_prompts(items, ms.shots, seed=ms.seed, limit=ms.n_problems)
    letters = ("A", "B", "C", "D")
    opt_ids = option_token_ids(tokenizer, letters)
    preds = multi_lens_predictions(model, tokenizer, [p["prompt"] for p in prompts], lenses,
                                   option_ids=opt_ids,
                                   batch_size=max(1, s.batch_size // 2),
                                   progress=progress, desc="mcq", include_embedding=emb)
    rows = []
    answers = np.array([p["answer"] for p in prompts], dtype=object)
    for name, p in preds.items():
        choice = np.asarray(letters, dtype=object)[p["choice"]]
        d = {"lens": name, "id": [x["id"] for x in prompts], "answer": answers,
             "choice": choice, "correct": choice == answers}
        for flag in ("dominate", "choice_top1", "choice_settled"):
            d[f"{flag}_layer"] = p[f"{flag}_layer"]
            d[f"{flag}_layer_stays"] = p[f"{flag}_layer_stays"]
        rows.append(pd.DataFrame(d))
    mcq = pd.concat(rows, ignore_index=True)
    n_tok = [len(tokenizer(p["prompt"]).input_ids) for p in prompts]
    exits = exit_curves(preds, {"MCQ letter": np.ones(len(prompts), dtype=bool)})
    return {"mcq": mcq, "mcq_layers": mcq_layer_table(preds), EXIT_PART: exits}, {
        "n_problems": len(prompts), "shots": ms.shots,
        "option_token_ids": list(map(int, opt_ids)),
        "mean_prompt_tokens": float(np.mean(n_tok)) if n_tok else math.nan,
        "accuracy": float(mcq[mcq.lens == next(iter(preds))]["correct"].mean())
        if prompts else math.nan,
        "selection": f"MMLU items with question+choices ≤ {ms.max_chars} "
                     "characters; balanced-letter demonstrations"}


# --------------------------------------------------------------------------- POS
def pos_prompt_set(tokenizer, texts: Sequence[str], pos_spec: Mapping[str, Any], *,
                   seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The POS prompt set (stage docstring, part 5) from the passages ``texts``: the first
    ``pos_spec["n_passages"]`` passages in :func:`passage_order` with more than
    ``min_words`` words, truncated to ``max_words``, tagged by :func:`upos_tag`; per
    passage, :func:`first_tagged_words` → :func:`pos_prompts` → :func:`pos_token_prompts`.
    Records: ``{"id" ("<passage>:<UPOS>"), "passage", "upos", "word_class", "prompt",
    "word", "continuation", "input_ids", "target", "n_tokens", "passage_text"}``; the
    second value counts candidates and tokenisation drops per tag."""
    func, cont = list(pos_spec["function_tags"]), list(pos_spec["content_tags"])
    tags = func + cont
    if not tags or len(set(tags)) != len(tags):
        raise ValueError(f"depth: pos tags must be distinct and not empty, got {tags}")
    min_words, n_want = int(pos_spec["min_words"]), int(pos_spec["n_passages"])
    chosen: list[tuple[int, str]] = []
    for i in passage_order(len(texts), seed):
        if len(chosen) >= n_want:
            break
        if word_count(texts[i]) > min_words:
            chosen.append((i, truncate_words(texts[i], pos_spec["max_words"])))
    tagged = upos_tag([t for _, t in chosen], model=pos_spec["spacy_model"])
    recs: list[dict[str, Any]] = []
    counts = {"n_passages": len(chosen), "n_found": dict.fromkeys(tags, 0),
              "n_dropped_tokenisation": dict.fromkeys(tags, 0)}
    for (i, text), toks in zip(chosen, tagged, strict=True):
        examples = first_tagged_words(text, toks, tags, min_words=min_words)
        for ex in examples:
            ex["id"] = f"{i}:{ex['upos']}"
            counts["n_found"][ex["upos"]] += 1
        kept, _ = pos_token_prompts(tokenizer, text, pos_prompts(examples, min_words=1))
        for r in kept:
            r.update(passage=i, passage_text=text,
                     word_class="function" if r["upos"] in func else "content")
        recs += kept
        for ex in examples:
            if not any(r["upos"] == ex["upos"] for r in kept):
                counts["n_dropped_tokenisation"][ex["upos"]] += 1
    return recs, counts


def pos_study(model, tokenizer, spec: DepthSpec | Mapping[str, Any], lenses: Lenses, *,
              texts: Sequence[str], source: Any, ks: np.ndarray, num_layers: int,
              progress: bool) -> Study:
    """Parts of speech (stage docstring, part 5): :func:`pos_prompt_set`, one forward per
    passage, lens read-outs of the correct prompts only."""
    t0 = time.perf_counter()
    s = depth_spec(spec)
    ps, emb = s.pos, s.decision_depth.include_embedding
    recs, counts = pos_prompt_set(tokenizer, texts, asdict(ps), seed=s.pos_seed)
    t_prompts = time.perf_counter() - t0
    tags = list(ps.function_tags) + list(ps.content_tags)
    if not recs:
        return {}, "POS case study: no prompt could be built"
    # one forward per passage: every prompt of a passage is a prefix of its longest one
    by_passage: dict[int, list[int]] = {}
    for k, r in enumerate(recs):
        by_passage.setdefault(r["passage"], []).append(k)
    seqs, positions, order = [], [], []
    for ks_ in by_passage.values():
        longest = max(ks_, key=lambda k: recs[k]["n_tokens"])
        seqs.append(recs[longest]["input_ids"])
        positions.append([recs[k]["n_tokens"] - 1 for k in ks_])
        order += ks_
    recs = [recs[k] for k in order]
    preds = multi_lens_predictions(model, tokenizer, seqs, lenses,
                                   targets=[r["target"] for r in recs], positions=positions,
                                   correct_only=True, batch_size=s.batch_size,
                                   progress=progress, desc="pos")
    rows, curves = [], []
    upos = np.asarray([r["upos"] for r in recs], dtype=object)
    for name, p in preds.items():
        ok = p["evaluated"]  # = correct: greedy token == the word's first token
        e1 = np.where(ok, earliest_layer(p["ranks"], 1, include_embedding=emb).numpy(), -1)
        e1s = np.where(ok, earliest_layer(p["ranks"], 1, stays=True,
                                          include_embedding=emb).numpy(), -1)
        rows.append(pd.DataFrame({
            "lens": name, "id": [r["id"] for r in recs],
            "passage": [r["passage"] for r in recs], "upos": upos,
            "word_class": [r["word_class"] for r in recs], "word": [r["word"] for r in recs],
            "prompt": [r["prompt"] for r in recs],
            "n_tokens": [r["n_tokens"] for r in recs], "target": p["targets"],
            "target_text": [tokenizer.decode([int(t)]) for t in p["targets"]],
            "final": p["final"], "correct": p["final"] == p["targets"],
            "earliest_k1": e1, "earliest_k1_stays": e1s}))
        for tag in tags:
            m = ok & (upos == tag)
            curves.append(decision_depth_curve(p["ranks"][m], ks,
                                               include_embedding=emb).assign(
                lens=name, upos=tag, word_class="function" if tag in ps.function_tags
                else "content"))
    detail = pd.concat(rows, ignore_index=True)
    summ = earliest_summary(detail, "upos", num_layers=num_layers)
    summ.insert(3, "word_class", np.where(summ.upos.isin(ps.function_tags), "function",
                                          "content"))
    dd = pd.concat(curves, ignore_index=True)
    function = np.isin(upos, list(ps.function_tags))
    ok = next(iter(preds.values()))["evaluated"]  # lens rows exist for correct reads only
    exits = exit_curves(preds, {"function words": function & ok, "content words": ~function & ok})
    tables = {"pos": detail, "pos_summary": summ, EXIT_PART: exits,
              "pos_decision_depth": dd[["lens", "upos", "word_class",
                                        *[c for c in dd.columns
                                          if c not in ("lens", "upos", "word_class")]]]}
    first = summ[summ.variant == "first"]
    lens0 = next(iter(preds))
    per = {name: first[first.lens == name].set_index("upos") for name in preds}
    return tables, {
        "source": source, "tagger": spacy_model_info(ps.spacy_model),
        "function_tags": list(ps.function_tags), "content_tags": list(ps.content_tags),
        "n_passages": counts["n_passages"], "n_forwards": len(seqs),
        "n_found": counts["n_found"],
        "n_dropped_tokenisation": counts["n_dropped_tokenisation"],
        "n_prompts": {t: int(per[lens0].loc[t, "n_total"]) if t in per[lens0].index else 0
                      for t in tags},
        "n_correct": {t: int(per[lens0].loc[t, "n_correct"]) if t in per[lens0].index else 0
                      for t in tags},
        "mean_prompt_tokens": float(np.mean([r["n_tokens"] for r in recs])),
        "mean_earliest_layer": {name: {t: float(d.loc[t, "mean_layer"]) for t in tags
                                       if t in d.index} for name, d in per.items()},
        "median_earliest_layer": {name: {t: float(d.loc[t, "median_layer"]) for t in tags
                                         if t in d.index} for name, d in per.items()},
        "selection": (f"first {counts['n_passages']} passages of the BASELINE order (seed "
                      f"{s.pos_seed}) truncated to {ps.max_words} words; per tag the first "
                      f"word-initial token (PUNCT may be attached) with ≥ {ps.min_words} "
                      "words before it; kept when the passage's encoding continues the "
                      "prompt's with the word's first token; correct-only (greedy token = "
                      "that token) in the earliest-layer statistics"),
        "seconds_prompts": t_prompts,
    }
