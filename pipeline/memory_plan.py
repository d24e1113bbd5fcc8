"""GPU memory planner: the peak memory per GPU of every GPU job a config's DAG runs,
term by term, before anything starts (``reasoning-inside plan``; issue 18).

Everything here is arithmetic on the model's *shape* (:class:`ModelShape`, read without
downloading, :func:`model_shape`) and the config, so the Snakefile can run
:func:`check_memory` at DAG start (importing this module imports no torch; planning a
train job reads :class:`pipeline.rl.config.RLConfig`'s defaults, which does, as the
config's cross-key checks already do). Sizes are bytes; tables print GiB (2^30 B).
Each formula was checked on CPU against what torch really holds
(tests/test_memory_plan.py: saved tensors byte for byte, peak RSS of real updates).

Conventions the formulas follow (the code they mirror is named with each term):

- n parameters (:attr:`ModelShape.n_params`), L blocks, d hidden, H / KV heads of size
  hd (q = H·hd, kv = KV·hd), i the MLP width, V the vocabulary.
- Every stage loads the model in fp32 (:func:`pipeline.models.load`): the trainer's
  master weights and every inference job's weights are 4 B/param whatever the hub
  dtype. ``a`` is the bytes of the training compute dtype (``rl.trainer.compute_dtype``:
  4, or 2 for bf16/fp16), ``s`` those of the rollout/sampling dtype (``sample_dtype``).
- One train job runs ``p`` processes (one per GPU: ``resources.train.gpu`` capped by the
  GPUs at hand). ``ddp`` (and one process) holds everything on every GPU; ``fsdp2``
  (:mod:`pipeline.rl.fsdp`) divides parameters, gradients and AdamW state by p.
- A sequence is ``T = prompt_tokens + max_new_tokens`` long (the prompt length is an
  assumption, ``planner.prompt_tokens``, default 512); a micro-batch holds ``m``
  sequences (``micro_batch_size``, or the whole minibatch when unset) and
  ``N = m·max_new_tokens`` response tokens.
- A job's total is the largest of its *phases*, the terms that are alive together
  (:func:`train_estimate`): e.g. the rollout's KV cache is freed before the update's
  activations exist. The CUDA context, cuBLAS workspaces and NCCL buffers are charged
  as a flat ``overhead`` (:data:`CUDA_OVERHEAD`); the caching allocator's
  fragmentation (typically a few %) is not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.memory_terms import (  # noqa: F401
    DEFAULT_CHUNK_BYTES,
    GRAD_CHUNK_BYTES,
    UpdateMemory,
    backward_transient_bytes_per_token,
    block_activation_bytes_per_token,
    decode_bytes,
    engine_copy_bytes,
    forward_bytes,
    sampling_phases,
    unembed_rows,
    update_memory,
)

# the shapes are their own module; their names stay importable from here
from pipeline.model_shape import (  # noqa: F401
    BUILTIN_VOCAB,
    DTYPE_BYTES,
    KNOWN_SHAPES,
    MODEL_TYPES,
    ModelShape,
    dtype_bytes,
    model_shape,
    shape_from_hf_config,
)
from pipeline.settings import Config

GiB = 2**30
#: Assumed prompt length in tokens (``planner.prompt_tokens``).
PROMPT_TOKENS = 512
#: CUDA context + cuBLAS workspace + NCCL buffers per process.
CUDA_OVERHEAD = GiB
#: Columns of :func:`format_table`, in order.
TERMS = ("params", "grads", "optimizer", "activations", "logits", "gather", "engine",
         "kv_cache", "overhead")
SHORT = {"optimizer": "optim", "activations": "activ", "kv_cache": "kv", "overhead": "ctx"}


class PlanError(ValueError):
    """A GPU job does not fit; the message is one line naming it."""


# --------------------------------------------------------------------------- jobs
@dataclass
class JobEstimate:
    """One GPU job's estimate per GPU: ``terms`` (bytes, keys of :data:`TERMS`) and the
    ``phases`` (bytes alive together); ``total`` is the largest phase."""

    job: str
    rule: str
    model: str
    processes: int
    mode: str
    terms: dict[str, int]
    phases: dict[str, int]
    gpus: int
    gpu_mem_gb: float
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)

    @property
    def budget(self) -> float:
        """Bytes of one GPU (``gpu_mem_gb`` GiB: an "80 GB" card shows ~79.6 GiB)."""
        return self.gpu_mem_gb * GiB

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    @property
    def update_bytes(self) -> int:
        """The training update alone: params + grads + optimizer + activations + logits
        (+ gather), no rollout engine (train jobs)."""
        return sum(self.terms[k] for k in ("params", "grads", "optimizer", "activations",
                                           "logits", "gather"))


def _terms(**kw: int) -> dict[str, int]:
    return {k: int(kw.get(k, 0)) for k in TERMS}


def train_estimate(shape: ModelShape, trainer: Mapping[str, Any], *, model: str,
                   processes: int, distributed: str, gpus: int, gpu_mem_gb: float,
                   prompt_tokens: int = PROMPT_TOKENS) -> JobEstimate:
    """A train job per GPU (:func:`pipeline.rl.trainer.train`), ``trainer`` the
    ``rl.trainer`` keys (:class:`pipeline.rl.config.RLConfig` defaults fill the rest).

    Mode: ``fsdp2`` with p > 1 processes (sharded, activation checkpointing honoured),
    else ``ddp`` (``single`` when fsdp2 was asked for but one process runs: the trainer
    ignores the mode and refuses activation checkpointing). Per process:
    P = prompts_per_step/p prompts, G = P·group_size sequences, a minibatch of
    G/updates_per_batch sequences, micro-batches of m = micro_batch_size (or the
    minibatch), rollout batches of B = min(gen_batch_size, G).

    Phases: ``load`` 4n (fsdp2: the model is loaded on the CPU, the engine copy moved
    to the GPU and ``fully_shard`` moves only the shards, n·s + 4n/p); ``sync`` (fsdp2)
    params + optimizer + engine + the largest parameter gathered in fp32 and cast,
    (4 + s)·max(V·d, d·i); ``rollout`` params + optimizer + engine + the larger sampling phase
    (:func:`sampling_phases`: KV cache, :meth:`ModelShape.kv_bytes_per_token` per
    position, and the decode working set); ``update``
    :func:`update_memory` + engine (fsdp2, resident); ``step`` params + grads +
    optimizer + AdamW's foreach temporary (4n/p) + engine. Engine: fsdp2 the unsharded
    copy n·s; otherwise the static decoder's cast copies (:func:`engine_copy_bytes`),
    alive only while sampling."""
    from pipeline.rl.config import RLConfig

    base = RLConfig.from_dict({**dict(trainer), "bupo_layer": 1})
    notes = []
    sharded = distributed == "fsdp2" and processes > 1
    mode = "fsdp2" if sharded else ("single" if distributed == "fsdp2" else "ddp")
    ckpt = base.activation_checkpointing and sharded
    if base.activation_checkpointing and not sharded:
        notes.append("activation_checkpointing needs fsdp2 on > 1 process (the trainer "
                     "refuses it); estimated without")
    n = shape.n_params
    p = processes if sharded else 1
    prompts = max(1, base.prompts_per_step // processes)
    seqs = prompts * base.group_size
    minibatch = max(1, seqs // base.updates_per_batch)
    micro = min(base.micro_batch_size or minibatch, minibatch)
    seq_len = prompt_tokens + base.max_new_tokens
    upd = update_memory(shape, micro_seqs=micro, seq_len=seq_len,
                        response_tokens=micro * base.max_new_tokens,
                        compute_dtype=base.compute_dtype, checkpointing=ckpt,
                        processes=processes, sharded=sharded, chunk_tokens=base.chunk_tokens)
    gen = min(base.gen_batch_size, seqs)
    _, kv, prefill, decode = sampling_phases(shape, gen, prompt_tokens, base.max_new_tokens,
                                             base.sample_dtype)
    if sharded:
        engine = n * dtype_bytes(base.sample_dtype)
        resident_engine = engine
    else:
        engine = engine_copy_bytes(shape, base.sample_dtype)
        resident_engine = 0
    terms = _terms(params=upd.params, grads=upd.grads, optimizer=upd.optimizer,
                   activations=upd.activations, logits=upd.logits, gather=upd.gather,
                   engine=engine, kv_cache=kv, overhead=CUDA_OVERHEAD)
    largest = max(shape.vocab * shape.hidden, shape.hidden * shape.intermediate)
    phases = {
        "load": (engine + upd.params if sharded else 4 * n) + CUDA_OVERHEAD,
        **({"sync": upd.params + upd.optimizer + engine
            + (4 + dtype_bytes(base.sample_dtype)) * largest + CUDA_OVERHEAD}
           if sharded else {}),
        "rollout": upd.params + upd.optimizer + engine + max(prefill, decode)
        + CUDA_OVERHEAD,
        "update": upd.total + resident_engine + CUDA_OVERHEAD,
        "step": upd.params + upd.grads + upd.optimizer + 4 * n // p + resident_engine
        + CUDA_OVERHEAD,
    }
    return JobEstimate(job=f"train[{model}]", rule="train", model=model, processes=processes,
                       mode=mode, terms=terms, phases=phases, gpus=gpus,
                       gpu_mem_gb=gpu_mem_gb, notes=notes)


def sampling_estimate(shape: ModelShape, *, job: str, rule: str, model: str, batch: int,
                      max_new_tokens: int, sample_dtype: str | None, gpus: int,
                      gpu_mem_gb: float, prompt_tokens: int = PROMPT_TOKENS) -> JobEstimate:
    """A sampling job (``evaluate`` generative, ``responses``): fp32 weights 4n, the
    static decoder's cast copies (:func:`engine_copy_bytes`), and the larger of its
    prefill and decode phases (:func:`sampling_phases`; the table's ``activ`` is the
    prefill working set, ``kv`` the cache)."""
    act, kv, prefill, decode = sampling_phases(shape, batch, prompt_tokens, max_new_tokens,
                                               sample_dtype)
    terms = _terms(params=4 * shape.n_params, engine=engine_copy_bytes(shape, sample_dtype),
                   kv_cache=kv, activations=act, overhead=CUDA_OVERHEAD)
    fixed = terms["params"] + terms["engine"] + CUDA_OVERHEAD
    return JobEstimate(job=job, rule=rule, model=model, processes=1, mode="inference",
                       terms=terms, phases={"prefill": fixed + prefill, "decode": fixed + decode},
                       gpus=gpus, gpu_mem_gb=gpu_mem_gb)


def forward_estimate(shape: ModelShape, *, job: str, rule: str, model: str, batch: int,
                     seq_len: int, gpus: int, gpu_mem_gb: float, extra: int = 0,
                     lens: int = 0, logits: int = 2 * DEFAULT_CHUNK_BYTES) -> JobEstimate:
    """An analysis forward (``decomposition``, ``attention``, ``depth``, MMLU scoring):
    fp32 weights 4n, :func:`forward_bytes` of the batch plus ``extra`` (captured
    activations), unembedding chunk buffers (``logits``: two [rows, V] fp32 buffers of
    256 MiB), and ``lens`` trained parameters (tuned lens: params, grads, SGD momentum,
    4 B each)."""
    terms = _terms(params=4 * shape.n_params + 4 * lens, grads=4 * lens, optimizer=4 * lens,
                   activations=forward_bytes(shape, batch, seq_len) + extra, logits=logits,
                   overhead=CUDA_OVERHEAD)
    return JobEstimate(job=job, rule=rule, model=model, processes=1, mode="inference",
                       terms=terms, phases={"forward": sum(terms.values())}, gpus=gpus,
                       gpu_mem_gb=gpu_mem_gb)


# --------------------------------------------------------------------------- the plan
def override(config: dict[str, Any], item: str) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` to a raw config in place and return it: KEY a dotted path
    (missing mappings are created; ``*`` matches every key of an existing mapping),
    VALUE parsed as YAML (``8``, ``null``, ``fsdp2``, ``[1, 2]``)."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"plan: override {item!r} is not KEY=VALUE")
    value = yaml.safe_load(raw)
    parts = key.split(".")

    def put(node: dict[str, Any], i: int, at: str) -> None:
        for k in list(node) if parts[i] == "*" else [parts[i]]:
            if i == len(parts) - 1:
                node[k] = value
                continue
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ValueError(f"plan: override {item!r}: {at}{k} is not a mapping")
            put(child, i + 1, f"{at}{k}.")

    put(config, 0, "")
    return config


def _count(c: Config, n: int | None, task: str, split: str) -> int | None:
    """Items a sampling spec covers, when the config says (``n``: its n_problems /
    n_prompts, or a Countdown split's size); None when only the data knows."""
    if n:
        return n
    if task == "countdown":
        return c.tasks.countdown.splits.get(split)
    return None


def _depth_estimate(c: Config, shape: ModelShape, name: str, gpus: int,
                    gpu_mem_gb: float, prompt_tokens: int) -> JobEstimate:
    """depth: batch_size prompts of prompt_tokens, and with a tuned lens its training
    (:func:`pipeline.depth.train_tuned_lens`): L translators of d² + d parameters, the
    hidden states of a micro-batch captured at every layer, 4·(L + 1)·d per token, for
    ⌊4096 / seq_len⌋ windows (≥ 1)."""
    from pipeline.depth.spec import resolve_spec

    depth = resolve_spec(c.analysis.depth)
    seq = int(depth["tuned"]["seq_len"])
    tokens = max(1, 4096 // seq) * seq
    has_lens = "tuned" in depth["lenses"]
    lens = shape.layers * (shape.hidden ** 2 + shape.hidden) if has_lens else 0
    capture = 4 * (shape.layers + 1) * shape.hidden * tokens if has_lens else 0
    batch, length = int(depth["batch_size"]), prompt_tokens
    if has_lens and tokens > batch * length:
        batch, length = max(1, tokens // seq), seq
    return forward_estimate(shape, job=f"depth[{name}]", rule="depth", model=name,
                            batch=batch, seq_len=length, gpus=gpus, gpu_mem_gb=gpu_mem_gb,
                            extra=capture, lens=lens)


def plan(config: Config | dict[str, Any], *, gpus: int | None = None, gpu_mem_gb: float,
         prompt_tokens: int | None = None, skip_unknown: bool = False) -> list[JobEstimate]:
    """Estimates of every GPU job of a validated config (:func:`pipeline.config.validate`),
    one per distinct (rule, model[, benchmark]): seeds and RL methods do not change the
    memory (BuPO's truncated forward needs less than the full one planned here). A job
    uses GPUs when its ``resources.<rule>.gpu`` > 0; train runs that many processes
    capped by ``gpus`` (None: uncapped). Model shapes come from :func:`model_shape`
    (provisioned directory first). ``prompt_tokens``: assumed prompt length (default
    ``planner.prompt_tokens`` or :data:`PROMPT_TOKENS`). A model whose shape is unknown
    raises (:func:`model_shape`), or with ``skip_unknown`` drops its jobs with a warning."""
    import warnings

    from pipeline import paths
    from pipeline import workflow as pw

    c = Config.of(config)
    prompt = int(prompt_tokens or c.planner.prompt_tokens or PROMPT_TOKENS)
    root = paths.root(c)
    shapes: dict[str, ModelShape | None] = {}

    def known(name: str) -> bool:
        if name not in shapes:
            try:
                shapes[name] = model_shape(c.models[name], name=name,
                                           model_dir=paths.model_dir(root, name))
            except ValueError as exc:
                if not skip_unknown:
                    raise
                warnings.warn(f"{exc}; its GPU jobs are not checked", stacklevel=3)
                shapes[name] = None
        return shapes[name] is not None

    def shape(name: str) -> ModelShape:
        return shapes[name]  # type: ignore[return-value]

    def cap(rule: str) -> int:
        g = int(pw.rule_resources(c, rule).gpu or 0)
        return min(g, gpus) if gpus else g

    out: list[JobEstimate] = []
    common = {"gpu_mem_gb": gpu_mem_gb, "prompt_tokens": prompt}
    rl = c.rl
    if rl.enabled and cap("train") > 0:
        for m in filter(known, rl.models):
            out.append(train_estimate(shape(m), rl.trainer.to_dict(), model=m,
                                      processes=cap("train"), distributed=pw.train_mode(c),
                                      gpus=cap("train"), **common))
    benches = c.evaluation.benchmarks
    eval_jobs = [("evaluate", m, b) for b in benches for m in pw.benchmark_models(c, b)]
    if rl.enabled:
        eval_jobs += [("evaluate_trained", m, b) for m in rl.models for b in rl.evaluate]
    for rule, m, b in eval_jobs:
        if cap(rule) <= 0 or not known(m):
            continue
        bench = benches[b]
        job = f"{rule}[{m},{b}]"
        if bench.task == "mmlu":
            length = prompt * (bench.shots + 1)
            out.append(forward_estimate(shape(m), job=job, rule=rule, model=m,
                                        batch=bench.batch_size, seq_len=length,
                                        gpus=1, gpu_mem_gb=gpu_mem_gb, logits=0))
            continue
        items = _count(c, bench.n_problems, bench.task, bench.split)
        batch = bench.batch_size
        if items is not None:
            batch = min(batch, items * max(1, bench.n_samples))
        out.append(sampling_estimate(shape(m), job=job, rule=rule, model=m, batch=batch,
                                     max_new_tokens=bench.max_new_tokens,
                                     sample_dtype=bench.sample_dtype, gpus=1, **common))
    analysed = pw.analysis_models(c)
    trained = rl.models if rl.enabled else []
    for m in analysed:
        if not any(cap(r) > 0 for r in ("responses", "decomposition", "attention", "depth",
                                         "decomposition_trained", "attention_trained")):
            break
        if not known(m):
            continue
        resp = pw.responses_spec(c, m)
        length = prompt + resp.max_new_tokens
        if cap("responses") > 0:
            items = _count(c, resp.n_prompts, resp.task, resp.split)
            batch = resp.batch_size
            if items is not None:
                batch = min(batch, items * resp.n_samples)
            out.append(sampling_estimate(shape(m), job=f"responses[{m}]", rule="responses",
                                         model=m, batch=batch,
                                         max_new_tokens=resp.max_new_tokens,
                                         sample_dtype=resp.sample_dtype, gpus=1, **common))
        for rule in ("decomposition", "attention"):
            keys = [rule] + ([f"{rule}_trained"] if m in trained
                             and rule in c.comparison.before_after else [])
            for key in keys:
                if cap(key) <= 0:
                    continue
                section = c.analysis.attention if rule == "attention" \
                    else c.analysis.decomposition
                batch = section.batch_size
                s = shape(m)
                extra = 0
                if rule == "attention":  # q and k of the chosen blocks (5 by default)
                    layers = c.analysis.attention.layers
                    n_layers = s.layers if layers == "all" else len(layers or range(5))
                    extra = 4 * batch * length * (s.q_dim + s.kv_dim) * n_layers
                out.append(forward_estimate(s, job=f"{key}[{m}]", rule=key, model=m,
                                            batch=batch, seq_len=length, gpus=1,
                                            gpu_mem_gb=gpu_mem_gb, extra=extra))
        if cap("depth") > 0:
            out.append(_depth_estimate(c, shape(m), m, 1, gpu_mem_gb, prompt))
    return out


def _gib(n: int) -> str:
    return f"{n / GiB:.1f}"


def format_table(estimates: list[JobEstimate]) -> str:
    """A plain-text table: job, processes, mode, each term in GiB, total (the largest
    phase, named), and whether it fits one GPU; notes below."""
    if not estimates:
        return "plan: no GPU jobs (every resources.<rule>.gpu is 0)"
    head = ["job", "procs", "mode", *(SHORT.get(k, k) for k in TERMS), "total", "peak",
            "fits"]
    rows = [[e.job, str(e.processes), e.mode, *(_gib(e.terms[k]) for k in TERMS),
             _gib(e.total), e.peak_phase, "yes" if e.fits else "NO"] for e in estimates]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    left = {0, 2, len(head) - 2, len(head) - 1}

    def line(r: list[str]) -> str:
        return "  ".join(v.ljust(w) if c in left else v.rjust(w)
                         for c, (v, w) in enumerate(zip(r, widths, strict=True))).rstrip()

    out = [f"GPU memory plan, GiB per GPU of {estimates[0].gpu_mem_gb:g} GB (total: the "
           f"largest phase, named in 'peak')", line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    for e in estimates:
        if e.rule == "train":
            out.append(f"phases of {e.job}: " + ", ".join(
                f"{k} {_gib(v)}" for k, v in e.phases.items()) + " GiB")
        out += [f"note: {e.job}: {n}" for n in e.notes]
    return "\n".join(out)


def check(estimates: list[JobEstimate]) -> None:
    """``PlanError`` (one line) for the first job whose total exceeds one GPU."""
    for e in estimates:
        if not e.fits:
            gpus = e.processes if e.rule == "train" else 1
            short = math.ceil((e.total - e.budget) / GiB * 10) / 10
            raise PlanError(f"plan: job {e.job} needs ~{e.total / GiB:.1f} GiB per GPU "
                            f"({e.mode}, {gpus} × {e.gpu_mem_gb:g} GB): short by "
                            f"{short:.1f} GiB")


def check_memory(config: Config | dict[str, Any]) -> list[JobEstimate] | None:
    """DAG-start check: with ``planner.gpu_mem_gb`` set, plan the validated config
    (``planner.gpus`` caps the train processes) and raise :class:`PlanError` when a job
    does not fit; None (nothing checked) when no GPU size is configured. Models whose
    shape cannot be read yet (e.g. a GGUF not provisioned) are skipped with a warning."""
    c = Config.of(config)
    if not c.planner.gpu_mem_gb:
        return None
    estimates = plan(c, gpus=c.planner.gpus, gpu_mem_gb=float(c.planner.gpu_mem_gb),
                     prompt_tokens=c.planner.prompt_tokens, skip_unknown=True)
    check(estimates)
    return estimates
