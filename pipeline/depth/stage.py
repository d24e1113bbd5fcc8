"""The depth stage (methods.md §4): guess-then-refine analysis of one model with the logit
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

- ``kl``: lens, layer, kl (nats, mean over held-out positions), n_tokens.
- ``lens_history``: the tuned-lens training history (one row per step).
- ``baseline_prompts``: prompt, id, text, n_tokens, target, target_text, final,
  final_bucket, next_text (true continuation: next word / next token), true_next (builtin:
  true next token id, else −1), correct (builtin: final == true_next, else NaN).
- ``baseline``: lens, prompt, layer, rank (strict rank of the target), top1, final,
  target, top1_bucket (bucket of top1; at layer L of the *final* output, as
  :func:`bucket_mix`), flip (top1 ≠ final; False at layer L).
- ``decision_depth``: lens + :func:`pipeline.depth.decision_depth_curve` columns.
- ``bucket_mix`` / ``flip_rates``: lens + :func:`bucket_mix` / :func:`flip_rates` columns.
- ``frequency``: token, count, freq_rank (0 = unseen), bucket.
- ``facts``: lens, id, fact_id, relation, answer_token, n_answer_tokens, target,
  target_text, final, correct, earliest_k1, earliest_k1_stays (−1 = never).
- ``facts_summary``: lens, variant, answer_token, n_total, n_correct, mean_layer,
  ci95_lo, ci95_hi, mean_layer_rel (correct prompts only).
- ``mcq``: lens, id, answer, choice, correct, and ``<flag>_layer`` /
  ``<flag>_layer_stays`` for flag in dominate, choice_top1, choice_settled (−1 = never).
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

import copy
import json
import math
import random
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pipeline.decomposition.layout import find_layout  # noqa: E402
from pipeline.depth.lens import TunedLens  # noqa: E402
from pipeline.depth.metrics import (  # noqa: E402
    BUCKETS,
    bucket_index,
    bucket_mix,
    decision_depth_curve,
    earliest_layer,
    first_true,
    flip_rates,
    frequency_ranks,
    log_spaced_ks,
)
from pipeline.depth.prompts import (  # noqa: E402
    CONTENT_TAGS,
    FUNCTION_TAGS,
    SPACY_MODEL,
    cut_passages,
    first_tagged_words,
    mcq_prompts,
    passage_order,
    pos_prompts,
    pos_token_prompts,
    spacy_model_info,
    teacher_forced_fact_prompts,
    upos_tag,
)
from pipeline.depth.ranks import option_token_ids, strict_rank  # noqa: E402
from pipeline.depth.readout import (  # noqa: E402
    Readout,
    capture_hidden,
    input_device,
    pad_token_ids,
)
from pipeline.depth.tuned import pack_texts, per_layer_kl, train_tuned_lens  # noqa: E402

DEFAULT_SPEC: dict[str, Any] = {
    "lenses": ["logit", "tuned"],
    # None = auto (tokenizer vocabulary < 1000 → the model's own Countdown text)
    "builtin_text": None,
    "batch_size": 16,
    "tuned": {
        "source": "openwebtext",          # training text
        "heldout_source": "wikipedia",    # held-out KL text
        "steps": 24,
        "tokens_per_step": 64,
        "seq_len": 64,
        "lr": 0.2,
        "warmup_steps": 0,
        "momentum": 0.9,
        "weight_decay": 1e-3,
        "grad_clip": 1.0,
        "alignment": "input",
        "n_train_texts": 200,
        "heldout_windows": 2,
        "heldout_seq_len": 128,
        "seed": 0,
    },
    "baseline": {"source": "wikipedia", "n_prompts": 150, "min_words": 16, "max_words": 48,
                 "seed": 0},
    "frequency": {"source": "openwebtext", "n_texts": 1000},
    "facts": {"n_facts": 120, "max_answer_tokens": 3, "min_answer_tokens": 2,
              "relations": None, "seed": 0},
    "mcq": {"shots": 4, "n_problems": 32, "seed": 0, "max_chars": 300},
    "pos": {"n_passages": 150, "source": None, "seed": None, "min_words": 8, "max_words": 48,
            "function_tags": list(FUNCTION_TAGS), "content_tags": list(CONTENT_TAGS),
            "spacy_model": SPACY_MODEL},
    "decision_depth": {"n_ks": 200, "k_max": 10000.0},
    "claims": {"early_frac": 0.25, "min_n": 5},
    "builtin": {"n_prompts": 300, "n_freq_texts": 1000, "seed": 1,
                "countdown": {"num_numbers": 3, "min_number": 1, "max_number": 30,
                              "min_target": 1, "max_target": 100}},
}
"""Stage settings, sized for a 2-core CPU (SmolLM2-135M: about 3.7 min on one thread, plus
≈ 47 s for the POS set of 150 passages; the paper's lens recipe is 250 steps × 2^18
tokens — raise ``tuned.steps`` / ``tokens_per_step`` on a GPU, see config/depth-paper.yaml).
``batch_size``: prompts per forward (facts use 2×, MCQ ½×, POS one passage per prompt).
Every ``source`` is a name of :data:`pipeline.data.SOURCES` (the pinned registry
passages) or a :func:`pipeline.data.load_source` call as a mapping ``{"name", "hub_id" |
"path", "config", "split", "revision", "columns", "limit"}`` (config/depth-paper.yaml trains
the lens on WikiText-103 from the hub). ``tuned`` is passed to :func:`train_tuned_lens`
(lr 0.2: twice the library's 0.1, still stable at the last layers for this budget; short
windows make the position-0 attention sink weigh more, so ``heldout_seq_len`` is longer);
``baseline.max_words`` truncates each passage before it is cut (bounds the context, hence
the forward cost); ``facts`` keeps facts whose answer has at least ``min_answer_tokens``
tokens (the paper's multi-token answers);
``mcq.max_chars`` keeps MMLU items whose question + choices have at most that many
characters (None = all); ``pos``: the POS case study (natural text only) tags the first
``n_passages`` passages (0 = off) of ``source`` (None = ``baseline.source``) that
:func:`~pipeline.depth.cut_passages` visits with ``seed`` (None = ``baseline.seed``), each
truncated to ``max_words`` words, with the spaCy pipeline ``spacy_model``; the target of
each tag in ``function_tags`` + ``content_tags`` is its first word with at least
``min_words`` words before it; ``claims.early_frac``: the "early" layers are
h[1]..h[max(1, ⌊early_frac·L⌋)]; claims need ``min_n`` prompts per group (else ``holds``
is None). ``builtin``: the Countdown text of builtin models (``n_prompts`` BASELINE prompts,
``n_freq_texts`` frequency texts, ``tuned.n_train_texts`` lens texts; generator settings in
``countdown`` — pass the experiment's ``countdown`` settings)."""

LENS_NAMES = ("logit", "tuned")
KEY_KS = (1, 10, 100, 1000)  # thresholds always in the decision-depth table and summary
BUILTIN_TEXT_KIND = "builtin-task text (Countdown prompt+trace)"
NATURAL_TEXT_KIND = "natural text"
TOKEN_CLASSES = ("digit", "operator", "bracket", "other")
_OPERATORS = set("+-*/=")
_BRACKETS = set("()")
BUCKET_COLORS = {"Top1-10": "tab:red", "11-100": "tab:orange", "101-1000": "tab:green",
                 "1000+": "tab:blue"}
LENS_COLORS = {"logit": "tab:gray", "tuned": "tab:blue"}
_WORD = re.compile(r"\S+")


# --------------------------------------------------------------------------- spec
def resolve_spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_SPEC with ``spec`` merged in (nested dicts key by key); an unknown key is a
    ``ValueError`` naming its path."""
    out = copy.deepcopy(DEFAULT_SPEC)

    def merge(base: dict, new: Mapping, path: str) -> None:
        for k, v in new.items():
            if k not in base:
                raise ValueError(f"depth spec: unknown key {path}{k}")
            if isinstance(base[k], dict) and isinstance(v, Mapping) and k != "countdown":
                merge(base[k], v, f"{path}{k}.")
            elif isinstance(base[k], dict) and isinstance(v, Mapping):
                base[k] = {**base[k], **dict(v)}
            else:
                base[k] = copy.deepcopy(v)

    merge(out, spec or {}, "")
    for path in ("tuned.source", "tuned.heldout_source", "baseline.source", "frequency.source",
                 "pos.source"):
        part, key = path.split(".")
        if not (path == "pos.source" and out[part][key] is None):
            _check_source(out[part][key], path)
    bad = [x for x in out["lenses"] if x not in LENS_NAMES]
    if bad or not out["lenses"]:
        raise ValueError(f"depth spec: lenses must be a non-empty subset of {LENS_NAMES}, "
                         f"got {out['lenses']}")
    return out


def is_builtin(tokenizer, spec: Mapping[str, Any]) -> bool:
    """Builtin-task text path: ``spec["builtin_text"]`` if set, else vocabulary < 1000."""
    flag = spec.get("builtin_text")
    return bool(flag) if flag is not None else len(tokenizer) < 1000


# --------------------------------------------------------------------------- helpers
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


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def _mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    from pipeline.evaluation.metrics import mean_ci

    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    return mean_ci(v)


def early_layers(num_layers: int, early_frac: float) -> list[int]:
    """The "early" layers of the claims: h[1]..h[max(1, ⌊early_frac·L⌋)]."""
    return list(range(1, max(1, int(math.floor(early_frac * num_layers))) + 1))


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


# --------------------------------------------------------------------------- predictions
@torch.no_grad()
def multi_lens_predictions(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    lenses: Mapping[str, TunedLens | None],
    *,
    targets: Sequence[int] | None = None,
    option_ids: Sequence[int] | None = None,
    positions: Sequence[Sequence[int]] | None = None,
    correct_only: bool = False,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "lens",
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`pipeline.depth.predict_prompts` (and, with ``option_ids``,
    :func:`pipeline.depth.predict_options`) for several lenses from *one* forward per batch
    (same left-padded, length-sorted batches). Returns ``{lens name: {"ranks" [N, L+1],
    "top1" [N, L+1], "final" [N], "targets" [N]}}`` (+ with options: ``"option_ranks"``
    [N, L+1, K], ``"choice"``, ``"dominate"``, ``"choice_top1"``, ``"choice_settled"``
    and their ``_layer`` / ``_layer_stays`` first layers, as :func:`option_ranks`).

    ``positions``: per prompt, the 0-based token indices at which to read (index j reads
    the prediction of token j+1, i.e. the prompt ``ids[:j+1]``; default: the last token
    only). The N result rows are then the reads, prompt by prompt in the given order, and
    ``"prompt"`` / ``"position"`` [N] say where each was read; ``targets`` are per read.
    ``correct_only`` (needs ``targets``; not with options): the lens read-outs run only for
    reads where the model's greedy token equals the target — the others keep ``final``
    but have rank and top-1 −1 in every layer; ``"evaluated"`` [N] marks the kept reads.
    """
    enc = []
    for p in prompts:
        ids = tokenizer(p).input_ids if isinstance(p, str) else [int(t) for t in p]
        if not ids:
            raise ValueError(f"prompt {p!r} encodes to no tokens")
        enc.append(ids)
    if positions is None:
        reads = [[len(ids) - 1] for ids in enc]
    else:
        if len(positions) != len(enc):
            raise ValueError(f"{len(positions)} position lists for {len(enc)} prompts")
        reads = [[int(j) for j in pos] for pos in positions]
        for ids, pos in zip(enc, reads, strict=True):
            if not pos or len(set(pos)) != len(pos) or min(pos) < 0 or max(pos) >= len(ids):
                raise ValueError(f"positions {pos} must be distinct token indices in "
                                 f"[0, {len(ids)})")
    start = np.cumsum([0] + [len(r) for r in reads])  # read rows of prompt i: start[i]..
    n = int(start[-1])
    tgt = None if targets is None else np.asarray(targets, dtype=np.int64).reshape(-1)
    if tgt is not None and len(tgt) != n:
        raise ValueError(f"{len(tgt)} targets for {n} reads")
    if correct_only and (tgt is None or option_ids is not None):
        raise ValueError("correct_only needs targets and no option_ids")
    layout = find_layout(model)
    readout = Readout(model, layout=layout)
    n_layers = len(layout.blocks)
    dev = input_device(model)
    pad = _pad_id(tokenizer)
    final = np.zeros(n, dtype=np.int64)
    evaluated = np.zeros(n, dtype=bool)
    res: dict[str, dict[str, np.ndarray]] = {
        name: {"ranks": np.full((n, n_layers + 1), -1, dtype=np.int64),
               "top1": np.full((n, n_layers + 1), -1, dtype=np.int64)} for name in lenses}
    opt = None if option_ids is None else torch.as_tensor(list(option_ids), dtype=torch.long)
    if opt is not None:
        k = opt.numel()
        final_opt = np.zeros((n, k), dtype=np.float32)
        for r in res.values():
            r["option_ranks"] = np.zeros((n, n_layers + 1, k), dtype=np.int64)
            r["dominate"] = np.zeros((n, n_layers + 1), dtype=bool)
            r["_opt_logits"] = np.zeros((n, n_layers + 1, k), dtype=np.float32)
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
    batches = [order[s:s + batch_size] for s in range(0, len(enc), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=not progress):
        ids, mask = pad_token_ids([enc[i] for i in idx], pad, side="left")
        width = ids.shape[1]
        where = torch.zeros_like(mask, dtype=torch.bool)
        sel_all = []  # read row of each selected position, in capture (row-major) order
        for b, i in enumerate(idx):
            shift = width - len(enc[i])
            for j, row in sorted(zip(reads[i], range(start[i], start[i + 1]), strict=True)):
                where[b, shift + j] = True
                sel_all.append(row)
        sel_all = np.asarray(sel_all, dtype=np.int64)
        hs = capture_hidden(model, ids.to(dev), mask.to(dev), positions=where.to(dev),
                            layout=layout)
        for rows in readout.chunks(len(sel_all)):
            z = readout.logits(hs[n_layers, rows])
            final[sel_all[rows]] = z.argmax(-1).cpu().numpy()
            if opt is not None:
                final_opt[sel_all[rows]] = z.index_select(1, opt.to(z.device)).cpu().numpy()
        if correct_only:
            keep = np.nonzero(final[sel_all] == tgt[sel_all])[0]
            hs, sel_all = hs[:, torch.as_tensor(keep, device=hs.device)], sel_all[keep]
        evaluated[sel_all] = True
        for rows in readout.chunks(len(sel_all)):
            sel = sel_all[rows]
            o = None if opt is None else opt.to(readout.device)
            t = torch.as_tensor(final[sel] if tgt is None else tgt[sel], device=readout.device)
            for name, lens in lenses.items():
                r = res[name]
                for layer in range(n_layers + 1):
                    x = hs[layer, rows]
                    if lens is not None:
                        x = lens.transform_hidden(x, layer)
                    zl = readout.logits(x)
                    r["ranks"][sel, layer] = strict_rank(zl, t).cpu().numpy()
                    r["top1"][sel, layer] = zl.argmax(-1).cpu().numpy()
                    if o is not None:
                        zo = zl.index_select(1, o)
                        r["option_ranks"][sel, layer] = torch.stack(
                            [strict_rank(zl, o[j].expand(zl.shape[0]))
                             for j in range(o.numel())], 1).cpu().numpy()
                        rest = zl.clone()
                        rest[:, o] = -torch.inf
                        r["dominate"][sel, layer] = (
                            zo.min(-1).values > rest.max(-1).values).cpu().numpy()
                        r["_opt_logits"][sel, layer] = zo.cpu().numpy()
        del hs
    used = final.copy() if tgt is None else tgt
    prompt_of = np.repeat(np.arange(len(enc)), [len(r) for r in reads])
    position = np.asarray([j for r in reads for j in r], dtype=np.int64)
    for r in res.values():
        r["final"] = final.copy()
        r["targets"] = used.copy()
        if positions is not None:
            r["prompt"], r["position"] = prompt_of.copy(), position.copy()
        if correct_only:
            r["evaluated"] = evaluated.copy()
        if opt is not None:
            choice = final_opt.argmax(-1)
            ol = r.pop("_opt_logits")
            rows_ = np.arange(n)
            chosen = ol[rows_, :, choice] if n else np.zeros((0, n_layers + 1), np.float32)
            others = ol.copy()
            others[rows_, :, choice] = -np.inf
            r["choice"] = choice
            r["choice_top1"] = r["option_ranks"][rows_, :, choice] == 1
            r["choice_settled"] = chosen > others.max(-1)
            for flag in ("dominate", "choice_top1", "choice_settled"):
                r[f"{flag}_layer"] = first_true(r[flag]).numpy()
                r[f"{flag}_layer_stays"] = first_true(r[flag], stays=True).numpy()
    return res


# --------------------------------------------------------------------------- data
#: Keys of a text source given as a mapping: a :func:`pipeline.data.load_source` call.
SOURCE_KEYS = ("name", "path", "hub_id", "config", "split", "revision", "columns", "limit")


def source_key(source: str | Mapping[str, Any]) -> str:
    """A text source as a hashable key: the name, or the mapping as sorted JSON."""
    return source if isinstance(source, str) else json.dumps(dict(source), sort_keys=True)


def _check_source(source: Any, path: str) -> None:
    if isinstance(source, str):
        return
    if not isinstance(source, Mapping) or "name" not in source:
        raise ValueError(f"depth spec: {path} must be a source name or a mapping with "
                         f"'name' (and any of {SOURCE_KEYS[1:]}), got {source!r}")
    if bad := sorted(set(source) - set(SOURCE_KEYS)):
        raise ValueError(f"depth spec: unknown key {path}.{bad[0]} (known: {SOURCE_KEYS})")


def _text_records(source: str | Mapping[str, Any], cache_dir) -> list[str]:
    """Texts of a source: a name of :data:`pipeline.data.SOURCES` (its default: the pinned
    registry file) or a mapping ``{"name", "hub_id" | "path", "config", "split",
    "revision", "columns", "limit"}`` passed to :func:`pipeline.data.load_source` (a hub
    dataset or a local file for users with network or their own data)."""
    from pipeline.data import load_source

    kw = {"name": source} if isinstance(source, str) else dict(source)
    return [r["text"] for r in load_source(kw.pop("name"), cache_dir=cache_dir, **kw)]


def _shuffled(items: Sequence, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def _truncate_words(text: str, max_words: int | None) -> str:
    if not max_words:
        return text
    spans = [m.span() for m in _WORD.finditer(text)]
    return text if len(spans) <= max_words else text[:spans[max_words - 1][1]]


def countdown_pairs(n: int, seed: int, countdown_spec: Mapping[str, Any]
                    ) -> list[tuple[str, str]]:
    """``(prompt(p, "builtin"), trace(p))`` of ``n`` generated Countdown problems: the
    builtin models' SFT text (they are trained on prompt + trace + EOS)."""
    from pipeline.tasks import countdown

    problems = countdown.generate(n, seed=seed, **dict(countdown_spec))
    return [(countdown.prompt(p, "builtin"), countdown.trace(p)) for p in problems]


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


# --------------------------------------------------------------------------- tables
def baseline_long(preds: Mapping[str, Mapping[str, np.ndarray]], freq_rank: np.ndarray
                  ) -> pd.DataFrame:
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
            "top1_bucket": np.asarray(BUCKETS, dtype=object)[
                bucket_index(eff, freq_rank)].ravel(),
            "flip": (eff != r["final"][:, None]).ravel(),
        }))
    return pd.concat(frames, ignore_index=True)


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


def mcq_layer_table(preds: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
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


# --------------------------------------------------------------------------- claims
def _never_as(layers: np.ndarray, num_layers: int) -> np.ndarray:
    """First-layer arrays with −1 (never) mapped to L+1."""
    a = np.asarray(layers, dtype=float)
    return np.where(a < 0, num_layers + 1, a)


def compute_claims(tables: Mapping[str, pd.DataFrame], *, lenses: Sequence[str],
                   num_layers: int, builtin: bool, early_frac: float = 0.25,
                   min_n: int = 5) -> list[dict[str, Any]]:
    """The paper's claims (methods.md §4), one dict per (claim, lens), recomputed from the
    tables: ``{"claim", "lens", "measured", "criterion", "holds"}`` (``holds`` None when
    there are too few prompts or the claim is not measurable on this text)."""
    L = num_layers
    early = early_layers(L, early_frac)
    out: list[dict[str, Any]] = []
    mix, flips = tables["bucket_mix"], tables["flip_rates"]
    for lens in lenses:
        m = mix[mix.lens == lens]
        top = m[m.bucket == "Top1-10"].set_index("layer")["share"]
        top100 = m[m.bucket.isin(["Top1-10", "11-100"])].groupby("layer")["share"].sum()
        n_prompts = int(m["n_prompts"].iloc[0]) if len(m) else 0
        share = float(top.loc[early].mean()) if n_prompts else math.nan
        out.append({
            "claim": "early guesses are mostly high-frequency tokens",
            "lens": lens,
            "measured": {"early_layers": early,
                         "top1_10_share_per_early_layer": [float(top.loc[i]) for i in early],
                         "mean_top1_10_share_early": share,
                         "mean_top1_100_share_early": float(top100.loc[early].mean())
                         if n_prompts else math.nan,
                         "top1_10_share_final_output": float(top.loc[L]) if n_prompts
                         else math.nan,
                         "n_prompts": n_prompts},
            "criterion": (f"mean over the early layers h[{early[0]}]..h[{early[-1]}] "
                          f"(⌊{early_frac}·L⌋) of the share of BASELINE prompts whose lens "
                          "top-1 lies in the Top1-10 frequency bucket > 0.5; None if fewer "
                          f"than {min_n} prompts"),
            "holds": None if n_prompts < min_n else bool(share > 0.5),
        })
    for lens in lenses:
        f = flips[(flips.lens == lens) & (flips.bucket == "Top1-10") & flips.layer.isin(early)]
        n_in, n_flip = int(f["n_in_bucket"].sum()), int(f["n_flip"].sum())
        rate = n_flip / n_in if n_in else math.nan
        out.append({
            "claim": ">70 % of early high-frequency guesses are later refined (flipped)",
            "lens": lens,
            "measured": {"early_layers": early, "n_top1_10_guesses": n_in,
                         "n_flipped": n_flip, "flip_rate_top1_10_early": rate,
                         "flip_rate_per_early_layer": [
                             float(x) if np.isfinite(x) else None
                             for x in f.sort_values("layer")["flip_rate"]]},
            "criterion": ("pooled over the early layers h[1]..h[⌊early_frac·L⌋], of the lens "
                          "top-1 guesses in the Top1-10 bucket, the fraction that differ "
                          "from the model's final output (n_flip / n_in_bucket) > 0.7; None "
                          f"if fewer than {min_n} such guesses"),
            "holds": None if n_in < min_n else bool(rate > 0.7),
        })
    na = f"not measurable on {BUILTIN_TEXT_KIND}"
    for lens in lenses:
        claim = "the first answer token needs the most depth (fact recall)"
        crit = ("mean earliest layer at k=1 (first hit) over correct-only teacher-forced "
                "prompts at answer-token position 1 > the mean at every other position "
                f"1 < j ≤ 3 with ≥ {min_n} correct prompts; None if position 1 or all others "
                f"have fewer than {min_n}")
        if builtin or "facts_summary" not in tables:
            out.append(_not_measured(claim, lens, crit + f" — {na}"))
            continue
        s = tables["facts_summary"]
        s = s[(s.lens == lens) & (s.variant == "first")].set_index("answer_token")
        means = {int(j): float(r.mean_layer) for j, r in s.iterrows()}
        ns = {int(j): int(r.n_used) for j, r in s.iterrows()}
        others = [j for j in means if j != 1 and ns[j] >= min_n]
        if ns.get(1, 0) < min_n or not others:
            holds = None
        else:
            holds = bool(all(means[1] > means[j] for j in others))
        stays = tables["facts_summary"]
        stays = stays[(stays.lens == lens) & (stays.variant == "stays")]
        out.append({"claim": claim, "lens": lens,
                    "measured": {"mean_earliest_layer": means, "n_correct": ns,
                                 "mean_earliest_layer_stays": {
                                     int(r.answer_token): float(r.mean_layer)
                                     for r in stays.itertuples()},
                                 "ci95": {int(j): [float(r.ci95_lo), float(r.ci95_hi)]
                                          for j, r in s.iterrows()}},
                    "criterion": crit, "holds": holds})
    for lens in lenses:
        claim = ("valid options reach the top in the first half of the layers, the choice "
                 "among them is settled late (multiple choice)")
        crit = (f"median over MMLU prompts of the first layer where the 4 option letters "
                f"dominate (all above every other token; never → L+1) ≤ L/2 = {L / 2:g}, "
                "AND median of the first layer from which the model's chosen option stays "
                f"strictly above the other options (settled, stays variant) > L/2; None if "
                f"fewer than {min_n} prompts")
        if builtin or "mcq" not in tables:
            out.append(_not_measured(claim, lens, crit + f" — {na}"))
            continue
        q = tables["mcq"]
        q = q[q.lens == lens]
        n = len(q)
        dom = _never_as(q["dominate_layer"].to_numpy(), L)
        dom_stays = _never_as(q["dominate_layer_stays"].to_numpy(), L)
        settled = _never_as(q["choice_settled_layer_stays"].to_numpy(), L)
        settled_first = _never_as(q["choice_settled_layer"].to_numpy(), L)
        top1 = _never_as(q["choice_top1_layer_stays"].to_numpy(), L)
        med = (lambda a: float(np.median(a)) if len(a) else math.nan)
        measured = {"n_prompts": n, "num_layers": L,
                    "median_dominate_layer": med(dom),
                    "median_dominate_layer_stays": med(dom_stays),
                    "frac_ever_dominate": float((q["dominate_layer"] >= 0).mean())
                    if n else math.nan,
                    "median_choice_settled_layer_stays": med(settled),
                    "median_choice_settled_layer_first": med(settled_first),
                    "median_choice_top1_layer_stays": med(top1),
                    "accuracy": float(q["correct"].mean()) if n else math.nan}
        holds = None if n < min_n else bool(measured["median_dominate_layer"] <= L / 2
                                            and measured["median_choice_settled_layer_stays"]
                                            > L / 2)
        out.append({"claim": claim, "lens": lens, "measured": measured, "criterion": crit,
                    "holds": holds})
    for lens in lenses:
        claim = "function words (DET, ADP, PUNCT) are decided earliest (POS)"
        if not builtin:
            out.append(_pos_claim(tables.get("pos_summary"), claim, lens, min_n=min_n))
            continue
        if "token_class_summary" not in tables:
            out.append(_not_measured(claim, lens, f"not measured: no token-class table ({na})"))
            continue
        s = tables["token_class_summary"]
        s = s[(s.lens == lens) & (s.variant == "first")].set_index("token_class")
        means = {c: float(s.loc[c, "mean_layer"]) if c in s.index else math.nan
                 for c in TOKEN_CLASSES}
        ns = {c: int(s.loc[c, "n_used"]) if c in s.index else 0 for c in TOKEN_CLASSES}
        func = [c for c in ("operator", "bracket") if ns[c] >= min_n]
        holds = None if ns["digit"] < min_n or not func else \
            bool(all(means[c] < means["digit"] for c in func))
        out.append({"claim": claim + f" — analog on {BUILTIN_TEXT_KIND}: function-like "
                                     "tokens (operators, brackets) before digits",
                    "lens": lens, "measured": {"mean_earliest_layer": means, "n_correct": ns},
                    "criterion": ("mean earliest layer at k=1 (first hit, correct-only, by "
                                  "class of the true next token) of operators and of brackets "
                                  f"(each with ≥ {min_n} prompts) < that of digits; None if "
                                  f"digits or both function-like classes have < {min_n}"),
                    "holds": holds})
    return out


def _not_measured(claim: str, lens: str, criterion: str) -> dict[str, Any]:
    return {"claim": claim, "lens": lens, "measured": {}, "criterion": criterion,
            "holds": None}


def _pos_claim(summ: pd.DataFrame | None, claim: str, lens: str, *, min_n: int
               ) -> dict[str, Any]:
    """The POS claim on natural text from the ``pos_summary`` table."""
    crit = ("mean earliest layer at k=1 (first hit, correct-only prompts) of every function "
            "tag < that of every content tag, over the tags with ≥ "
            f"{min_n} correct prompts; None if no function or no content tag has that many "
            "(medians and the pooled function / content means reported beside)")
    if summ is None or not len(summ):
        return _not_measured(claim, lens, crit + " — not measured: the POS case study did "
                                                 "not run")
    s = summ[(summ.lens == lens) & (summ.variant == "first")].set_index("upos")
    means = {str(t): float(r.mean_layer) for t, r in s.iterrows()}
    medians = {str(t): float(r.median_layer) for t, r in s.iterrows()}
    ns = {str(t): int(r.n_used) for t, r in s.iterrows()}
    cls = {str(t): str(r.word_class) for t, r in s.iterrows()}
    func = [t for t in means if cls[t] == "function" and ns[t] >= min_n]
    cont = [t for t in means if cls[t] == "content" and ns[t] >= min_n]

    def pooled(group: str) -> float:
        tot = sum(ns[t] for t in means if cls[t] == group and ns[t])
        return (sum(means[t] * ns[t] for t in means if cls[t] == group and ns[t]) / tot
                if tot else math.nan)

    holds = None if not func or not cont else bool(
        max(means[t] for t in func) < min(means[t] for t in cont))
    return {"claim": claim, "lens": lens,
            "measured": {"mean_earliest_layer": means, "median_earliest_layer": medians,
                         "n_correct": ns, "word_class": cls,
                         "pooled_mean_function": pooled("function"),
                         "pooled_mean_content": pooled("content"),
                         "ci95": {str(t): [float(r.ci95_lo), float(r.ci95_hi)]
                                  for t, r in s.iterrows()}},
            "criterion": crit, "holds": holds}


# --------------------------------------------------------------------------- the stage
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
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    builtin = is_builtin(tokenizer, spec)
    layout = find_layout(model)
    L = len(layout.blocks)
    vocab = int(layout.lm_head.weight.shape[0])
    bs = int(spec["batch_size"])
    tspec, bspec = spec["tuned"], spec["builtin"]
    tables: dict[str, pd.DataFrame] = {}
    summary: dict[str, Any] = {
        "model": model_name, "num_layers": L, "vocab_size": vocab,
        "builtin_text": builtin,
        "text_kind": BUILTIN_TEXT_KIND if builtin else NATURAL_TEXT_KIND,
        "lenses": list(spec["lenses"]),
        "primary_lens": "tuned" if "tuned" in spec["lenses"] else "logit",
        "spec": spec,
    }
    if builtin:
        summary["note"] = ("builtin model: every analysis below runs on its own task text, "
                           "Countdown prompt+trace of generated problems (lens training, "
                           "held-out KL, BASELINE prompts, frequency corpus); facts / MCQ are "
                           "replaced by the token-class breakdown (digit / operator / bracket "
                           "/ other)")

    # ---- texts -------------------------------------------------------------------------
    t0 = time.perf_counter()
    if builtin:
        cd = bspec["countdown"]
        seed = int(bspec["seed"])
        n_train, n_prompts = int(tspec["n_train_texts"]), int(bspec["n_prompts"])
        n_held = max(8, int(tspec["heldout_windows"]) * int(tspec["heldout_seq_len"]) // 20 + 8)
        n_freq = int(bspec["n_freq_texts"])
        pairs = countdown_pairs(n_train + n_held + n_prompts + n_freq, seed, cd)
        texts = [p + t for p, t in pairs]
        train_texts = texts[:n_train]
        held_texts = texts[n_train:n_train + n_held]
        prompt_texts = pairs[n_train + n_held:n_train + n_held + n_prompts]
        freq_texts = texts[n_train + n_held + n_prompts:]
        sources = {"all": f"countdown.generate(seed={seed}, {dict(cd)})"}
    else:
        need = [spec["tuned"]["source"], spec["tuned"]["heldout_source"],
                spec["baseline"]["source"], spec["frequency"]["source"]]
        if int(spec["pos"]["n_passages"]):
            need.append(spec["pos"]["source"] or spec["baseline"]["source"])
        loaded = {source_key(x): x for x in need}
        corpus = {k: _text_records(x, cache_dir) for k, x in sorted(loaded.items())}

        def texts_of(source):
            return corpus[source_key(source)]

        train_texts = _shuffled(texts_of(tspec["source"]), int(tspec["seed"]))[
            :int(tspec["n_train_texts"])]
        held_texts = _shuffled(texts_of(tspec["heldout_source"]), int(tspec["seed"]) + 1)
        prompt_texts = texts_of(spec["baseline"]["source"])
        freq_texts = texts_of(spec["frequency"]["source"])[:int(spec["frequency"]["n_texts"])]
        sources = {"tuned_train": tspec["source"], "heldout": tspec["heldout_source"],
                   "baseline": spec["baseline"]["source"],
                   "frequency": spec["frequency"]["source"]}
    summary["sources"] = sources
    timings["data"] = time.perf_counter() - t0

    # ---- tuned lens + held-out KL -----------------------------------------------------
    if "tuned" not in spec["lenses"]:
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
        t0 = time.perf_counter()
        lens, history = train_tuned_lens(
            model, tokenizer, train_texts, steps=int(tspec["steps"]),
            tokens_per_step=int(tspec["tokens_per_step"]), lr=float(tspec["lr"]),
            momentum=float(tspec["momentum"]), weight_decay=float(tspec["weight_decay"]),
            grad_clip=None if tspec["grad_clip"] is None else float(tspec["grad_clip"]),
            warmup_steps=int(tspec["warmup_steps"]), seq_len=int(tspec["seq_len"]),
            alignment=tspec["alignment"], seed=int(tspec["seed"]), progress=progress)
        history.insert(0, "model", model_name)
        tables["lens_history"] = history
        timings["tuned_lens_train"] = time.perf_counter() - t0
        summary["tuned_lens"] = {
            "alignment": lens.alignment, "steps": int(tspec["steps"]),
            "tokens_per_step": int(history["tokens"].iloc[0]),
            "tokens_total": int(history["tokens"].sum()),
            "loss_first": float(history["loss"].iloc[0]),
            "loss_last": float(history["loss"].iloc[-1]),
            "seconds": timings["tuned_lens_train"]}
    t0 = time.perf_counter()
    held = pack_texts(tokenizer, held_texts, int(tspec["heldout_seq_len"]))[
        :int(tspec["heldout_windows"])]
    lenses: dict[str, TunedLens | None] = {}
    for name in spec["lenses"]:
        lenses[name] = lens if name == "tuned" else None
    kl_rows = []
    kl_lists: dict[str, list[float]] = {}
    for name, lz in lenses.items():
        kl = per_layer_kl(model, lz, held, batch_size=max(1, bs // 4))
        kl_lists[name] = [float(x) for x in kl]
        kl_rows += [{"lens": name, "layer": i, "kl": float(v), "n_tokens": int(held.numel())}
                    for i, v in enumerate(kl)]
    tables["kl"] = pd.DataFrame(kl_rows)
    summary["kl"] = {"per_layer": kl_lists, "n_tokens": int(held.numel()),
                     "source": sources.get("heldout", sources.get("all"))}
    if "tuned" in kl_lists and "logit" in kl_lists:
        worse = [i for i in range(L) if not kl_lists["tuned"][i] < kl_lists["logit"][i]]
        summary["kl"]["tuned_beats_logit_below_top"] = not worse
        summary["kl"]["layers_tuned_not_better"] = worse
        summary["kl"]["mean_below_top"] = {k: float(np.mean(v[:L])) for k, v in kl_lists.items()}
    timings["heldout_kl"] = time.perf_counter() - t0

    # ---- frequency ---------------------------------------------------------------------
    t0 = time.perf_counter()
    counts, freq_rank = frequency_ranks(tokenizer, freq_texts,
                                        vocab_size=max(vocab, len(tokenizer)))
    tables["frequency"] = pd.DataFrame({
        "token": np.arange(len(counts)), "count": counts, "freq_rank": freq_rank,
        "bucket": np.asarray(BUCKETS, dtype=object)[bucket_index(np.arange(len(counts)),
                                                                 freq_rank)]})
    summary["frequency"] = {"n_texts": len(freq_texts), "n_tokens": int(counts.sum()),
                            "n_distinct": int((counts > 0).sum())}
    timings["frequency"] = time.perf_counter() - t0

    # ---- BASELINE ----------------------------------------------------------------------
    t0 = time.perf_counter()
    if builtin:
        recs = builtin_cut_prompts(tokenizer, prompt_texts, int(bspec["n_prompts"]),
                                   seed=int(bspec["seed"]))
        prompts: list = [r["input_ids"] for r in recs]
    else:
        b = spec["baseline"]
        texts_cut = [_truncate_words(t, b["max_words"]) for t in prompt_texts]
        recs = cut_passages(texts_cut, int(b["n_prompts"]), seed=int(b["seed"]),
                            min_words=int(b["min_words"]))
        prompts = [r["prompt"] for r in recs]
    if not recs:
        raise ValueError("depth: no BASELINE prompts could be built")
    preds = multi_lens_predictions(model, tokenizer, prompts, lenses, batch_size=bs,
                                   progress=progress, desc="baseline")
    first = next(iter(preds.values()))
    final = first["final"]
    n_tok = [len(p) if not isinstance(p, str) else len(tokenizer(p).input_ids) for p in prompts]
    true_next = np.array([r.get("true_next", -1) for r in recs], dtype=np.int64)
    tables["baseline_prompts"] = pd.DataFrame({
        "prompt": np.arange(len(recs)), "id": [r["id"] for r in recs],
        "text": [tokenizer.decode(p) if not isinstance(p, str) else p for p in prompts],
        "n_tokens": n_tok, "target": first["targets"],
        "target_text": [tokenizer.decode([int(t)]) for t in first["targets"]],
        "final": final,
        "final_bucket": np.asarray(BUCKETS, dtype=object)[bucket_index(final, freq_rank)],
        "next_text": [tokenizer.decode([int(r["true_next"])]) if builtin else r["next_word"]
                      for r in recs],
        "true_next": true_next,
        "correct": (final == true_next).astype(float) if builtin else np.nan})
    tables["baseline"] = baseline_long(preds, freq_rank)
    k_max = float(spec["decision_depth"]["k_max"])
    ks = np.unique(np.concatenate([log_spaced_ks(int(spec["decision_depth"]["n_ks"]), 1.0,
                                                 k_max),
                                   [k for k in KEY_KS if k <= k_max]]))
    tables["decision_depth"] = pd.concat(
        [decision_depth_curve(r["ranks"], ks).assign(lens=name) for name, r in preds.items()],
        ignore_index=True)
    tables["bucket_mix"] = pd.concat(
        [bucket_mix(r["top1"], r["final"], freq_rank).assign(lens=name)
         for name, r in preds.items()], ignore_index=True)
    tables["flip_rates"] = pd.concat(
        [flip_rates(r["top1"], r["final"], freq_rank).assign(lens=name)
         for name, r in preds.items()], ignore_index=True)
    for key in ("decision_depth", "bucket_mix", "flip_rates"):
        df = tables[key]
        tables[key] = df[["lens", *[c for c in df.columns if c != "lens"]]]
    dd = tables["decision_depth"]
    depth_keys = {}
    for name in preds:
        d = dd[dd.lens == name]
        entry = {}
        for variant in ("first", "stays"):
            v = d[d.variant == variant]
            for k in KEY_KS:
                row = v[np.isclose(v["k"], k)]
                if len(row):
                    entry[f"{variant}_k{k}"] = float(row.mean_layer.iloc[0])
        depth_keys[name] = entry
    mix = tables["bucket_mix"]
    summary["baseline"] = {
        "n_prompts": len(recs), "mean_prompt_tokens": float(np.mean(n_tok)),
        "source": sources.get("baseline", sources.get("all")),
        "mean_earliest_layer": depth_keys,
        "final_bucket_share": {bk: float(np.mean(tables["baseline_prompts"].final_bucket
                                                 == bk)) for bk in BUCKETS},
        "bucket_share_per_layer": {
            name: {bk: mix[(mix.lens == name) & (mix.bucket == bk)].sort_values("layer")[
                "share"].tolist() for bk in BUCKETS} for name in preds},
        "flip_rate_per_layer": {
            name: {bk: tables["flip_rates"][(tables["flip_rates"].lens == name)
                                            & (tables["flip_rates"].bucket == bk)]
                   .sort_values("layer")["flip_rate"].tolist() for bk in BUCKETS}
            for name in preds},
    }
    if builtin:
        summary["baseline"]["accuracy_next_token"] = float(np.mean(final == true_next))
    timings["baseline"] = time.perf_counter() - t0

    # ---- case studies ------------------------------------------------------------------
    if builtin:
        t0 = time.perf_counter()
        classes = [token_class(tokenizer.decode([int(t)])) for t in true_next]
        rows = []
        for name, r in preds.items():
            e1 = earliest_layer(r["ranks"], 1).numpy()
            e1s = earliest_layer(r["ranks"], 1, stays=True).numpy()
            rows.append(pd.DataFrame({"lens": name, "prompt": np.arange(len(recs)),
                                      "token_class": classes, "true_next": true_next,
                                      "correct": final == true_next,
                                      "earliest_k1": e1, "earliest_k1_stays": e1s}))
        tables["token_classes"] = pd.concat(rows, ignore_index=True)
        tables["token_class_summary"] = earliest_summary(tables["token_classes"],
                                                         "token_class", num_layers=L)
        summary["token_classes"] = {
            "text": BUILTIN_TEXT_KIND, "classes": list(TOKEN_CLASSES),
            "definition": "class of the true next token: digit 0-9; operator + - * / =; "
                          "bracket ( ); other (letters, space, newline, tags, EOS)",
            "mean_earliest_layer": {
                name: {str(r.token_class): r.mean_layer for r in
                       tables["token_class_summary"].itertuples()
                       if r.lens == name and r.variant == "first"} for name in preds},
            "n_correct": {str(r.token_class): int(r.n_correct) for r in
                          tables["token_class_summary"].itertuples()
                          if r.lens == summary["primary_lens"] and r.variant == "first"}}
        summary["facts"] = summary["mcq"] = f"not run: {BUILTIN_TEXT_KIND}"
        timings["token_classes"] = time.perf_counter() - t0
    else:
        timings["facts"] = _run_facts(model, tokenizer, spec, lenses, tables, summary,
                                      cache_dir=cache_dir, num_layers=L, progress=progress)
        timings["mcq"] = _run_mcq(model, tokenizer, spec, lenses, tables, summary,
                                  cache_dir=cache_dir, num_layers=L, progress=progress)
        if int(spec["pos"]["n_passages"]):
            src = spec["pos"]["source"] or spec["baseline"]["source"]
            timings["pos"] = _run_pos(model, tokenizer, spec, lenses, tables, summary,
                                      texts=texts_of(src), source=src, ks=ks, num_layers=L,
                                      progress=progress)
        else:
            summary["pos"] = "POS case study not run: pos.n_passages is 0"
    if builtin:
        summary["pos"] = (f"POS case study not run on {BUILTIN_TEXT_KIND} (no natural text "
                          "for spaCy to tag): token-class breakdown instead")

    cl = spec["claims"]
    summary["claims"] = compute_claims(tables, lenses=list(lenses), num_layers=L,
                                       builtin=builtin, early_frac=float(cl["early_frac"]),
                                       min_n=int(cl["min_n"]))
    timings["total"] = time.perf_counter() - t_start
    summary["timings_s"] = timings
    for df in tables.values():
        if "model" not in df.columns:
            df.insert(0, "model", model_name)
    return tables, _clean(summary), lens


def _run_facts(model, tokenizer, spec, lenses, tables, summary, *, cache_dir, num_layers,
               progress) -> float:
    from pipeline.data import load_source

    t0 = time.perf_counter()
    fs = spec["facts"]
    facts = load_source("facts", cache_dir=cache_dir, split=fs["relations"])
    facts = _shuffled(facts, int(fs["seed"]))
    recs: list[dict[str, Any]] = []
    relation: dict[str, str] = {}
    n_kept = 0
    for fact in facts:
        if n_kept >= int(fs["n_facts"]):
            break
        r = teacher_forced_fact_prompts(tokenizer, [fact], int(fs["max_answer_tokens"]))
        if not r or r[0]["n_answer_tokens"] < int(fs["min_answer_tokens"]):
            continue
        for x in r:
            x["fact_id"] = str(fact["id"])
            x["id"] = f"{fact['id']}#{x['answer_token']}"
        relation[str(fact["id"])] = fact.get("relation", "")
        recs += r
        n_kept += 1
    if not recs:
        summary["facts"] = "no facts tokenised cleanly"
        return time.perf_counter() - t0
    preds = multi_lens_predictions(model, tokenizer, [r["input_ids"] for r in recs], lenses,
                                   targets=[r["target"] for r in recs],
                                   batch_size=int(spec["batch_size"]) * 2,
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
            "earliest_k1": earliest_layer(p["ranks"], 1).numpy(),
            "earliest_k1_stays": earliest_layer(p["ranks"], 1, stays=True).numpy()}))
    tables["facts"] = pd.concat(rows, ignore_index=True)
    tables["facts_summary"] = earliest_summary(tables["facts"], "answer_token",
                                               num_layers=num_layers)
    fsum = tables["facts_summary"]
    first = fsum[fsum.variant == "first"]
    summary["facts"] = {
        "n_facts": n_kept, "n_prompts": len(recs),
        "n_correct": {int(r.answer_token): int(r.n_correct)
                      for r in first[first.lens == next(iter(preds))].itertuples()},
        "n_total": {int(r.answer_token): int(r.n_total)
                    for r in first[first.lens == next(iter(preds))].itertuples()},
        "mean_earliest_layer": {name: {int(r.answer_token): r.mean_layer
                                       for r in first[first.lens == name].itertuples()}
                                for name in preds},
        "selection": f"facts with ≥ {fs['min_answer_tokens']} answer tokens; correct-only "
                     "(greedy token = teacher-forced target) in the earliest-layer means"}
    return time.perf_counter() - t0


def _run_mcq(model, tokenizer, spec, lenses, tables, summary, *, cache_dir, num_layers,
             progress) -> float:
    from pipeline.data import load_source

    t0 = time.perf_counter()
    ms = spec["mcq"]
    items = load_source("mmlu", cache_dir=cache_dir)
    if ms["max_chars"]:
        items = [it for it in items if len(it["question"]) + sum(map(len, it["choices"]))
                 <= int(ms["max_chars"])]
    prompts = mcq_prompts(items, int(ms["shots"]), seed=int(ms["seed"]),
                          limit=int(ms["n_problems"]))
    letters = ("A", "B", "C", "D")
    opt_ids = option_token_ids(tokenizer, letters)
    preds = multi_lens_predictions(model, tokenizer, [p["prompt"] for p in prompts], lenses,
                                   option_ids=opt_ids,
                                   batch_size=max(1, int(spec["batch_size"]) // 2),
                                   progress=progress, desc="mcq")
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
    tables["mcq"] = pd.concat(rows, ignore_index=True)
    tables["mcq_layers"] = mcq_layer_table(preds)
    n_tok = [len(tokenizer(p["prompt"]).input_ids) for p in prompts]
    summary["mcq"] = {"n_problems": len(prompts), "shots": int(ms["shots"]),
                      "option_token_ids": list(map(int, opt_ids)),
                      "mean_prompt_tokens": float(np.mean(n_tok)) if n_tok else math.nan,
                      "accuracy": float(tables["mcq"][tables["mcq"].lens == next(iter(preds))]
                                        ["correct"].mean()) if prompts else math.nan,
                      "selection": f"MMLU items with question+choices ≤ {ms['max_chars']} "
                                   "characters; balanced-letter demonstrations"}
    return time.perf_counter() - t0


def pos_prompt_set(tokenizer, texts: Sequence[str], pos_spec: Mapping[str, Any], *,
                   seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The POS prompt set (module docstring, part 5) from the passages ``texts``: the first
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
        if len(_WORD.findall(texts[i])) > min_words:
            chosen.append((i, _truncate_words(texts[i], pos_spec["max_words"])))
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


def _run_pos(model, tokenizer, spec, lenses, tables, summary, *, texts, source, ks,
             num_layers, progress) -> float:
    t0 = time.perf_counter()
    ps = dict(spec["pos"])
    seed = int(spec["baseline"]["seed"] if ps["seed"] is None else ps["seed"])
    recs, counts = pos_prompt_set(tokenizer, texts, ps, seed=seed)
    t_prompts = time.perf_counter() - t0
    tags = list(ps["function_tags"]) + list(ps["content_tags"])
    if not recs:
        summary["pos"] = "POS case study: no prompt could be built"
        return time.perf_counter() - t0
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
                                   correct_only=True, batch_size=int(spec["batch_size"]),
                                   progress=progress, desc="pos")
    rows, curves = [], []
    upos = np.asarray([r["upos"] for r in recs], dtype=object)
    for name, p in preds.items():
        ok = p["evaluated"]  # = correct: greedy token == the word's first token
        e1 = np.where(ok, earliest_layer(p["ranks"], 1).numpy(), -1)
        e1s = np.where(ok, earliest_layer(p["ranks"], 1, stays=True).numpy(), -1)
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
            curves.append(decision_depth_curve(p["ranks"][m], ks).assign(
                lens=name, upos=tag, word_class="function" if tag in ps["function_tags"]
                else "content"))
    tables["pos"] = pd.concat(rows, ignore_index=True)
    summ = earliest_summary(tables["pos"], "upos", num_layers=num_layers)
    summ.insert(3, "word_class", np.where(summ.upos.isin(ps["function_tags"]), "function",
                                          "content"))
    tables["pos_summary"] = summ
    dd = pd.concat(curves, ignore_index=True)
    tables["pos_decision_depth"] = dd[["lens", "upos", "word_class",
                                       *[c for c in dd.columns
                                         if c not in ("lens", "upos", "word_class")]]]
    first = summ[summ.variant == "first"]
    lens0 = next(iter(preds))
    per = {name: first[first.lens == name].set_index("upos") for name in preds}
    summary["pos"] = {
        "source": source, "tagger": spacy_model_info(ps["spacy_model"]),
        "function_tags": list(ps["function_tags"]), "content_tags": list(ps["content_tags"]),
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
                      f"{seed}) truncated to {ps['max_words']} words; per tag the first "
                      f"word-initial token (PUNCT may be attached) with ≥ {ps['min_words']} "
                      "words before it; kept when the passage's encoding continues the "
                      "prompt's with the word's first token; correct-only (greedy token = "
                      "that token) in the earliest-layer statistics"),
        "seconds_prompts": t_prompts,
    }
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- figures
def _lens_panels(df: pd.DataFrame, width: float = 5.0, height: float = 3.4):
    """One panel per lens of ``df`` (in order of appearance): ``(fig, axes, [(ax, lens,
    rows of that lens)])``."""
    lenses = list(dict.fromkeys(df.lens))
    fig, axes = plt.subplots(1, len(lenses), figsize=(width * len(lenses), height),
                             squeeze=False)
    axes = list(axes[0])
    return fig, axes, [(ax, name, df[df.lens == name])
                       for ax, name in zip(axes, lenses, strict=True)]


def _finish_panels(fig, axes, title: str, **legend):
    axes[-1].legend(fontsize=7, **legend)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def kl_figure(kl: pd.DataFrame, model_name: str):
    """Per-layer KL(p_final ‖ p_lens) on held-out text, logit vs tuned lens (log y;
    zeros — the logit lens at h[L] — are not drawn)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, d in kl.groupby("lens"):
        d = d.sort_values("layer")
        d = d[d.kl > 0]
        ax.plot(d.layer, d.kl, marker="o", ms=3, color=LENS_COLORS.get(name), label=f"{name} lens")
    ax.set_yscale("log")
    ax.set(xlabel="layer l (h[l])", ylabel="KL(p_final ‖ p_lens) (nats)",
           title=f"{model_name}: held-out KL per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def decision_depth_figure(dd: pd.DataFrame, model_name: str):
    """Mean earliest layer with rank ≤ k vs k (log x), per lens; solid = first hit,
    dashed = stays."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for (name, variant), d in dd.groupby(["lens", "variant"]):
        ax.plot(d.k, d.mean_layer, color=LENS_COLORS.get(name),
                ls="-" if variant == "first" else "--", label=f"{name}, {variant}")
    ax.set_xscale("log")
    ax.set(xlabel="rank threshold k", ylabel="mean earliest layer",
           title=f"{model_name}: decision depth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bucket_mix_figure(mix: pd.DataFrame, model_name: str, text_kind: str = ""):
    """Share of top-1 guesses per frequency bucket per layer (stacked; layer L = output)."""
    fig, axes, panels = _lens_panels(mix)
    for ax, name, d in panels:
        d = d.pivot(index="layer", columns="bucket", values="share")
        d = d[[b for b in BUCKETS if b in d.columns]]
        ax.stackplot(d.index, *[d[b] for b in d.columns], labels=list(d.columns),
                     colors=[BUCKET_COLORS[b] for b in d.columns], alpha=0.85)
        ax.set(xlabel="layer (last = model output)", ylabel="share of top-1 guesses",
               ylim=(0, 1), xlim=(d.index.min(), d.index.max()), title=f"{name} lens")
    return _finish_panels(fig, axes, f"{model_name}: frequency bucket of the top-1 guess"
                          + (f" ({text_kind})" if text_kind else ""), loc="lower right")


def flip_rate_figure(flips: pd.DataFrame, model_name: str):
    """Per bucket and layer: share of the layer's top-1 guesses in the bucket that differ
    from the final output (conditional flip rate)."""
    fig, axes, panels = _lens_panels(flips)
    for ax, name, d in panels:
        for b in BUCKETS:
            x = d[d.bucket == b].sort_values("layer")
            ax.plot(x.layer, x.flip_rate, marker="o", ms=2.5, color=BUCKET_COLORS[b], label=b)
        ax.axhline(0.7, color="0.5", lw=0.6, ls=":")
        ax.set(xlabel="layer", ylabel="flip rate (n_flip / n_in_bucket)", ylim=(-0.02, 1.02),
               title=f"{name} lens")
    return _finish_panels(fig, axes, f"{model_name}: refinement (flip) rate per frequency "
                                     "bucket")


def _grouped_bars(summ: pd.DataFrame, group: str, order: Sequence, model_name: str,
                  title: str, xlabel: str):
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    s = summ[summ.variant == "first"]
    lenses = list(dict.fromkeys(s.lens))
    width = 0.8 / max(1, len(lenses))
    x = np.arange(len(order))
    for i, name in enumerate(lenses):
        d = s[s.lens == name].set_index(group).reindex(order)
        mean = d.mean_layer.to_numpy(dtype=float)
        lo = np.nan_to_num(mean - d.ci95_lo.to_numpy(dtype=float))
        hi = np.nan_to_num(d.ci95_hi.to_numpy(dtype=float) - mean)
        ax.bar(x + (i - (len(lenses) - 1) / 2) * width, np.nan_to_num(mean), width,
               yerr=[lo, hi], capsize=3, color=LENS_COLORS.get(name), label=f"{name} lens")
        for xi, n in zip(x, d.n_used.fillna(0).astype(int), strict=True):
            ax.annotate(f"n={n}", (xi + (i - (len(lenses) - 1) / 2) * width, 0),
                        ha="center", va="bottom", fontsize=6, color="white")
    ax.set_xticks(x, [str(o) for o in order])
    ax.set(xlabel=xlabel, ylabel="mean earliest layer (rank 1), 95 % CI",
           title=f"{model_name}: {title}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def facts_figure(summ: pd.DataFrame, model_name: str):
    """Mean earliest layer (k = 1, correct-only) per answer-token position, 95 % CIs."""
    order = sorted(summ.answer_token.unique())
    return _grouped_bars(summ, "answer_token", order, model_name,
                         "fact recall, earliest layer per answer token",
                         "answer-token position (teacher-forced)")


def token_class_figure(summ: pd.DataFrame, model_name: str):
    """Builtin-task text: mean earliest layer (k = 1, correct-only) per token class."""
    return _grouped_bars(summ, "token_class", list(TOKEN_CLASSES), model_name,
                         f"earliest layer per token class\n({BUILTIN_TEXT_KIND})",
                         "class of the true next token")


def pos_earliest_figure(summ: pd.DataFrame, model_name: str,
                        order: Sequence[str] | None = None):
    """Mean earliest layer (k = 1, correct-only) per UPOS tag, 95 % CIs, in ``order``
    (default: function tags first)."""
    if order is None:
        s = summ.sort_values("word_class", ascending=False, kind="stable")
        order = list(dict.fromkeys(s.upos))
    return _grouped_bars(summ, "upos", list(order), model_name,
                         "part of speech, earliest layer (rank 1)",
                         "UPOS of the target word (function | content)")


def pos_decision_depth_figure(dd: pd.DataFrame, model_name: str):
    """Per-POS decision depth over the correct prompts of each tag: mean earliest layer with
    rank ≤ k vs k (log x, first-hit variant); one panel per lens; function tags solid
    (warm colours), content tags dashed (cool colours)."""
    warm, cool = plt.get_cmap("autumn"), plt.get_cmap("winter")
    fig, axes, panels = _lens_panels(dd[dd.variant == "first"])
    for ax, name, d in panels:
        tags = list(dict.fromkeys(d.upos))
        func = [t for t in tags if (d[d.upos == t].word_class == "function").all()]
        cont = [t for t in tags if t not in func]
        for group, cmap, ls in ((func, warm, "-"), (cont, cool, "--")):
            for i, tag in enumerate(group):
                x = d[d.upos == tag]
                ax.plot(x.k, x.mean_layer, ls=ls, color=cmap(0.8 * i / max(1, len(group) - 1)),
                        label=f"{tag} (n={int(x.n_prompts.iloc[0])})")
        ax.set_xscale("log")
        ax.set(xlabel="rank threshold k", ylabel="mean earliest layer (rank ≤ k)",
               title=f"{name} lens")
    return _finish_panels(fig, axes, f"{model_name}: decision depth per part of speech "
                                     "(correct-only)")


def mcq_figure(layers: pd.DataFrame, model_name: str):
    """Per layer: fraction of MMLU prompts where the 4 options dominate the vocabulary,
    where the chosen option is settled among them, and where it is the top-1."""
    fig, axes, panels = _lens_panels(layers)
    for ax, name, d in panels:
        d = d.sort_values("layer")
        ax.plot(d.layer, d.frac_dominate, marker="o", ms=2.5, label="options dominate")
        ax.plot(d.layer, d.frac_choice_settled, marker="o", ms=2.5, label="choice settled")
        ax.plot(d.layer, d.frac_choice_top1, marker="o", ms=2.5, label="choice is top-1")
        n_layers = int(d.layer.max())
        ax.axvline(n_layers / 2, color="0.5", lw=0.6, ls=":")
        ax.set(xlabel="layer", ylabel="fraction of prompts", ylim=(-0.02, 1.02),
               title=f"{name} lens")
    return _finish_panels(fig, axes, f"{model_name}: multiple choice (MMLU)")


def figures(tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any],
            model_name: str) -> dict[str, Any]:
    """All figures of the available tables: ``{file name: Figure}`` (the caller saves and
    closes them)."""
    text_kind = summary.get("text_kind", "")
    out: dict[str, Any] = {}
    if "kl" in tables:
        out["kl_per_layer.png"] = kl_figure(tables["kl"], model_name)
    if "decision_depth" in tables:
        out["decision_depth.png"] = decision_depth_figure(tables["decision_depth"], model_name)
    if "bucket_mix" in tables:
        out["bucket_mix.png"] = bucket_mix_figure(tables["bucket_mix"], model_name, text_kind)
    if "flip_rates" in tables:
        out["flip_rates.png"] = flip_rate_figure(tables["flip_rates"], model_name)
    if "facts_summary" in tables and len(tables["facts_summary"]):
        out["facts_earliest_layer.png"] = facts_figure(tables["facts_summary"], model_name)
    if "mcq_layers" in tables and len(tables["mcq_layers"]):
        out["mcq_layers.png"] = mcq_figure(tables["mcq_layers"], model_name)
    if "pos_summary" in tables and len(tables["pos_summary"]):
        pos = summary.get("pos")
        order = (list(pos["function_tags"]) + list(pos["content_tags"])
                 if isinstance(pos, Mapping) else None)
        out["pos_earliest_layer.png"] = pos_earliest_figure(tables["pos_summary"], model_name,
                                                            order)
    if "pos_decision_depth" in tables and len(tables["pos_decision_depth"]):
        out["pos_decision_depth.png"] = pos_decision_depth_figure(tables["pos_decision_depth"],
                                                                  model_name)
    if "token_class_summary" in tables and len(tables["token_class_summary"]):
        out["token_classes.png"] = token_class_figure(tables["token_class_summary"],
                                                      model_name)
    return out
