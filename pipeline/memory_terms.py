"""The memory planner's terms (bytes per GPU), each a formula over a model's shape that
mirrors the code named with it; the conventions (n, L, d, a, s, p, T, m, N) are those of
:mod:`pipeline.memory_plan`'s docstring, and tests/test_memory_plan.py checks each against
what torch really holds."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.model_shape import ModelShape, dtype_bytes

#: Mirrors :data:`pipeline.model_access.GRAD_CHUNK_BYTES` / ``DEFAULT_CHUNK_BYTES``
#: (fp32 logits per unembedding chunk under autograd / without); a test keeps them equal.
GRAD_CHUNK_BYTES = 64 * 2**20
DEFAULT_CHUNK_BYTES = 256 * 2**20


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
