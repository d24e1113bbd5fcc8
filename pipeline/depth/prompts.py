"""Prompt sets for the depth analysis (methods.md §4).

- BASELINE: :func:`cut_passages` — natural-text passages cut at a random word boundary;
  the target is the model's greedy next token.
- Fact recall: :func:`teacher_forced_fact_prompts` — ``{"prompt", "answer"}`` records
  (``pipeline.data.load_source("facts")``); prompt + the first j−1 answer tokens → answer
  token j (j = 1..3), as token-id prompts with the target id.
- Multiple choice: :func:`mcq_prompts` — k-shot MMLU prompts with answer-letter-balanced
  demonstrations (the format :mod:`pipeline.evaluation` scores); the per-layer option
  ranks come from :func:`pipeline.depth.option_ranks`.
- POS: :func:`pos_prompts` — builds prompts from already-tagged examples ``(text, target
  word, UPOS)``; the tagging itself (spaCy, methods.md §4 case study i) is not done here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_WORD = re.compile(r"\S+")

#: UPOS tags of the POS case study: function words vs content words.
FUNCTION_TAGS = ("DET", "ADP", "PUNCT")
CONTENT_TAGS = ("NOUN", "VERB", "ADJ")


def cut_passages(texts: Sequence[str], n: int, seed: int = 0, min_words: int = 16, *,
                 per_passage: int = 1) -> list[dict[str, Any]]:
    """Prompts cut from passages at a random word boundary (the BASELINE set).

    Passages are visited in a seeded random order; each one with more than ``min_words``
    words gives up to ``per_passage`` prompts, cut after word j (``min_words ≤ j < words``,
    distinct j) — the prompt is the passage text up to the end of word j (no trailing
    space, so the next token carries the leading space of word j+1). Stops at ``n``
    prompts (fewer if the passages run out). Records: ``{"id", "passage", "cut_words",
    "prompt", "next_word"}``.
    """
    if n < 0 or min_words < 1 or per_passage < 1:
        raise ValueError("need n >= 0, min_words >= 1, per_passage >= 1")
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    out: list[dict[str, Any]] = []
    for i in order:
        if len(out) >= n:
            break
        spans = [m.span() for m in _WORD.finditer(texts[i])]
        if len(spans) <= min_words:
            continue
        cuts = rng.sample(range(min_words, len(spans)), min(per_passage, len(spans) - min_words))
        for j in sorted(cuts):
            if len(out) >= n:
                break
            end = spans[j - 1][1]
            nxt = spans[j]
            out.append({"id": f"{i}:{j}", "passage": i, "cut_words": j,
                        "prompt": texts[i][:end], "next_word": texts[i][nxt[0]:nxt[1]]})
    return out


def split_continuation(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` (with the tokenizer's default special tokens) and of
    ``continuation`` as the model sees it *after* the prompt: the tail of the encoding of
    ``prompt + continuation``. ``ValueError`` if the joint encoding does not start with the
    prompt's own encoding (a merge across the boundary)."""
    p_ids = list(tokenizer(prompt).input_ids)
    full = list(tokenizer(prompt + continuation).input_ids)
    if full[: len(p_ids)] != p_ids or len(full) == len(p_ids):
        raise ValueError(f"tokenisation of {prompt!r} + {continuation!r} does not split at "
                         "the prompt boundary")
    return p_ids, full[len(p_ids):]


def teacher_forced_fact_prompts(tokenizer, facts: Iterable[Mapping[str, Any]],
                                max_answer_tokens: int = 3, *, sep: str = " "
                                ) -> list[dict[str, Any]]:
    """Teacher-forced prompts for answer tokens 1..``max_answer_tokens`` of each fact.

    The sentence is ``prompt + sep + answer`` (the facts' convention). For the j-th answer
    token: ``input_ids`` = prompt tokens + answer tokens 1..j−1, ``target`` = answer token
    j. Facts whose answer does not tokenise cleanly after the prompt are skipped. Records:
    ``{"id", "fact_id", "answer_token", "n_answer_tokens", "input_ids", "target",
    "prompt", "answer"}`` (``answer_token`` = j, 1-based; ``prompt`` the decoded ids).
    """
    if max_answer_tokens < 1:
        raise ValueError("max_answer_tokens must be >= 1")
    out: list[dict[str, Any]] = []
    for k, fact in enumerate(facts):
        try:
            p_ids, a_ids = split_continuation(tokenizer, fact["prompt"], sep + fact["answer"])
        except ValueError:
            continue
        fid = str(fact.get("id", k))
        for j in range(1, min(max_answer_tokens, len(a_ids)) + 1):
            ids = p_ids + a_ids[: j - 1]
            out.append({"id": f"{fid}#{j}", "fact_id": fid, "answer_token": j,
                        "n_answer_tokens": len(a_ids), "input_ids": ids,
                        "target": int(a_ids[j - 1]),
                        "prompt": tokenizer.decode(ids), "answer": fact["answer"]})
    return out


def mcq_prompts(items: Sequence[Mapping[str, Any]], shots: int = 4, *, seed: int | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
    """k-shot multiple-choice prompts (``{"question", "choices", "answer"}`` records, MMLU
    format) ending in ``"Answer:"``: ``shots`` demonstrations whose answer letters cycle
    A, B, C, D (balanced), taken from ``items`` (shuffled first when ``seed`` is given) and
    excluded from the evaluated rest. Records: ``{"id", "prompt", "answer"}``."""
    from pipeline.evaluation.items import balanced_shots, mmlu_prompt

    pool = list(items)
    if seed is not None:
        random.Random(seed).shuffle(pool)
    demos, rest = balanced_shots(pool, shots)
    if len(demos) < shots:
        raise ValueError(f"could not find {shots} balanced demonstrations")
    rest = rest if limit is None else rest[:limit]
    return [{"id": str(it.get("id", i)), "prompt": mmlu_prompt(dict(it), demos),
             "answer": it["answer"]} for i, it in enumerate(rest)]


def first_word_with_tag(tags: Sequence[str], wanted: str, *, min_index: int = 1) -> int | None:
    """Index of the first token tagged ``wanted`` at or after ``min_index`` (None if none):
    methods.md's target is the first word with the given UPOS tag."""
    for i in range(min_index, len(tags)):
        if tags[i] == wanted:
            return i
    return None


def pos_prompts(examples: Iterable[Mapping[str, Any]], *, min_words: int = 1
                ) -> list[dict[str, Any]]:
    """Prompts for the POS case study from tagged examples (tagging is done elsewhere).

    Each example: ``{"text", "word_index", "upos"}`` and either ``"char_start"`` /
    ``"char_end"`` of the target word (e.g. spaCy's ``token.idx`` and ``token.idx +
    len(token)``; preferred: punctuation split off a word needs offsets) or nothing, in
    which case ``word_index`` counts whitespace-separated words. The prompt is the text
    before the target word with trailing whitespace removed; ``continuation`` is that
    whitespace plus the word (its first token is the target, e.g. via
    :func:`split_continuation`). Examples with fewer than ``min_words`` words before the
    target are dropped. Records: ``{"id", "upos", "prompt", "word", "continuation"}``.
    """
    out: list[dict[str, Any]] = []
    for k, ex in enumerate(examples):
        text = ex["text"]
        if "char_start" in ex:
            start = int(ex["char_start"])
            end = int(ex.get("char_end", start + len(text[start:].split(None, 1)[0])))
        else:
            spans = [m.span() for m in _WORD.finditer(text)]
            wi = int(ex["word_index"])
            if not 0 <= wi < len(spans):
                continue
            start, end = spans[wi]
        prompt = text[:start].rstrip()
        if len(_WORD.findall(prompt)) < min_words or not prompt:
            continue
        out.append({"id": str(ex.get("id", k)), "upos": ex["upos"], "prompt": prompt,
                    "word": text[start:end], "continuation": text[len(prompt):end]})
    return out
