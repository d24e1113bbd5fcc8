"""Cost of internal_entropies (docs/methods.md §1.2) on a random Qwen3-style model.

Three measurements, each in its own fresh subprocess (sequentially, same sizes, same
threads), printed together:

  ours   internal_entropies(model, ids): one forward with hooks + (L+1)+4L streamed
         unembeddings with softmax/entropy reduction, plus the cosines.
  bare   the unembedding GEMMs alone: (L+1)+4L × ceil(N/chunk) plain torch.mm of
         [chunk, d] x [d, V] into one reused buffer (same chunk as ours), on random
         activations. No forward, no softmax, nothing else: the floor of any exact method.
  naive  output_hidden_states + the full [L+1, N, V] logits stacked, full softmax, entr,
         sum (layer policies only: a lower bound on a naive full decomposition, which
         would also need the 4L module policies).

Time ratio = ours / bare (wall clock; CPU-time ratio also shown). Peak memory = the
rise of the process's resident set (VmHWM − VmRSS) during the measured call, after
resetting the high-water mark through /proc/self/clear_refs (Linux); it covers every
allocation (activations, buffers, results), not only torch's. If the naive run would
exceed --naive-max-gb it runs on fewer tokens and is extrapolated linearly (flagged).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

TARGET_RATIO = 1.3
MIB = 2**20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden-size", type=int, default=1024)
    p.add_argument("--vocab-size", type=int, default=151_936)
    p.add_argument("--layers", type=int, default=2, help="decoder blocks L")
    p.add_argument("--intermediate-size", type=int, default=None, help="default 3×hidden")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--tokens", type=int, default=2048, help="total tokens N = batch × T")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk-tokens", type=int, default=None, help="None: library default")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per method (min kept)")
    p.add_argument("--naive-max-gb", type=float, default=4.0,
                   help="cap on the naive run's estimated memory (fewer tokens above it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=["ours", "bare", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--full-tokens", type=int, default=None, help=argparse.SUPPRESS)


# --------------------------------------------------------------------------- memory probe
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident-set rise during a block (Linux high-water-mark reset, else getrusage)."""

    def __enter__(self) -> PeakRSS:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after clear_refs reset"
        except OSError:
            self.method = "ru_maxrss delta (lower bound: earlier peaks are not reset)"
        self.rss0 = _status_kib("VmRSS") or 0
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method.startswith("VmHWM"):
            peak = _status_kib("VmHWM") or 0
        else:
            peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, self.maxrss0)
        self.rise_mib = max(0, peak - self.rss0) / 1024


# --------------------------------------------------------------------------- workers
def _build(args: argparse.Namespace):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    d = args.hidden_size
    config = Qwen3Config(
        vocab_size=args.vocab_size, hidden_size=d,
        intermediate_size=args.intermediate_size or 3 * d,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=d // args.heads,
        max_position_embeddings=max(4096, args.tokens), tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(args.seed)
    model = Qwen3ForCausalLM(config).eval()
    return model


def _inputs(args: argparse.Namespace, n_tokens: int) -> torch.Tensor:
    """[batch, n_tokens // batch] ids: a prefix of the full run's ids (same seed)."""
    g = torch.Generator().manual_seed(args.seed + 1)
    full = args.full_tokens or n_tokens
    ids = torch.randint(0, args.vocab_size, (args.batch, full // args.batch), generator=g)
    return ids[:, : n_tokens // args.batch]


def _timed(fn, repeats: int) -> tuple[Any, float, float]:
    best_wall, best_cpu, result = math.inf, math.inf, None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return result, best_wall, best_cpu


def _phase_split(model, chunk: int, n_tok: int, n_proj: int) -> dict[str, float]:
    """Seconds per phase of the reduction, timed on one chunk and scaled to the full run."""
    from pipeline.model_access.unembed import _log_softmax_into

    w_t = model.get_output_embeddings().weight.detach().float().t()
    rows = min(chunk, n_tok)
    x = torch.randn(rows, w_t.shape[0])
    z = torch.empty(rows, w_t.shape[1])
    p = torch.empty_like(z)
    h = torch.empty(rows)
    phases = {
        "gemm": lambda: torch.mm(x, w_t, out=z),
        "log_softmax": lambda: _log_softmax_into(z, p),
        "exp": lambda: torch.exp(p, out=z),
        "p*logp": lambda: z.mul_(p),
        "row sum": lambda: torch.sum(z, dim=-1, out=h),
    }
    scale = n_proj * n_tok / rows
    out = {}
    for name, fn in phases.items():
        fn()
        _, wall, _ = _timed(fn, 2)
        out[name] = wall * scale
    return out


def _worker(args: argparse.Namespace) -> int:
    from pipeline.decomposition import internal_entropies
    from pipeline.model_access import UnembeddingEntropy

    if args.threads:
        torch.set_num_threads(args.threads)
    model = _build(args)
    n_layers = args.layers
    n_proj = (n_layers + 1) + 4 * n_layers
    n_tok = args.tokens
    ids = _inputs(args, n_tok)
    n_tok = ids.numel()
    chunk = UnembeddingEntropy(model.get_output_embeddings(),
                               chunk_tokens=args.chunk_tokens).chunk_tokens
    report: dict[str, Any] = {"method": args.worker, "tokens": n_tok, "chunk": chunk,
                              "threads": torch.get_num_threads()}
    warm = ids[:, :8]
    with torch.no_grad():
        if args.worker == "ours":
            internal_entropies(model, warm, chunk_tokens=args.chunk_tokens)
            with PeakRSS() as mem:
                res, wall, cpu = _timed(
                    lambda: internal_entropies(model, ids, chunk_tokens=args.chunk_tokens),
                    args.repeats)
            report["layer_entropy"] = res["layer"].permute(1, 0, 2).reshape(n_layers + 1, -1)
            _, fwd, _ = _timed(lambda: model.get_decoder()(input_ids=ids, use_cache=False), 1)
            report["forward_s"] = fwd
            report["phases_s"] = _phase_split(model, chunk, n_tok, n_proj)
        elif args.worker == "bare":
            w_t = model.get_output_embeddings().weight.detach().float().t()
            x = torch.randn(n_tok, args.hidden_size)
            buf = torch.empty(min(chunk, n_tok), args.vocab_size)

            def bare() -> None:
                for _ in range(n_proj):
                    for s in range(0, n_tok, chunk):
                        xs = x[s:s + chunk]
                        torch.mm(xs, w_t, out=buf[: xs.shape[0]])

            torch.mm(x[:8], w_t, out=buf[:8])
            with PeakRSS() as mem:
                _, wall, cpu = _timed(bare, args.repeats)
        else:
            w = model.get_output_embeddings().weight.detach()

            def naive() -> torch.Tensor:
                hs = model(input_ids=ids, output_hidden_states=True).hidden_states
                logits = torch.stack([h.reshape(-1, h.shape[-1]) @ w.T for h in hs])
                probs = torch.softmax(logits, dim=-1)
                return torch.special.entr(probs).sum(-1)  # [L+1, N]

            model(input_ids=warm)
            with PeakRSS() as mem:
                res, wall, cpu = _timed(naive, args.repeats)
            report["layer_entropy"] = res
    report.update(wall_s=wall, cpu_s=cpu, peak_rise_mib=mem.rise_mib, mem_method=mem.method)
    torch.save(report, args.worker_out)
    return 0


# --------------------------------------------------------------------------- driver
def _spawn(args: argparse.Namespace, method: str, tokens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.pt"
        cmd = [sys.executable, "-m", "pipeline.bench", "decomposition",
               "--worker", method, "--worker-out", str(out), "--tokens", str(tokens),
               "--full-tokens", str(args.tokens - args.tokens % args.batch)]
        for opt in ("hidden_size", "vocab_size", "layers", "intermediate_size", "heads",
                    "kv_heads", "batch", "chunk_tokens", "repeats", "threads", "seed"):
            val = getattr(args, opt)
            if val is not None:
                cmd += ["--" + opt.replace("_", "-"), str(val)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=os.environ.copy())
        print(f"  [{method}: subprocess done in {time.perf_counter() - t0:.1f} s]", flush=True)
        return torch.load(out, weights_only=True)


def run(args: argparse.Namespace) -> int:
    if args.worker:
        return _worker(args)
    n_layers, vocab, d = args.layers, args.vocab_size, args.hidden_size
    n_tok = args.tokens - args.tokens % args.batch
    n_proj = (n_layers + 1) + 4 * n_layers
    naive_bytes_per_tok = 4 * vocab * (3 * (n_layers + 1) + 1)
    naive_tok = n_tok
    if naive_bytes_per_tok * n_tok > args.naive_max_gb * 2**30:
        naive_tok = int(args.naive_max_gb * 2**30 // naive_bytes_per_tok)
        naive_tok = max(args.batch, naive_tok - naive_tok % max(args.batch, 64))
    print(f"decomposition benchmark: Qwen3-style random model, d={d}, V={vocab}, L={n_layers}, "
          f"N={n_tok} tokens (batch {args.batch}), {n_proj} projections = (L+1)+4L", flush=True)
    ours = _spawn(args, "ours", n_tok)
    bare = _spawn(args, "bare", n_tok)
    naive = _spawn(args, "naive", naive_tok)

    ratio, cpu_ratio = ours["wall_s"] / bare["wall_s"], ours["cpu_s"] / bare["cpu_s"]
    gflop = 2 * d * vocab * n_tok * n_proj / 1e9
    print(f"\nthreads {ours['threads']}, chunk_tokens {ours['chunk']}, "
          f"best of {args.repeats} call(s) per method, each in a fresh process")
    print(f"time   ours  {ours['wall_s']:8.2f} s wall  {ours['cpu_s']:8.2f} s cpu "
          f"(forward alone {ours['forward_s']:.2f} s)")
    print(f"time   bare  {bare['wall_s']:8.2f} s wall  {bare['cpu_s']:8.2f} s cpu "
          f"({gflop:.0f} GFLOP, {gflop / bare['wall_s']:.0f} GFLOP/s)")
    verdict = "OK" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(f"ratio  ours/bare = {ratio:.3f} wall, {cpu_ratio:.3f} cpu "
          f"(target <= {TARGET_RATIO}: {verdict})")
    phases = ours["phases_s"]
    header = "where the time goes" if ratio > TARGET_RATIO else "time split"
    accounted = sum(phases.values()) + ours["forward_s"]
    print(f"{header} (phases timed on one chunk, scaled): " + ", ".join(
        f"{k} {v:.2f} s" for k, v in phases.items())
          + f", forward {ours['forward_s']:.2f} s, hooks/gather/other "
          f"{ours['wall_s'] - accounted:+.2f} s")

    print(f"\npeak memory rise ({ours['mem_method']}):")
    print(f"  ours   {ours['peak_rise_mib']:9.0f} MiB  at N={n_tok}")
    print(f"  bare   {bare['peak_rise_mib']:9.0f} MiB  (one [chunk, V] buffer + activations)")
    scale = n_tok / naive["tokens"]
    extra = "" if scale == 1 else (
        f" at N={naive['tokens']} (capped by --naive-max-gb); x{scale:.2f} linear "
        f"extrapolation to N={n_tok}: {naive['peak_rise_mib'] * scale:.0f} MiB")
    print(f"  naive  {naive['peak_rise_mib']:9.0f} MiB{extra}")
    est = naive_bytes_per_tok * n_tok / MIB
    print(f"  (naive analytic at N={n_tok}: logits+probs+entr [L+1, N, V] fp32 + final "
          f"logits = {est:.0f} MiB; layer policies only)")
    ratio_mem = naive["peak_rise_mib"] * scale / max(ours["peak_rise_mib"], 1.0)
    print(f"  naive/ours = {ratio_mem:.1f}x")

    k = naive["tokens"]
    ours_l = ours["layer_entropy"][:n_layers, :k]
    naive_l = naive["layer_entropy"][:n_layers, :k]
    if args.batch == 1 or k == n_tok:
        diff = (ours_l - naive_l).abs().max().item()
        print(f"check: max |H_ours − H_naive| over h[0..L−1] = {diff:.2e} nats")
    return 0
