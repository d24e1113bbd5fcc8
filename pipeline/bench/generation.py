"""Benchmark: tokens/s of the pipeline's sampler vs plain ``model.generate``.

``python -m pipeline.bench generation [--model DIR] [--batch-sizes 1 8 32] [--new-tokens 64]``

Same prompts, same number of new tokens (EOS disabled so every row generates exactly
``--new-tokens``), in one run. "plain" = ``AutoModelForCausalLM.from_pretrained`` with the
default attention (sdpa) and ``generate`` on the prompts in their given order. The others
are :func:`pipeline.generation.generate` (length-sorted batches, finished rows dropped,
inverse-CDF draws) on the model as every stage loads it, with two decode engines:
"hf-loop" = the transformers forward with a ``DynamicCache`` (``static=False``; bf16 = a
bf16 copy of the model), "ours" = :class:`pipeline.static_decode.StaticDecoder` (bf16 =
bf16 weights, fp32 activations: the setting of ``sample_dtype: bfloat16``). Also prints
where the time goes: prefill (one forward over the prompts) vs per-token decode of each
engine, and the bare matmuls of one decode step (every weight matrix once, no attention or
overhead) — the floor a decode step can reach in each dtype.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from pipeline.generation import decoder, generate
from pipeline.models import load

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain why the sky is blue in two sentences.",
    "List three prime numbers greater than 50.",
    "What is 17 times 23? Show your steps.",
    "Give me a short recipe for pancakes.",
    "Translate 'good morning' into Spanish and German.",
    "Summarise the plot of Romeo and Juliet in one sentence.",
]


def _chat(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                   add_generation_prompt=True)


@torch.inference_mode()
def _plain(model, tok, prompts: list[str], bs: int, new: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(prompts), bs):
        enc = tok(prompts[i:i + bs], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                       temperature=1.0, top_k=0, pad_token_id=tok.pad_token_id)
    return time.perf_counter() - t0


def _ours(model, tok, prompts: list[str], bs: int, new: int, dtype=None,
          static: bool = True) -> float:
    eos = tok.eos_token_id
    t0 = time.perf_counter()
    try:  # EOS disabled so both sides generate exactly `new` tokens per row
        tok.eos_token_id = None
        model.generation_config.eos_token_id = None
        generate(model, tok, prompts, n=1, temperature=1.0, max_new_tokens=new,
                 batch_size=bs, progress=False, min_new_tokens=new, dtype=dtype, static=static)
    finally:
        tok.eos_token_id = eos
    return time.perf_counter() - t0


@torch.inference_mode()
def _split(engine, tok, prompts: list[str], new: int) -> tuple[float, float]:
    """Prefill time of one batch, and mean greedy decode-step time of the same batch, through
    a decode engine (:func:`pipeline.generation.decoder`)."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    steps = min(new, 16)
    engine.reset(len(prompts), mask.shape[1] + steps + 1, "cpu")
    t0 = time.perf_counter()
    logits = engine.forward(enc["input_ids"], pos, mask)
    prefill = time.perf_counter() - t0
    last = pos[:, -1]
    t0 = time.perf_counter()
    for _ in range(steps):
        last = last + 1
        logits = engine.forward(logits.argmax(-1)[:, None], last[:, None])
    return prefill, (time.perf_counter() - t0) / steps


@torch.inference_mode()
def _matmul_floor(model, bs: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Seconds of the bare matmuls of one decode step: x[bs, in] @ W.T for every 2-D
    weight (the unembedding included), no attention, norms or Python overhead."""
    weights = [p.detach().to(dtype) for n, p in model.named_parameters()
               if p.dim() == 2 and "embed_tokens" not in n]
    if model.get_output_embeddings() is not None and all(
            w.data_ptr() != model.get_output_embeddings().weight.data_ptr() for w in weights):
        weights.append(model.get_output_embeddings().weight.detach().to(dtype))
    xs = {w.shape[1]: torch.randn(bs, w.shape[1], dtype=dtype) for w in weights}
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for w in weights:
            xs[w.shape[1]] @ w.T
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench generation")
    p.add_argument("--model", default="results/default/models/smollm2-135m-instruct/model")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ours_model, tok = load(a.model, device="cpu", attn_implementation="eager")
    plain_model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    tok.padding_side = "left"
    print(f"model {a.model}: plain attn={plain_model.config._attn_implementation}, "
          f"ours attn={ours_model.config._attn_implementation}; torch threads "
          f"{torch.get_num_threads()}; {a.new_tokens} new tokens per row")
    variants = [  # name, dtype, static decoder
        ("hf-loop fp32", None, False), ("ours fp32", None, True),
        ("hf-loop bf16", torch.bfloat16, False), ("ours bf16", torch.bfloat16, True)]
    print(f"{'batch':>5} {'rows':>5} {'plain tok/s':>12}"
          + "".join(f" {name:>13} {'ratio':>6}" for name, _, _ in variants))
    for bs in a.batch_sizes:
        rows = max(bs, 8)
        prompts = [_chat(tok, PROMPTS[i % len(PROMPTS)]) for i in range(rows)]
        _plain(plain_model, tok, prompts[:bs], bs, 4)  # warm-up
        for _, dt, st in variants:
            _ours(ours_model, tok, prompts[:bs], bs, 4, dt, st)
        # interleaved repeats, best of each: the machine is shared
        t_plain, t_ours = float("inf"), [float("inf")] * len(variants)
        for _ in range(a.repeats):
            t_plain = min(t_plain, _plain(plain_model, tok, prompts, bs, a.new_tokens))
            t_ours = [min(t, _ours(ours_model, tok, prompts, bs, a.new_tokens, dt, st))
                      for t, (_, dt, st) in zip(t_ours, variants, strict=True)]
        n_tok = rows * a.new_tokens
        print(f"{bs:>5} {rows:>5} {n_tok / t_plain:>12.1f}"
              + "".join(f" {n_tok / t:>13.1f} {t_plain / t:>6.2f}" for t in t_ours))
    print("\nwhere the time goes (one batch, greedy): prefill s, decode ms/step")
    engines = [("plain", decoder(plain_model, static=False))]
    engines += [(name, decoder(ours_model, dt, static=st)) for name, dt, st in variants]
    for name, engine in engines:
        for bs in a.batch_sizes:
            prompts = [_chat(tok, PROMPTS[i % len(PROMPTS)]) for i in range(bs)]
            pre, dec = _split(engine, tok, prompts, a.new_tokens)
            print(f"  {name:12} batch {bs:>3}: prefill {pre:6.3f} s, decode {1e3 * dec:7.1f} "
                  f"ms/step ({bs / dec:6.1f} tok/s)")
    print("\nfloor: bare matmuls of one decode step (all weights once), ms")
    for bs in a.batch_sizes:
        f32, b16 = (_matmul_floor(ours_model, bs, d) for d in (torch.float32, torch.bfloat16))
        print(f"  batch {bs:>3}: fp32 {1e3 * f32:6.1f}, bf16 {1e3 * b16:6.1f}")


if __name__ == "__main__":
    main()
