"""The depth stage (docs/methods.md §4): guess-then-refine analysis of one model with the logit
lens and a budget tuned lens, as tables, a summary (with the paper's claims checked
against the data) and figures.

:func:`run_depth` does the work; it reads data (:func:`pipeline.data.load_source`) but
writes nothing — the CLI writes the tables, the summary, the lens and the figures.

Parts (each timed in ``summary["timings_s"]``):

1. tuned lens: trained on ``tuned.source`` (openwebtext) windows with
   :func:`pipeline.depth.train_tuned_lens`; per-layer KL(p_final ‖ p_lens) of the logit
   and the tuned lens on held-out ``tuned.heldout_source`` (wikipedia) windows.
2. BASELINE: ``baseline.n_prompts`` passages cut at a random word boundary; target = the
   model's greedy token at the last position. Per lens: ranks / top-1 per layer,
   decision-depth curves (first hit and "stays"), frequency-bucket mix and flip rates
   (frequency ranks of ``frequency.source`` tokenised with the model's own tokenizer).
3. facts: teacher-forced answer tokens 1..``max_answer_tokens`` of multi-token facts;
   only prompts the model gets right (greedy token = target) enter the earliest-layer
   statistics (k = 1, per answer-token position).
4. MCQ: ``shots``-shot MMLU; option-letter ranks per layer, the first layer where the
   four options dominate the vocabulary, where the model's chosen option is settled among
   them and where it is the top-1 (each also in the "stays" variant).
5. POS: the same Wikipedia passages as the BASELINE set (same source, same seeded order,
   same truncation by default), tagged with spaCy UPOS; for each tag (DET, ADP, PUNCT vs
   NOUN, VERB, ADJ) the first word with that tag is the target and the text before it the
   prompt. Only prompts the model gets right (greedy token = the word's first token) enter
   the per-POS earliest-layer curves. All prompts of one passage are prefixes of the
   passage's encoding, so one forward per passage reads them all; lens read-outs run only
   for the correct ones.

Builtin tiny models (character tokenizer, Countdown SFT) have no natural text: when
``builtin_text`` is true (auto: tokenizer vocabulary < 1000) the lens is trained and
evaluated, the BASELINE prompts are cut and the frequency corpus is counted on their own
task text — Countdown ``prompt(p, "builtin") + trace(p)`` (+ EOS, as in SFT) of generated
problems — and facts / MCQ are replaced by a "POS-like" breakdown by token class of the
true next token (digit / operator / bracket / other). Everything is labelled
``text_kind = "builtin-task text (Countdown prompt+trace)"``.

Tables (tidy DataFrames; ``lens`` is ``"logit"`` or ``"tuned"``; layers index h[0]..h[L]):
``kl`` (lens, layer, kl — nats, mean over held-out positions —, n_tokens) and
``lens_history`` (the tuned-lens training history, one row per step) here; the BASELINE
tables in :mod:`pipeline.depth.data`, the case studies' in
:mod:`pipeline.depth.case_studies`. The settings: :mod:`pipeline.depth.spec`; the claims:
:mod:`pipeline.depth.claims`; the figures: :mod:`pipeline.depth.figures`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from pipeline.depth.case_studies import (
    EXIT_PART,
    facts_study,
    mcq_study,
    pos_prompt_set,
    pos_study,
    token_class,
    token_class_study,
)
from pipeline.depth.claims import _pos_claim, compute_claims, early_layers
from pipeline.depth.data import (
    StageTexts,
    _text_records,
    baseline_prompt_set,
    baseline_summary,
    baseline_tables,
    decision_ks,
    frequency_table,
    stage_texts,
)
from pipeline.depth.exit import best_points, exit_curves
from pipeline.depth.figures import figures
from pipeline.depth.lens import TunedLens
from pipeline.depth.metrics import frequency_ranks
from pipeline.depth.ranks import multi_lens_predictions
from pipeline.depth.spec import (
    BUILTIN_TEXT_KIND,
    DEFAULT_SPEC,
    NATURAL_TEXT_KIND,
    TOKEN_CLASSES,
    DepthSpec,
    Tuned,
    depth_spec,
    is_builtin,
    resolve_spec,
    source_key,
)
from pipeline.depth.tuned import pack_texts, per_layer_kl, train_tuned_lens
from pipeline.model_access import find_layout

__all__ = [  # run_depth, and the names moved out of this module that callers import here
    "BUILTIN_TEXT_KIND", "DEFAULT_SPEC", "TOKEN_CLASSES", "_pos_claim", "_text_records",
    "early_layers", "figures", "is_builtin", "multi_lens_predictions", "pos_prompt_set",
    "resolve_spec", "run_depth", "source_key", "token_class",
]


def _clean(x: Any) -> Any:
    """JSON-safe: numpy scalars → python, NaN/inf → None, recursively."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_clean(v) for v in x.tolist()]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    return x


def _timed(timings: dict[str, float], key: str, fn: Callable, *args, **kw) -> Any:
    """``fn(*args, **kw)``, its wall time in ``timings[key]``."""
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    timings[key] = time.perf_counter() - t0
    return out


def run_depth(
    model: nn.Module,
    tokenizer,
    spec: Mapping[str, Any] | None,
    *,
    model_name: str,
    cache_dir=None,
    lens: TunedLens | None = None,
    progress: bool = True,
) -> tuple[dict[str, pd.DataFrame], dict[str, Any], TunedLens | None]:
    """Run the depth analysis (module docstring) of one model; ``(tables, summary, lens)``
    (``lens``: the tuned lens used, None when ``"tuned"`` is not in ``spec["lenses"]``).
    ``cache_dir``: the data-source cache (:func:`pipeline.data.load_source`). ``lens``: an
    already trained tuned lens for ``model`` (e.g. :meth:`TunedLens.load`) — used as it is,
    no training, no ``lens_history`` table."""
    spec = resolve_spec(spec)
    s = depth_spec(spec)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    builtin = is_builtin(tokenizer, spec)
    layout = find_layout(model)
    L = len(layout.blocks)
    vocab = int(layout.lm_head.weight.shape[0])
    tables: dict[str, pd.DataFrame] = {}
    summary: dict[str, Any] = {
        "model": model_name, "num_layers": L, "vocab_size": vocab,
        "builtin_text": builtin,
        "text_kind": BUILTIN_TEXT_KIND if builtin else NATURAL_TEXT_KIND,
        "lenses": list(s.lenses),
        "primary_lens": "tuned" if "tuned" in s.lenses else "logit",
        "spec": spec,
    }
    if builtin:
        summary["note"] = ("builtin model: every analysis below runs on its own task text, "
                           "Countdown prompt+trace of generated problems (lens training, "
                           "held-out KL, BASELINE prompts, frequency corpus); facts / MCQ are "
                           "replaced by the token-class breakdown (digit / operator / bracket "
                           "/ other)")
    texts = _timed(timings, "data", stage_texts, s, builtin=builtin, cache_dir=cache_dir)
    sources = summary["sources"] = texts.sources

    # ---- tuned lens + held-out KL -----------------------------------------------------
    if "tuned" not in s.lenses:
        lens = None
    elif lens is not None:
        width = int(layout.lm_head.weight.shape[1])
        if (lens.num_layers, lens.d_model) != (L, width):
            raise ValueError(f"depth: lens is for {lens.num_layers} blocks × d={lens.d_model}, "
                             f"model has {L} blocks × d={width}")
        lens = lens.to(layout.lm_head.weight.device).eval()
        summary["tuned_lens"] = {"alignment": lens.alignment, "pretrained": True,
                                 "meta": dict(lens.meta)}
    else:
        lens, history = _timed(timings, "tuned_lens_train", _train_lens, model, tokenizer,
                               s.tuned, texts.train, progress=progress)
        history.insert(0, "model", model_name)
        tables["lens_history"] = history
        summary["tuned_lens"] = {
            "alignment": lens.alignment, "steps": s.tuned.steps,
            "tokens_per_step": int(history["tokens"].iloc[0]),
            "tokens_total": int(history["tokens"].sum()),
            "loss_first": float(history["loss"].iloc[0]),
            "loss_last": float(history["loss"].iloc[-1]),
            "seconds": timings["tuned_lens_train"]}
    lenses = {name: lens if name == "tuned" else None for name in s.lenses}
    tables["kl"], summary["kl"] = _timed(timings, "heldout_kl", _heldout_kl, model,
                                         tokenizer, s, lenses, texts, num_layers=L)

    # ---- frequency ---------------------------------------------------------------------
    t0 = time.perf_counter()
    counts, freq_rank = frequency_ranks(tokenizer, texts.frequency,
                                        vocab_size=max(vocab, len(tokenizer)))
    tables["frequency"] = frequency_table(counts, freq_rank)
    summary["frequency"] = {"n_texts": len(texts.frequency), "n_tokens": int(counts.sum()),
                            "n_distinct": int((counts > 0).sum())}
    timings["frequency"] = time.perf_counter() - t0

    # ---- BASELINE ----------------------------------------------------------------------
    t0 = time.perf_counter()
    recs, prompts = baseline_prompt_set(tokenizer, texts, s, builtin=builtin)
    preds = multi_lens_predictions(model, tokenizer, prompts, lenses,
                                   batch_size=s.batch_size, progress=progress,
                                   desc="baseline")
    ks = decision_ks(s)
    emb = s.decision_depth.include_embedding
    tables.update(baseline_tables(preds, recs, prompts, tokenizer, freq_rank, ks,
                                  builtin=builtin, include_embedding=emb))
    summary["baseline"] = baseline_summary(tables, list(preds), builtin=builtin,
                                           source=sources.get("baseline", sources.get("all")))
    exit_parts = [exit_curves(preds, _baseline_classes(tokenizer, tables["baseline_prompts"],
                                                       builtin=builtin))]
    timings["baseline"] = time.perf_counter() - t0

    # ---- case studies ------------------------------------------------------------------
    studies: list[tuple[str, Callable, dict[str, Any]]] = []
    if builtin:
        studies.append(("token_classes", token_class_study, {
            "tokenizer": tokenizer, "preds": preds,
            "baseline_prompts": tables["baseline_prompts"], "num_layers": L,
            "primary_lens": summary["primary_lens"], "include_embedding": emb}))
    else:
        common = {"model": model, "tokenizer": tokenizer, "spec": s, "lenses": lenses,
                  "progress": progress}
        studies += [("facts", facts_study, {**common, "cache_dir": cache_dir,
                                            "num_layers": L}),
                    ("mcq", mcq_study, {**common, "cache_dir": cache_dir})]
        if s.pos.n_passages:
            src = s.pos_source
            studies.append(("pos", pos_study, {**common, "texts": texts.of(src),
                                               "source": src, "ks": ks, "num_layers": L}))
    for key, study, kw in studies:
        part, summary[key] = _timed(timings, key, study, **kw)
        if EXIT_PART in part:
            exit_parts.append(part.pop(EXIT_PART))
        tables.update(part)
    tables["exit_curves"] = pd.concat(exit_parts, ignore_index=True)
    summary["exit"] = exit_summary(tables["exit_curves"])
    if builtin:
        summary["facts"] = summary["mcq"] = f"not run: {BUILTIN_TEXT_KIND}"
        summary["pos"] = (f"POS case study not run on {BUILTIN_TEXT_KIND} (no natural text "
                          "for spaCy to tag): token-class breakdown instead")
    elif not s.pos.n_passages:
        summary["pos"] = "POS case study not run: pos.n_passages is 0"

    summary["claims"] = compute_claims(tables, lenses=list(lenses), num_layers=L,
                                       builtin=builtin, early_frac=s.claims.early_frac,
                                       min_n=s.claims.min_n)
    timings["total"] = time.perf_counter() - t_start
    summary["timings_s"] = timings
    for df in tables.values():
        if "model" not in df.columns:
            df.insert(0, "model", model_name)
    return tables, _clean(summary), lens


def _baseline_classes(tokenizer, prompts: pd.DataFrame, *,
                      builtin: bool) -> dict[str, np.ndarray]:
    """Token classes of the BASELINE reads for the exit curves: every read, and on
    builtin-task text the class of its true next token (:func:`token_class`)."""
    out = {"all": np.ones(len(prompts), dtype=bool)}
    if builtin:
        cls = np.asarray([token_class(tokenizer.decode([int(t)])) for t in prompts.true_next])
        out.update({c: cls == c for c in TOKEN_CLASSES})
    return out


def exit_summary(curves: pd.DataFrame) -> dict[str, Any]:
    """The summary's ``exit`` entry: per head and rule, the cheapest threshold whose
    agreement on every BASELINE read is ≥ 98 % (methods §4.10), and its fraction of layers."""
    best = best_points(curves, min_agreement=0.98)
    return {
        "definition": "simulated early exit (docs/methods.md §4.10): lens as exit head, rules "
                      "confidence (max prob >= tau) and stability (top-1 unchanged m layers)",
        "best_at_98": {f"{r.lens}/{r.rule}": {"threshold": r.threshold,
                                               "fraction": r.fraction,
                                               "agreement": r.agreement}
                       for r in best.itertuples()},
        "token_classes": sorted(set(curves.token_class))}


def _train_lens(model: nn.Module, tokenizer, t: Tuned, texts: list[str], *,
                progress: bool) -> tuple[TunedLens, pd.DataFrame]:
    """:func:`train_tuned_lens` with the ``tuned`` settings."""
    return train_tuned_lens(
        model, tokenizer, texts, steps=t.steps, tokens_per_step=t.tokens_per_step, lr=t.lr,
        momentum=t.momentum, weight_decay=t.weight_decay, grad_clip=t.grad_clip,
        warmup_steps=t.warmup_steps, seq_len=t.seq_len, alignment=t.alignment, seed=t.seed,
        progress=progress)


def _heldout_kl(model: nn.Module, tokenizer, s: DepthSpec,
                lenses: Mapping[str, TunedLens | None], texts: StageTexts, *,
                num_layers: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The ``kl`` table and the summary's ``kl`` entry: per-layer KL(p_final ‖ p_lens) of
    each lens on ``tuned.heldout_windows`` held-out windows."""
    t, L = s.tuned, num_layers
    held = pack_texts(tokenizer, texts.heldout, t.heldout_seq_len)[:t.heldout_windows]
    kl_rows = []
    kl_lists: dict[str, list[float]] = {}
    for name, lz in lenses.items():
        kl = per_layer_kl(model, lz, held, batch_size=max(1, s.batch_size // 4))
        kl_lists[name] = [float(x) for x in kl]
        kl_rows += [{"lens": name, "layer": i, "kl": float(v), "n_tokens": int(held.numel())}
                    for i, v in enumerate(kl)]
    summary = {"per_layer": kl_lists, "n_tokens": int(held.numel()),
               "source": texts.sources.get("heldout", texts.sources.get("all"))}
    if "tuned" in kl_lists and "logit" in kl_lists:
        worse = [i for i in range(L) if not kl_lists["tuned"][i] < kl_lists["logit"][i]]
        summary["tuned_beats_logit_below_top"] = not worse
        summary["layers_tuned_not_better"] = worse
        summary["mean_below_top"] = {k: float(np.mean(v[:L])) for k, v in kl_lists.items()}
    return pd.DataFrame(kl_rows), summary
