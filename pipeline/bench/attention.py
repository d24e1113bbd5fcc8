"""Benchmark of :func:`pipeline.attention.rhythm` (docs/methods.md §3.11 Memory).

A randomly initialised model shaped like Qwen3-0.6B (28 blocks, hidden 1024, 16 heads,
8 KV heads, head dim 128, FFN 3072; small vocabulary) and one long sequence. One run
prints:

- time and extra peak memory of a plain forward of the sequence (sdpa, the baseline),
- time and extra peak memory of ``rhythm`` on it (5 default layers), and the time ratio
  ``rhythm / forward`` (target ≤ 1.5) — memory target ≤ 2 GB at 8K tokens,
- the extra peak memory of the naive approach, one eager forward with
  ``output_attentions=True``, at a shorter length where it still fits.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the call;
on CPU the process's peak resident set (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` after ``malloc_trim``) minus the resident set before the call,
so it includes everything the call allocates (activations, q/k copies, score chunks).

Usage: ``python -m pipeline.bench attention [--seq-len 8192] [--naive-len 1024] …``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Iterator

import torch

from pipeline.attention import rhythm

QWEN3_0_6B = dict(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
)


def build(vocab: int, dtype: torch.dtype, device: str, attn: str = "sdpa") -> torch.nn.Module:
    """Random Qwen3-0.6B-shaped model (real ``Qwen3ForCausalLM``)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=vocab,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
        attn_implementation=attn,
        **QWEN3_0_6B,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg)
    return model.to(dtype).eval()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float]]:
    """Extra peak memory (bytes) of the enclosed code, see the module docstring."""
    out: dict[str, float] = {}
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield out
        torch.cuda.synchronize()
        out["bytes"] = torch.cuda.max_memory_allocated() - base
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    yield out
    out["bytes"] = (_status_kb("VmHWM") - base) * 1024.0


def timed(fn: Callable[[], object], device: str) -> tuple[float, float, float]:
    """(wall seconds, process CPU seconds, extra peak bytes) of one call. CPU seconds
    (all threads) are robust to other processes competing for the cores; on CUDA they
    only count the host side."""
    with peak_memory(device) as mem:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, mem["bytes"]


def _gb(x: float) -> str:
    return f"{x / 2**30:.3f} GB"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.bench attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--seq-len", type=int, default=8192, help="tokens of the long sequence")
    ap.add_argument("--prompt-len", type=int, default=256, help="non-response prefix")
    ap.add_argument(
        "--naive-len",
        type=int,
        default=1024,
        help="length for the eager output_attentions baseline (0 = skip)",
    )
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--chunk-size", type=int, default=None, help="query rows per chunk")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=2, help="interleaved timing runs")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, dtype = args.device, getattr(torch, args.dtype)

    model = build(args.vocab, dtype, dev)
    g = torch.Generator().manual_seed(0)
    n = args.seq_len
    ids = torch.randint(0, args.vocab, (1, n), generator=g).to(dev)
    am = torch.ones_like(ids)
    rm = torch.zeros_like(ids)
    rm[:, min(args.prompt_len, n - 1) :] = 1
    print(
        f"model: Qwen3-0.6B shape {QWEN3_0_6B}, vocab {args.vocab}, {args.dtype}, {dev}, "
        f"threads {torch.get_num_threads()}"
    )
    with torch.no_grad():  # warm-up (kernels, allocator)
        model(ids[:, :64], attention_mask=am[:, :64])
        rhythm(model, ids[:, :64], rm[:, :64], am[:, :64], chunk_size=args.chunk_size)

    def forward() -> None:
        with torch.no_grad():
            model(ids, attention_mask=am, use_cache=False)

    r_out: dict = {}

    def run_rhythm() -> None:
        r_out["r"] = rhythm(model, ids, rm, am, chunk_size=args.chunk_size)

    fwd, rh = [], []
    for _ in range(args.repeats):  # interleaved; the minimum is robust to CPU contention
        fwd.append(timed(forward, dev))
        rh.append(timed(run_rhythm, dev))
    t_fwd, c_fwd, m_fwd = (min(x[0] for x in fwd), min(x[1] for x in fwd), max(x[2] for x in fwd))
    t_rh, c_rh, m_rh = min(x[0] for x in rh), min(x[1] for x in rh), max(x[2] for x in rh)

    def runs(xs: list) -> str:
        return ", ".join(f"{x[0]:.2f}/{x[1]:.2f}" for x in xs)

    print(
        f"forward      T={n}: wall {t_fwd:8.2f} s  cpu {c_fwd:8.2f} s  (runs wall/cpu: "
        f"{runs(fwd)})  extra peak {_gb(m_fwd)}"
    )
    print(
        f"rhythm       T={n}: wall {t_rh:8.2f} s  cpu {c_rh:8.2f} s  (runs wall/cpu: "
        f"{runs(rh)})  extra peak {_gb(m_rh)}  layers {r_out['r'].layers}, "
        f"response {int(rm.sum())} rows"
    )
    print(
        f"ratio rhythm/forward: wall {t_rh / t_fwd:.3f}, cpu {c_rh / c_fwd:.3f} (min over runs; "
        f"target <= 1.5); rhythm extra memory {_gb(m_rh)} (target <= 2 GB at 8K)"
    )
    if args.naive_len:
        model.set_attn_implementation("eager")
        short, am_s = ids[:, : args.naive_len], am[:, : args.naive_len]

        def naive() -> None:
            with torch.no_grad():
                model(short, attention_mask=am_s, output_attentions=True, use_cache=False)

        t_nv, _, m_nv = timed(naive, dev)
        model.set_attn_implementation("sdpa")
        print(
            f"naive eager output_attentions T={args.naive_len}: {t_nv:8.2f} s  "
            f"extra peak {_gb(m_nv)} (all 28 layers' maps kept)"
        )
        rm_s = rm[:, : args.naive_len]
        t_rs, _, m_rs = timed(lambda: rhythm(model, short, rm_s, am_s), dev)
        print(
            f"rhythm       T={args.naive_len}: {t_rs:8.2f} s  extra peak {_gb(m_rs)} "
            "(same length as the naive baseline)"
        )


if __name__ == "__main__":
    main()
