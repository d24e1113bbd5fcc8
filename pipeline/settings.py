"""The typed configuration tree (docs/architecture.md §5): one frozen dataclass per section
of ``workflow/schemas/config.schema.yaml``, built from a validated config.

The schema is where every default is written: validation fills them, so these classes
carry none, except ``None`` for a key that may be absent. ``tests/test_config_tree.py``
checks that the fields of every class are the properties of its schema node, so the two
cannot drift. ``Section.of`` also takes a partial mapping, filling the defaults from the
class's schema node (what a stage called outside the DAG passes). ``to_dict`` is the
inverse: the ``--spec`` JSON a rule passes is a section's serialisation.

Imports nothing from the package but :mod:`pipeline.config` (the bottom of the import
graph), and no torch.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, ClassVar, Literal

from pipeline.config import ConfigError, load_schema, validate_schema


class Section:
    """A typed config section: built with :meth:`of`, serialised with :meth:`to_dict`."""

    #: JSON pointer of this class's node in the schema ("" = a section with no node).
    SCHEMA: ClassVar[str] = ""

    @classmethod
    def of(cls, data: Mapping[str, Any] | Section) -> Any:
        """``data`` as this section: itself if it already is one; a mapping is completed
        with its schema node's defaults and checked against it (one-line ConfigError)."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"config error: {cls.__name__} needs a mapping, got "
                              f"{type(data).__name__}")
        values = _complete(cls.SCHEMA, copy.deepcopy(dict(data)))
        hints = _hints(cls)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        if unknown := sorted(set(values) - {f.name for f in fields}):
            raise ConfigError(f"config error: {cls.__name__} has no key {unknown[0]!r}")
        missing = [f.name for f in fields if f.name not in values
                   and f.default is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"config error: {cls.__name__} needs {missing[0]!r}")
        return cls(**{k: _build(hints[k], v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """The mapping this section was built from: keys that were absent (``None`` where
        the class defaults to ``None``) are left out, so the JSON of an unchanged config
        is unchanged."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@cache
def _schema() -> dict[str, Any]:
    return load_schema()


def _complete(pointer: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` validated against the schema node at ``pointer``, defaults filled."""
    schema = _schema()
    node: Any = schema
    for part in pointer.removeprefix("#").strip("/").split("/") if pointer != "#" else ():
        node = node[part]
    validate_schema(values, {**node, "$defs": schema["$defs"]})
    return values


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(tp: Any, value: Any) -> Any:
    """``value`` as type ``tp``: sections built, containers of sections built member-wise,
    anything else kept (validation already checked it)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, Section):
        return tp.of(value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        sections = [a for a in args if isinstance(a, type) and issubclass(a, Section)]
        if sections and isinstance(value, Mapping | Section):
            return _pick(sections, value).of(value)
        return value
    if origin is dict and isinstance(value, Mapping):
        return {k: _build(args[1], v) for k, v in value.items()}
    if origin is list and isinstance(value, list | tuple):
        return [_build(args[0], v) for v in value]
    return value


def _pick(sections: list[type[Section]], value: Mapping[str, Any] | Section) -> type[Section]:
    """The one of several sections a value is: by its ``source`` (the models)."""
    if isinstance(value, Section):
        return type(value)
    for cls in sections:
        if getattr(cls, "SOURCE", None) == value.get("source"):
            return cls
    raise ConfigError(f"config error: unknown source {value.get('source')!r}")


# ---- sections, in the schema's order -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Mlflow(Section):
    SCHEMA = "#/properties/mlflow"
    tracking_uri: str | None
    experiment_name: str


@dataclasses.dataclass(frozen=True)
class Countdown(Section):
    SCHEMA = "#/properties/tasks/properties/countdown"
    num_numbers: int
    min_number: int
    max_number: int
    min_target: int
    max_target: int
    splits: dict[str, int]
    seed: int

    def generator(self) -> dict[str, int]:
        """The problem generator's settings (:func:`pipeline.tasks.countdown.make_splits`
        keywords besides the splits and the seed)."""
        return {k: getattr(self, k) for k in ("num_numbers", "min_number", "max_number",
                                              "min_target", "max_target")}


@dataclasses.dataclass(frozen=True)
class Tasks(Section):
    SCHEMA = "#/properties/tasks"
    countdown: Countdown


@dataclasses.dataclass(frozen=True)
class Sft(Section):
    SCHEMA = "#/$defs/sft"
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float


@dataclasses.dataclass(frozen=True)
class BuiltinModel(Section):
    SCHEMA = "#/$defs/builtin_model"
    SOURCE: ClassVar[str] = "builtin"
    source: Literal["builtin"]
    claims_family: str | None
    arch: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None
    max_position_embeddings: int
    rope_theta: float
    tie_word_embeddings: bool
    seed: int
    sft: Sft


@dataclasses.dataclass(frozen=True)
class HubModel(Section):
    SCHEMA = "#/$defs/hub_model"
    SOURCE: ClassVar[str] = "hub"
    source: Literal["hub"]
    claims_family: str | None
    repo_id: str
    revision: str
    cache_dir: str | None
    trust_remote_code: bool
    dtype: str


@dataclasses.dataclass(frozen=True)
class GgufModel(Section):
    SCHEMA = "#/$defs/gguf_model"
    SOURCE: ClassVar[str] = "gguf"
    source: Literal["gguf"]
    claims_family: str | None
    dtype: str
    path: str | None = None  # a local file, or package + file + sha256 (a registry wheel)
    package: str | None = None
    file: str | None = None
    sha256: str | None = None


Model = BuiltinModel | HubModel | GgufModel


def model_of(entry: Mapping[str, Any] | Section) -> Model:
    """A ``models.<name>`` entry as its typed section (by ``source``), defaults filled."""
    return _build(Model, entry)


@dataclasses.dataclass(frozen=True)
class Benchmark(Section):
    SCHEMA = "#/$defs/benchmark"
    task: str
    models: Literal["all"] | list[str]
    dataset: str | None
    path: str | None
    split: str
    n_problems: int | None
    data_seed: int
    n_samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    sample_dtype: str | None
    k: list[int]
    batch_size: int
    shots: int
    verify_mode: str
    prompt_style: str


@dataclasses.dataclass(frozen=True)
class Evaluation(Section):
    SCHEMA = "#/properties/evaluation"
    benchmarks: dict[str, Benchmark]


@dataclasses.dataclass(frozen=True)
class Rhythm(Section):
    """The attention-rhythm knobs shared by ``analysis.attention`` and ``rl.trainer.rhythm``
    (``$defs/rhythm``); unset keys are None here and take pipeline.attention.rhythm's
    defaults (which equal analysis.attention's: tests/test_config_tree.py)."""

    SCHEMA = "#/$defs/rhythm"
    layers: Literal["all"] | list[int] | None = None
    window: int | None = None
    h_lo: int | None = None
    h_hi: int | None = None
    head_frac: float | None = None
    group_scope: str | None = None
    k: int | None = None
    fai_empty: float | None = None
    tau_waad: float | None = None
    tau_delta: float | None = None


@dataclasses.dataclass(frozen=True)
class Trainer(Section):
    """``rl.trainer``: the keys set here (the rest are :class:`pipeline.rl.RLConfig`'s
    defaults, written there once); ``to_dict`` gives what RLConfig.from_dict takes."""

    SCHEMA = "#/properties/rl/properties/trainer"
    steps: int | None = None
    prompts_per_step: int | None = None
    group_size: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    gen_batch_size: int | None = None
    sample_dtype: str | None = None
    compute_dtype: str | None = None
    activation_checkpointing: bool | None = None
    lr: float | None = None
    weight_decay: float | None = None
    betas: list[float] | None = None
    grad_clip: float | None = None
    updates_per_batch: int | None = None
    micro_batch_size: int | None = None
    clip_low: float | None = None
    clip_high: float | None = None
    s_inter: int | None = None
    ipa_final_norm: bool | None = None
    gamma_amp: float | None = None
    alpha: float | None = None
    credit_shift: int | None = None
    top_frac: float | None = None
    rhythm: Rhythm | None = None
    rpp_token_weighted: bool | None = None
    rpp_group_baseline: bool | None = None
    save_every: int | None = None
    diag_every: int | None = None
    chunk_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class RL(Section):
    SCHEMA = "#/properties/rl"
    models: list[str]
    methods: list[str]
    task: str
    split: str
    dataset: str | None
    path: str | None
    n_problems: int | None
    data_seed: int
    prompt_style: str
    bupo_layer: int | Literal["boundary"]
    evaluate: list[str]
    distributed: str
    processes: int
    trainer: Trainer

    @property
    def enabled(self) -> bool:
        """Whether the config trains anything (models and methods both set)."""
        return bool(self.models and self.methods)

    def items_spec(self) -> dict[str, Any]:
        """What :func:`pipeline.evaluation.items.load_items` reads: the data keys."""
        return {"task": self.task, "dataset": self.dataset, "path": self.path,
                "n_problems": self.n_problems, "data_seed": self.data_seed}


@dataclasses.dataclass(frozen=True)
class RuleResources(Section):
    SCHEMA = "#/$defs/rule_resources"
    mem_mb: int | None = None
    runtime: int | None = None
    threads: int | None = None
    gpu: int | None = None


@dataclasses.dataclass(frozen=True)
class Resources(Section):
    """``resources``: ``default`` for every rule, a rule's entry overriding it by field."""

    SCHEMA = "#/properties/resources"
    default: RuleResources
    countdown_data: RuleResources | None = None
    provision: RuleResources | None = None
    evaluate: RuleResources | None = None
    responses: RuleResources | None = None
    decomposition: RuleResources | None = None
    decomposition_compare: RuleResources | None = None
    attention: RuleResources | None = None
    depth: RuleResources | None = None
    train: RuleResources | None = None
    evaluate_trained: RuleResources | None = None
    report_summary: RuleResources | None = None
    decomposition_trained: RuleResources | None = None
    attention_trained: RuleResources | None = None
    compare: RuleResources | None = None
    claims: RuleResources | None = None

    def rule(self, name: str) -> RuleResources | None:
        """A rule's own entry (None: it has none)."""
        return getattr(self, name, None)


@dataclasses.dataclass(frozen=True)
class Planner(Section):
    SCHEMA = "#/properties/planner"
    gpu_mem_gb: float | None
    gpus: int | None
    prompt_tokens: int


@dataclasses.dataclass(frozen=True)
class Comparison(Section):
    SCHEMA = "#/properties/comparison"
    baseline: str
    before_after: list[str]


@dataclasses.dataclass(frozen=True)
class Decomposition(Section):
    SCHEMA = "#/properties/analysis/properties/decomposition"
    conventions: list[str]
    batch_size: int
    max_response_tokens: int | None


@dataclasses.dataclass(frozen=True)
class Attention(Section):
    SCHEMA = "#/properties/analysis/properties/attention"
    batch_size: int
    layers: Literal["all"] | list[int] | None
    window: int
    h_lo: int
    h_hi: int
    head_frac: float
    top_frac: float
    group_scope: str
    k: int
    fai_empty: float
    tau_waad: float | None
    tau_delta: float | None


@dataclasses.dataclass(frozen=True)
class Responses(Section):
    SCHEMA = "#/$defs/responses"
    task: str
    dataset: str | None
    path: str | None
    split: str
    n_prompts: int
    data_seed: int
    n_samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int
    prompt_style: str
    sample_dtype: str | None

    def items_spec(self) -> dict[str, Any]:
        """What :func:`pipeline.evaluation.items.load_items` reads: the data keys, with
        ``n_prompts`` as the number of problems."""
        return {"task": self.task, "dataset": self.dataset, "path": self.path,
                "split": self.split, "n_problems": self.n_prompts, "data_seed": self.data_seed}


@dataclasses.dataclass(frozen=True)
class AnalysisResponses(Section):
    SCHEMA = "#/properties/analysis/properties/responses"
    builtin: Responses
    pretrained: Responses


@dataclasses.dataclass(frozen=True)
class Analysis(Section):
    """``analysis``; ``depth`` stays a mapping here: :func:`pipeline.depth.spec.resolve_spec`
    completes and types it (its defaults are the depth stage's own)."""

    SCHEMA = "#/properties/analysis"
    models: Literal["all"] | list[str]
    depth: dict[str, Any]
    decomposition: Decomposition
    attention: Attention
    responses: AnalysisResponses


@dataclasses.dataclass(frozen=True)
class Config(Section):
    """The whole validated config: ``Config.of(validate(config))``."""

    SCHEMA = "#"
    experiment: str
    results_dir: str
    cache_dir: str | None
    seeds: list[int]
    mlflow: Mlflow
    tasks: Tasks
    models: dict[str, Model]
    evaluation: Evaluation
    rl: RL
    resources: Resources
    planner: Planner
    comparison: Comparison
    analysis: Analysis

    def model_names(self, chosen: Literal["all"] | list[str]) -> list[str]:
        """``"all"`` → every model, else the chosen ones (benchmark and analysis models)."""
        return list(self.models) if chosen == "all" else list(chosen)
