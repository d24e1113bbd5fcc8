"""Batched sampling: the one function every stage uses to generate responses.

A compact decode loop instead of ``model.generate``. Prompts are sorted by length (less
padding) and left-padded; positions follow the attention mask as in ``generate``; rows
that have emitted EOS are dropped from the batch and its cache, so a batch costs as much
as its live rows. Greedy when ``temperature == 0``, else temperature + nucleus (top-p)
sampling from a seeded generator, drawn by inverse CDF (one uniform per row).

Decode steps run on :class:`pipeline.static_decode.StaticDecoder` (Llama, Mistral, Qwen2,
Qwen3: fused projections, a KV cache allocated once per batch, no per-step mask building;
identical to
the transformers forward in fp32 up to float rounding) or, for other architectures or
``static=False``, on the transformers forward with a ``DynamicCache``. On CPU the per-step
overhead of the transformers forward dominates small models (``python -m pipeline.bench
generation`` prints the split).

``dtype`` is the dtype of the weights the decode loop multiplies with, cast once per call
(so a model that is being trained is always sampled with its current weights). On CPUs
with native bf16 matmuls (AVX512-BF16 / AMX) and on GPUs, bf16 halves the weight traffic
that bounds one-token decode steps. The static decoder keeps activations and the softmax in
fp32 (matmul inputs are rounded, and the KV cache is held in ``dtype``, read back as fp32
for the attention), so bf16 sampling stays close to the
fp32 model (SmolLM2: last-token logits within ~0.5 of fp32; a bf16 copy of the whole model
through transformers: ~1). Analyses and log-probs of the sampled tokens are still computed
by the fp32 model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.model_access import probs as vocab_probs
from pipeline.static_decode import StaticDecoder, unsupported_reason


@dataclass
class Generation:
    prompt_index: int
    sample_index: int
    text: str
    num_tokens: int
    finished: bool  # ended with EOS rather than the length limit
    token_ids: list[int]  # the sampled tokens, EOS included when finished


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens [B] from logits [B, V]: argmax, or a draw from softmax(logits/T) restricted
    to the smallest set whose probability mass reaches ``top_p``.

    Draws by inverse CDF — one uniform per row against the float64 cumulative mass — which
    needs B random numbers instead of ``torch.multinomial``'s V per row (measured on CPU at
    B=8, V=49,152: 0.25 ms vs 8.8 ms per step)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = vocab_probs(logits, temperature)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token is enough
        probs = probs.masked_fill(drop, 0.0)
    cdf = probs.double().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64,
                   device=probs.device) * cdf[:, -1:]
    # first token whose cumulative mass exceeds u: never a zero-probability token
    pick = torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1)
    if order is not None:
        pick = order.gather(-1, pick)
    return pick.squeeze(-1)


def sampling_model(model: PreTrainedModel, dtype: torch.dtype | str | None) -> PreTrainedModel:
    """The model the decode loop runs: ``model`` itself, or an eval-mode copy in ``dtype``
    (``sdpa`` attention when the copy is half precision)."""
    from pipeline.models import resolve_dtype

    if dtype is None:
        return model
    dtype = resolve_dtype(dtype)
    if dtype == next(model.parameters()).dtype:
        return model
    clone = copy.deepcopy(model).to(dtype).eval()
    if dtype in (torch.bfloat16, torch.float16):
        clone.set_attn_implementation("sdpa")
    return clone


class _HFStepper:
    """The decode interface of :class:`~pipeline.static_decode.StaticDecoder` over the
    transformers forward and a ``DynamicCache`` (models the static decoder does not cover)."""

    def __init__(self, model: PreTrainedModel):
        self.model = model

    def reset(self, batch: int, max_len: int, device: torch.device | str) -> None:
        self.cache, self.mask = DynamicCache(), None

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        new = attention_mask if attention_mask is not None else tokens.new_ones(tokens.shape)
        self.mask = new if self.mask is None else torch.cat([self.mask, new], dim=1)
        return self.model(input_ids=tokens, attention_mask=self.mask, position_ids=positions,
                          past_key_values=self.cache, use_cache=True,
                          logits_to_keep=1).logits[:, -1]

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]


def decoder(model: PreTrainedModel, dtype: torch.dtype | str | None = None,
            *, static: bool = True) -> StaticDecoder | _HFStepper:
    """The decode-step engine of ``model`` in ``dtype``: the static-cache decoder where it
    supports the architecture (and ``static``), else the transformers forward (of a cast
    copy when ``dtype`` differs)."""
    from pipeline.models import resolve_dtype

    dt = None if dtype is None else resolve_dtype(dtype)
    if static and unsupported_reason(model) is None:
        return StaticDecoder(model, dtype=dt)
    return _HFStepper(sampling_model(model, dt))


@torch.inference_mode()
def _decode_batch(engine: StaticDecoder | _HFStepper, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor, *, max_new_tokens: int, min_new_tokens: int,
                  eos: int | None, temperature: float, top_p: float,
                  generator: torch.Generator | None) -> tuple[list[list[int]], list[bool]]:
    n, width = input_ids.shape
    out: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    live = torch.arange(n)
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    engine.reset(n, width + max_new_tokens, input_ids.device)
    logits = engine.forward(input_ids, pos, attention_mask)
    last = pos[:, -1]
    for step in range(max_new_tokens):
        if eos is not None and step < min_new_tokens:
            logits[:, eos] = -float("inf")
        nxt = sample_next(logits, temperature, top_p, generator)
        done = torch.zeros(len(live), dtype=torch.bool)
        for j, (row, tok) in enumerate(zip(live.tolist(), nxt.tolist(), strict=True)):
            out[row].append(tok)
            if tok == eos:
                finished[row] = True
                done[j] = True
        if step == max_new_tokens - 1:
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            live, nxt, last = live[keep], nxt[keep], last[keep]
            engine.select(keep.to(input_ids.device))
        last = last + 1
        logits = engine.forward(nxt[:, None].to(input_ids.device), last[:, None])
    return out, finished


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
    desc: str = "generate",
    min_new_tokens: int = 0,
    dtype: torch.dtype | str | None = None,
    static: bool = True,
    engine: StaticDecoder | None = None,
) -> list[Generation]:
    """``n`` responses per prompt; results ordered by (prompt_index, sample_index).
    ``dtype``: compute dtype of the decode loop (None: the model's own); ``static=False``
    forces the transformers forward instead of the static-cache decoder; ``engine``: a
    decode engine built from ``model`` beforehand (e.g. :class:`pipeline.early_exit.
    EarlyExitDecoder`), used instead of :func:`decoder`'s."""
    if n < 1 or batch_size < 1:
        raise ValueError("generate: n and batch_size must be >= 1")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    items = [(i, j) for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
             for j in range(n)]
    eos = tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    engine = decoder(model, dtype, static=static) if engine is None else engine
    out: list[Generation] = []
    try:
        bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="seq")
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            enc = tokenizer([prompts[i] for i, _ in chunk], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            seqs, done = _decode_batch(
                engine, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens, eos=eos, temperature=temperature, top_p=top_p,
                generator=generator)
            for (i, j), ids, fin in zip(chunk, seqs, done, strict=True):
                text_ids = ids[:-1] if fin else ids
                out.append(Generation(i, j, tokenizer.decode(text_ids, skip_special_tokens=False),
                                      len(ids), fin, ids))
            bar.update(len(chunk))
        bar.close()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    out.sort(key=lambda g: (g.prompt_index, g.sample_index))
    return out
