"""Data assembly of the depth stage (docs/methods.md §4): the texts of each part, the BASELINE
prompt set and the BASELINE tables built from the lens read-outs.

Texts (:func:`stage_texts`): natural text comes from :func:`pipeline.data.load_source`
(a registry name or a call given as a mapping, :data:`~pipeline.depth.spec.SOURCE_KEYS`);
builtin models get their own Countdown task text (:func:`countdown_pairs`).

Tables (tidy DataFrames; ``lens`` is ``"logit"`` or ``"tuned"``; layers index h[0]..h[L]):

- ``baseline_prompts``: prompt, id, text, n_tokens, target, target_text, final,
  final_bucket, next_text (true continuation: next word / next token), true_next (builtin:
  true next token id, else −1), correct (builtin: final == true_next, else NaN).
- ``baseline``: lens, prompt, layer, rank (strict rank of the target), top1, final,
  target, top1_bucket (bucket of top1; at layer L of the *final* output, as
  :func:`bucket_mix`), flip (top1 ≠ final; False at layer L).
- ``decision_depth``: lens + :func:`pipeline.depth.decision_depth_curve` columns.
- ``bucket_mix`` / ``flip_rates``: lens + :func:`bucket_mix` / :func:`flip_rates` columns.
- ``frequency``: token, count, freq_rank (0 = unseen), bucket.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.depth.metrics import (
    BUCKETS,
    bucket_index,
    bucket_mix,
    decision_depth_curve,
    flip_rates,
    log_spaced_ks,
)
from pipeline.depth.prompts import cut_passages, truncate_words
from pipeline.depth.spec import KEY_KS, DepthSpec, depth_spec, source_key

Preds = Mapping[str, Mapping[str, np.ndarray]]  # multi_lens_predictions' result


# --------------------------------------------------------------------------- texts
def _text_records(source: str | Mapping[str, Any], cache_dir) -> list[str]:
    """Texts of a source: a name of :data:`pipeline.data.SOURCES` (its default: the pinned
    registry file) or a mapping ``{"name", "hub_id" | "path", "config", "split",
    "revision", "columns", "limit"}`` passed to :func:`pipeline.data.load_source` (a hub
    dataset or a local file for users with network or their own data)."""
    from pipeline.data import load_source

    kw = {"name": source} if isinstance(source, str) else dict(source)
    return [r["text"] for r in load_source(kw.pop("name"), cache_dir=cache_dir, **kw)]


def shuffled(items: Sequence, seed: int) -> list:
    """A seeded shuffle (copy) of ``items``."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def countdown_pairs(n: int, seed: int, countdown_spec: Mapping[str, Any]
                    ) -> list[tuple[str, str]]:
    """``(prompt(p, "builtin"), trace(p))`` of ``n`` generated Countdown problems: the
    builtin models' SFT text (they are trained on prompt + trace + EOS)."""
    from pipeline.tasks import countdown

    problems = countdown.generate(n, seed=seed, **dict(countdown_spec))
    return [(countdown.prompt(p, "builtin"), countdown.trace(p)) for p in problems]


@dataclass
class StageTexts:
    """The texts of one run: lens training (``train``), held-out KL (``heldout``), BASELINE
    (``prompts``: passages, or builtin ``(prompt, trace)`` pairs), frequency corpus
    (``frequency``); ``sources`` says where they came from (the summary's ``sources``);
    :meth:`of` gives the texts of any loaded natural-text source."""

    train: list[str]
    heldout: list[str]
    prompts: list
    frequency: list[str]
    sources: dict[str, Any]
    corpus: dict[str, list[str]] = field(default_factory=dict)

    def of(self, source: str | Mapping[str, Any]) -> list[str]:
        return self.corpus[source_key(source)]


def stage_texts(spec: DepthSpec | Mapping[str, Any], *, builtin: bool,
                cache_dir) -> StageTexts:
    """The texts of every part (stage docstring): builtin models' Countdown text, split
    into lens-training, held-out, BASELINE and frequency problems; or the natural-text
    sources of ``spec`` (each loaded once; the POS source too when it runs)."""
    s = depth_spec(spec)
    t, b = s.tuned, s.builtin
    if builtin:
        cd, seed = b.countdown, b.seed
        n_train, n_prompts = t.n_train_texts, b.n_prompts
        n_held = max(8, t.heldout_windows * t.heldout_seq_len // 20 + 8)
        n_freq = b.n_freq_texts
        pairs = countdown_pairs(n_train + n_held + n_prompts + n_freq, seed, cd)
        texts = [p + t for p, t in pairs]
        return StageTexts(
            train=texts[:n_train], heldout=texts[n_train:n_train + n_held],
            prompts=pairs[n_train + n_held:n_train + n_held + n_prompts],
            frequency=texts[n_train + n_held + n_prompts:],
            sources={"all": f"countdown.generate(seed={seed}, {dict(cd)})"})
    need = [t.source, t.heldout_source, s.baseline.source, s.frequency.source]
    if s.pos.n_passages:
        need.append(s.pos_source)
    loaded = {source_key(x): x for x in need}
    corpus = {k: _text_records(x, cache_dir) for k, x in sorted(loaded.items())}

    def of(source):
        return corpus[source_key(source)]

    return StageTexts(
        train=shuffled(of(t.source), t.seed)[:t.n_train_texts],
        heldout=shuffled(of(t.heldout_source), t.seed + 1),
        prompts=of(s.baseline.source),
        frequency=of(s.frequency.source)[:s.frequency.n_texts],
        sources={"tuned_train": t.source, "heldout": t.heldout_source,
                 "baseline": s.baseline.source, "frequency": s.frequency.source},
        corpus=corpus)


# --------------------------------------------------------------------------- BASELINE prompts
def builtin_cut_prompts(tokenizer, pairs: Sequence[tuple[str, str]], n: int, seed: int
                        ) -> list[dict[str, Any]]:
    """BASELINE prompts of builtin-task text: each prompt + trace (+ EOS) is tokenised
    (no other special tokens, as in SFT) and cut at a random token index j inside the
    trace + EOS part (one cut per problem, the first ``n`` problems): ``input_ids`` =
    tokens[:j], ``true_next`` = tokens[j] (the first trace token … the EOS)."""
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    out = []
    for i, (prompt, trace) in enumerate(pairs):
        if len(out) >= n:
            break
        p_ids = list(tokenizer(prompt, add_special_tokens=False).input_ids)
        ids = p_ids + list(tokenizer(trace, add_special_tokens=False).input_ids)
        if eos is not None:
            ids.append(int(eos))
        lo = max(1, len(p_ids))
        if len(ids) <= lo:
            continue
        j = rng.randrange(lo, len(ids))
        out.append({"id": f"{i}:{j}", "input_ids": ids[:j], "true_next": int(ids[j])})
    return out


def baseline_prompt_set(tokenizer, texts: StageTexts, spec: DepthSpec | Mapping[str, Any],
                        *, builtin: bool) -> tuple[list[dict[str, Any]], list]:
    """``(records, prompts)`` of the BASELINE set: builtin — :func:`builtin_cut_prompts`
    (token-id prompts); natural text — :func:`~pipeline.depth.cut_passages` of the
    passages truncated to ``baseline.max_words`` (string prompts)."""
    s = depth_spec(spec)
    if builtin:
        recs = builtin_cut_prompts(tokenizer, texts.prompts, s.builtin.n_prompts,
                                   seed=s.builtin.seed)
        prompts: list = [r["input_ids"] for r in recs]
    else:
        b = s.baseline
        texts_cut = [truncate_words(t, b.max_words) for t in texts.prompts]
        recs = cut_passages(texts_cut, b.n_prompts, seed=b.seed, min_words=b.min_words)
        prompts = [r["prompt"] for r in recs]
    if not recs:
        raise ValueError("depth: no BASELINE prompts could be built")
    return recs, prompts


# --------------------------------------------------------------------------- tables
def _buckets(token_ids, freq_rank: np.ndarray) -> np.ndarray:
    return np.asarray(BUCKETS, dtype=object)[bucket_index(token_ids, freq_rank)]


def frequency_table(counts: np.ndarray, freq_rank: np.ndarray) -> pd.DataFrame:
    """The ``frequency`` table: one row per token id."""
    return pd.DataFrame({
        "token": np.arange(len(counts)), "count": counts, "freq_rank": freq_rank,
        "bucket": _buckets(np.arange(len(counts)), freq_rank)})


def decision_ks(spec: DepthSpec | Mapping[str, Any]) -> np.ndarray:
    """The rank thresholds of the decision-depth curves: ``decision_depth.n_ks``
    log-spaced in [1, k_max] plus :data:`~pipeline.depth.spec.KEY_KS` up to k_max."""
    dd = depth_spec(spec).decision_depth
    k_max = float(dd.k_max)
    return np.unique(np.concatenate([log_spaced_ks(dd.n_ks, 1.0, k_max),
                                     [k for k in KEY_KS if k <= k_max]]))


def baseline_long(preds: Preds, freq_rank: np.ndarray) -> pd.DataFrame:
    """The ``baseline`` table: one row per (lens, prompt, layer)."""
    frames = []
    for name, r in preds.items():
        n, cols = r["ranks"].shape
        top1 = r["top1"]
        eff = top1.copy()
        eff[:, -1] = r["final"]
        frames.append(pd.DataFrame({
            "lens": name,
            "prompt": np.repeat(np.arange(n), cols),
            "layer": np.tile(np.arange(cols), n),
            "rank": r["ranks"].ravel(),
            "top1": top1.ravel(),
            "final": np.repeat(r["final"], cols),
            "target": np.repeat(r["targets"], cols),
            "top1_bucket": _buckets(eff, freq_rank).ravel(),
            "flip": (eff != r["final"][:, None]).ravel(),
        }))
    return pd.concat(frames, ignore_index=True)


def baseline_tables(preds: Preds, recs: Sequence[Mapping[str, Any]], prompts: Sequence,
                    tokenizer, freq_rank: np.ndarray, ks: np.ndarray, *, builtin: bool,
                    include_embedding: bool = False) -> dict[str, pd.DataFrame]:
    """``baseline_prompts``, ``baseline``, ``decision_depth``, ``bucket_mix`` and
    ``flip_rates`` (module docstring) of the BASELINE read-outs; decision depth over
    blocks 1..L unless ``include_embedding`` (docs/methods.md §4.4)."""
    emb = include_embedding
    first = next(iter(preds.values()))
    final = first["final"]
    true_next = np.array([r.get("true_next", -1) for r in recs], dtype=np.int64)
    tables = {"baseline_prompts": pd.DataFrame({
        "prompt": np.arange(len(recs)), "id": [r["id"] for r in recs],
        "text": [tokenizer.decode(p) if not isinstance(p, str) else p for p in prompts],
        "n_tokens": prompt_lengths(tokenizer, prompts), "target": first["targets"],
        "target_text": [tokenizer.decode([int(t)]) for t in first["targets"]],
        "final": final,
        "final_bucket": _buckets(final, freq_rank),
        "next_text": [tokenizer.decode([int(r["true_next"])]) if builtin else r["next_word"]
                      for r in recs],
        "true_next": true_next,
        "correct": (final == true_next).astype(float) if builtin else np.nan})}
    tables["baseline"] = baseline_long(preds, freq_rank)
    per_lens = {
        "decision_depth": lambda r: decision_depth_curve(r["ranks"], ks,
                                                         include_embedding=emb),
        "bucket_mix": lambda r: bucket_mix(r["top1"], r["final"], freq_rank),
        "flip_rates": lambda r: flip_rates(r["top1"], r["final"], freq_rank)}
    for key, fn in per_lens.items():
        df = pd.concat([fn(r).assign(lens=name) for name, r in preds.items()],
                       ignore_index=True)
        tables[key] = df[["lens", *[c for c in df.columns if c != "lens"]]]
    return tables


def prompt_lengths(tokenizer, prompts: Sequence) -> list[int]:
    """Tokens per prompt (token-id prompts as they are, strings as ``tokenizer`` encodes)."""
    return [len(p) if not isinstance(p, str) else len(tokenizer(p).input_ids)
            for p in prompts]


def baseline_summary(tables: Mapping[str, pd.DataFrame], lens_names: Sequence[str], *,
                     source: Any, builtin: bool) -> dict[str, Any]:
    """The summary's ``baseline`` entry, from the BASELINE tables (builtin text: with the
    model's next-token accuracy)."""
    dd, mix, flips = tables["decision_depth"], tables["bucket_mix"], tables["flip_rates"]
    prompts = tables["baseline_prompts"]
    depth_keys = {}
    for name in lens_names:
        d = dd[dd.lens == name]
        entry = {}
        for variant in ("first", "stays"):
            v = d[d.variant == variant]
            for k in KEY_KS:
                row = v[np.isclose(v["k"], k)]
                if len(row):
                    entry[f"{variant}_k{k}"] = float(row.mean_layer.iloc[0])
        depth_keys[name] = entry
    out = {
        "n_prompts": len(prompts),
        "mean_prompt_tokens": float(np.mean(prompts.n_tokens.to_numpy())),
        "source": source,
        "mean_earliest_layer": depth_keys,
        "final_bucket_share": {bk: float(np.mean(prompts.final_bucket == bk))
                               for bk in BUCKETS},
        "bucket_share_per_layer": {
            name: {bk: mix[(mix.lens == name) & (mix.bucket == bk)].sort_values("layer")[
                "share"].tolist() for bk in BUCKETS} for name in lens_names},
        "flip_rate_per_layer": {
            name: {bk: flips[(flips.lens == name) & (flips.bucket == bk)]
                   .sort_values("layer")["flip_rate"].tolist() for bk in BUCKETS}
            for name in lens_names},
    }
    if builtin:
        out["accuracy_next_token"] = float(np.mean(prompts.final.to_numpy()
                                                   == prompts.true_next.to_numpy()))
    return out
