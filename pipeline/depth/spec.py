"""The depth stage's settings (docs/methods.md §4): :data:`DEFAULT_SPEC`, :func:`resolve_spec`
(defaults + overrides, validated), the names the stage's outputs carry, and which tables
and figures a spec makes it write (:func:`output_tables`, :func:`output_figures`: what the
DAG declares).

Cheap to import (no torch, transformers or matplotlib): :mod:`pipeline.config` validates
``analysis.depth`` with :func:`resolve_spec`, and ``workflow/rules/depth.smk`` lists the
outputs with it, while Snakemake parses the workflow.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pipeline.config import is_builtin as builtin_model
from pipeline.config import number_from_string
from pipeline.depth.prompts import CONTENT_TAGS, FUNCTION_TAGS, SPACY_MODEL

Source = str | dict[str, Any]  # a registry name, or a pipeline.data.load_source mapping


@dataclass(frozen=True)
class Tuned:
    source: Source = "openwebtext"          # training text
    heldout_source: Source = "wikipedia"    # held-out KL text
    steps: int = 24
    tokens_per_step: int = 64
    seq_len: int = 64
    lr: float = 0.2
    warmup_steps: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    grad_clip: float = 1.0
    alignment: str = "input"
    n_train_texts: int = 200
    heldout_windows: int = 2
    heldout_seq_len: int = 128
    seed: int = 0


@dataclass(frozen=True)
class Baseline:
    source: Source = "wikipedia"
    n_prompts: int = 150
    min_words: int = 16
    max_words: int | None = 48  # None: whole passages
    seed: int = 0


@dataclass(frozen=True)
class Frequency:
    source: Source = "openwebtext"
    n_texts: int = 1000


@dataclass(frozen=True)
class Facts:
    n_facts: int = 120
    max_answer_tokens: int = 3
    min_answer_tokens: int = 2
    relations: list[str] | None = None
    seed: int = 0


@dataclass(frozen=True)
class Mcq:
    shots: int = 4
    n_problems: int = 32
    seed: int = 0
    max_chars: int | None = 300


@dataclass(frozen=True)
class Pos:
    n_passages: int = 150
    source: Source | None = None
    seed: int | None = None
    min_words: int = 8
    max_words: int | None = 48  # None: whole passages
    function_tags: list[str] = field(default_factory=lambda: list(FUNCTION_TAGS))
    content_tags: list[str] = field(default_factory=lambda: list(CONTENT_TAGS))
    spacy_model: str = SPACY_MODEL


@dataclass(frozen=True)
class DecisionDepth:
    n_ks: int = 200
    k_max: float = 10000.0
    # false = the authors' convention (earliest layer over h[1]..h[L])
    include_embedding: bool = False


@dataclass(frozen=True)
class Claims:
    early_frac: float = 0.25
    min_n: int = 5


@dataclass(frozen=True)
class Builtin:
    n_prompts: int = 300
    n_freq_texts: int = 1000
    seed: int = 1
    countdown: dict[str, int] = field(default_factory=lambda: {
        "num_numbers": 3, "min_number": 1, "max_number": 30, "min_target": 1,
        "max_target": 100})


@dataclass(frozen=True)
class DepthSpec:
    """``analysis.depth``, typed: the stage's settings and, here only, their defaults."""

    lenses: list[str] = field(default_factory=lambda: ["logit", "tuned"])
    # None = auto (tokenizer vocabulary < 1000 → the model's own Countdown text)
    builtin_text: bool | None = None
    batch_size: int = 16
    tuned: Tuned = field(default_factory=Tuned)
    baseline: Baseline = field(default_factory=Baseline)
    frequency: Frequency = field(default_factory=Frequency)
    facts: Facts = field(default_factory=Facts)
    mcq: Mcq = field(default_factory=Mcq)
    pos: Pos = field(default_factory=Pos)
    decision_depth: DecisionDepth = field(default_factory=DecisionDepth)
    claims: Claims = field(default_factory=Claims)
    builtin: Builtin = field(default_factory=Builtin)

    @property
    def pos_source(self) -> Source:
        """The POS passages' source: ``pos.source``, else ``baseline.source``."""
        return self.pos.source if self.pos.source is not None else self.baseline.source

    @property
    def pos_seed(self) -> int:
        """The POS passages' seed: ``pos.seed``, else ``baseline.seed``."""
        return self.pos.seed if self.pos.seed is not None else self.baseline.seed


DEFAULT_SPEC: dict[str, Any] = asdict(DepthSpec())
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


def depth_spec(spec: DepthSpec | Mapping[str, Any] | None) -> DepthSpec:
    """``spec`` as the typed :class:`DepthSpec`: a mapping is merged over the defaults and
    checked (:func:`resolve_spec`)."""
    if isinstance(spec, DepthSpec):
        return spec
    full = resolve_spec(spec)
    sections = {f.name: f.type for f in fields(DepthSpec)}
    out = DepthSpec(**{k: _section(globals()[sections[k]], v, k) if sections[k] in _SECTIONS
                       else _number(sections[k], v, k) for k, v in full.items()})
    if len(set(out.lenses)) != len(out.lenses):
        raise ValueError(f"depth spec: lenses {out.lenses} repeat a lens")
    for path in _POSITIVE:
        value = out
        for part in path.split("."):
            value = getattr(value, part)
        if value < 1:
            raise ValueError(f"depth spec: {path} must be >= 1, got {value}")
    return out


#: Sizes that must be at least 1 (the other whole numbers at least 0).
_POSITIVE = ("batch_size", "tuned.tokens_per_step", "tuned.seq_len", "tuned.heldout_windows",
             "tuned.heldout_seq_len", "decision_depth.n_ks", "decision_depth.k_max",
             "mcq.n_problems", "facts.max_answer_tokens", "facts.min_answer_tokens")


_SECTIONS = {"Tuned", "Baseline", "Frequency", "Facts", "Mcq", "Pos", "DecisionDepth",
             "Claims", "Builtin"}


def _section(cls: type, values: Mapping[str, Any], at: str) -> Any:
    types = {f.name: f.type for f in fields(cls)}
    return cls(**{k: _number(types[k], v, f"{at}.{k}") for k, v in values.items()})


def _number(annotation: str, value: Any, at: str) -> Any:
    """``value`` checked against a field typed ``annotation``: a string that spells a
    number, where the field wants an int or a float, as that number (YAML reads ``1e-3``
    as a string; analysis.depth is free-form in the schema); a non-number there, or a
    negative one, is a ValueError naming the key."""
    kinds = {t.strip() for t in annotation.split("|")}
    if not kinds & {"int", "float"} or "str" in kinds or "Source" in kinds:
        return value
    if value is None and "None" in kinds:
        return None
    if isinstance(value, str):
        value = number_from_string(value, integer="float" not in kinds)
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not (whole or ("float" in kinds and isinstance(value, float))):
        kind = "a number" if "float" in kinds else "an integer"
        raise ValueError(f"depth spec: {at} must be {kind}, got {value!r}")
    if value < 0:
        raise ValueError(f"depth spec: {at} must be >= 0, got {value}")
    return value


def is_builtin(tokenizer, spec: DepthSpec | Mapping[str, Any]) -> bool:
    """Builtin-task text path: ``builtin_text`` if set, else vocabulary < 1000."""
    flag = depth_spec(spec).builtin_text
    return bool(flag) if flag is not None else len(tokenizer) < 1000


def expects_builtin_text(spec: DepthSpec | Mapping[str, Any], model: Any) -> bool:
    """The text kind the DAG decides for a model section ``models.<m>`` before any
    tokenizer is loaded (and passes to the stage as ``builtin_text``): ``builtin_text``
    if set, else :func:`pipeline.config.is_builtin` (builtin models; their character
    tokenizers have fewer than 1000 entries, hub and gguf ones more). ``model``: the
    entry as a mapping or its typed section."""
    flag = depth_spec(spec).builtin_text
    return bool(flag) if flag is not None else builtin_model(model)


def output_tables(spec: DepthSpec | Mapping[str, Any], *, builtin: bool) -> list[str]:
    """Names of the tables :func:`pipeline.depth.stage.run_depth` returns for the resolved
    ``spec`` on builtin-task (``builtin``) or natural text, when it trains the tuned lens
    itself (no ``lens`` given). Data can still drop some: the facts tables when no fact
    tokenises cleanly, the POS tables when no POS prompt can be built."""
    s = depth_spec(spec)
    names = ["lens_history"] if "tuned" in s.lenses else []
    names += ["kl", "frequency", "baseline_prompts", "baseline", "decision_depth",
              "bucket_mix", "flip_rates", "exit_curves"]
    if builtin:
        return names + ["token_classes", "token_class_summary"]
    names += ["facts", "facts_summary", "facts_guess", "mcq", "mcq_layers"]
    if s.pos.n_passages:
        names += ["pos", "pos_summary", "pos_decision_depth"]
    return names


def output_figures(spec: DepthSpec | Mapping[str, Any], *, builtin: bool) -> list[str]:
    """File names of the figures :func:`pipeline.depth.figures.figures` draws from those
    tables (same caveats as :func:`output_tables`)."""
    names = ["kl_per_layer.png", "decision_depth.png", "bucket_mix.png", "flip_rates.png",
             "exit_curves.png"]
    if builtin:
        return names + ["token_classes.png"]
    names += ["facts_earliest_layer.png", "mcq_layers.png"]
    if depth_spec(spec).pos.n_passages:
        names += ["pos_earliest_layer.png", "pos_decision_depth.png"]
    return names
