"""Benchmark: RL training step time and resident state, FSDP2 vs data parallel (DDP).

``python -m pipeline.bench fsdp [--size small] [--repeats 5] [--out f.json]``

One run spawns ``--world`` (2) CPU processes (gloo). Each builds the same random Qwen3-shaped
model (char tokenizer vocabulary; ``--size`` picks the shape, :data:`SIZES`) twice: one copy
stays whole (``rl.distributed: ddp``: :func:`pipeline.rl.trainer.update` all-reduces the
gradients), the other is sharded with :func:`pipeline.rl.fsdp.shard` (``fsdp2``) after an
unsharded copy is made for the rollout engine (:func:`pipeline.rl.fsdp.unsharded_copy`).
Both train on one fixed rollout batch (every process takes its strided share of the
groups, as the trainer does): one step = :func:`~pipeline.rl.trainer.prepare` +
:func:`~pipeline.rl.trainer.update` (GRPO, one AdamW update). After a warm-up step the two
modes alternate for ``--repeats`` steps; a step's time is the slowest process's. FSDP2's
per-step weight sync (``engine.load_weights(fsdp.full_tensors(model, dtype))`` into the
unsharded copy) is timed separately. Prints s/step (median) and the fsdp2/ddp ratio,
the training state resident per process (:func:`pipeline.rl.fsdp.resident_bytes`:
parameters and AdamW state; gradients are freed after each step) and its ratio, the sync
time, and the largest parameter difference between the two modes after the same steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: Model and batch shapes: Qwen3 blocks (GQA, q/k norm), tied embeddings, char vocabulary.
#: ``groups`` × ``group_size`` rows in all (split over the processes); prompt and
#: response lengths are drawn uniformly from the given ranges.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=16, groups=4, group_size=4, prompt=(8, 16),
                 response=(16, 32)),
    "small": dict(hidden_size=256, intermediate_size=768, num_layers=6, num_heads=8,
                  num_kv_heads=4, head_dim=32, groups=8, group_size=4, prompt=(32, 64),
                  response=(64, 128)),
    "medium": dict(hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8,
                   num_kv_heads=4, head_dim=64, groups=4, group_size=4, prompt=(32, 64),
                   response=(64, 128)),
}
MODEL_KEYS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
              "head_dim")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per mode")
    p.add_argument("--world", type=int, default=2, help="processes (gloo on CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="sequences per forward/backward (RLConfig.micro_batch_size)")
    p.add_argument("--sync-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of the rollout engine's unsharded copy (rl.sample_dtype)")
    p.add_argument("--out", default=None, help="write the results as JSON here")


def model_spec(size: str) -> dict[str, Any]:
    """The :func:`pipeline.models.builtin.build_model` spec of a size."""
    s = SIZES[size]
    return dict(arch="qwen3", **{k: s[k] for k in MODEL_KEYS}, max_position_embeddings=512,
                rope_theta=10000.0, tie_word_embeddings=True, seed=0)


def fixed_rollout(size: str, vocab: int, pad: int, seed: int = 11):
    """A deterministic right-padded rollout batch of the size's groups × group_size rows,
    rewards alternating within every group (so every group has a learning signal)."""
    s = SIZES[size]
    n = s["groups"] * s["group_size"]
    return random_rollout(groups=s["groups"], group_size=s["group_size"], prompt=s["prompt"],
                          response=s["response"], vocab=vocab, pad=pad,
                          rewards=(torch.arange(n) % 2).float(),
                          finished=torch.ones(n, dtype=torch.bool), seed=seed)


def random_rollout(*, groups: int, group_size: int, prompt: tuple[int, int],
                   response: tuple[int, int], vocab: int, pad: int, rewards: torch.Tensor,
                   finished: torch.Tensor, seed: int = 11):
    """A right-padded :class:`~pipeline.rl.trainer.Rollout` of ``groups × group_size``
    rows with random token ids in ``[3, vocab)``; prompt and response lengths drawn
    uniformly from the inclusive ranges ``prompt`` and ``response`` (seeded)."""
    from pipeline.rl.trainer import Rollout

    gen = torch.Generator().manual_seed(seed)
    n = groups * group_size
    p_len = torch.randint(prompt[0], prompt[1] + 1, (n,), generator=gen)
    r_len = torch.randint(response[0], response[1] + 1, (n,), generator=gen)
    width = int((p_len + r_len).max())
    ids = torch.full((n, width), pad, dtype=torch.long)
    am = torch.zeros((n, width), dtype=torch.long)
    rm = torch.zeros((n, width), dtype=torch.bool)
    for i in range(n):
        p, r = int(p_len[i]), int(r_len[i])
        ids[i, :p + r] = torch.randint(3, vocab, (p + r,), generator=gen)
        am[i, :p + r] = 1
        rm[i, p:p + r] = True
    return Rollout(input_ids=ids, attention_mask=am, response_mask=rm, rewards=rewards,
                   lengths=r_len, finished=finished, group_size=group_size, texts=[""] * n)


def local_share(ro, rank: int, world: int):
    """Process ``rank``'s strided share of the groups (as the trainer shards prompts)."""
    from pipeline.rl.distributed import shard
    from pipeline.rl.trainer import Rollout

    groups = shard(list(range(ro.rewards.numel() // ro.group_size)), rank, world)
    rows = torch.tensor([g * ro.group_size + j for g in groups for j in range(ro.group_size)])
    return Rollout(ro.input_ids[rows], ro.attention_mask[rows], ro.response_mask[rows],
                   ro.rewards[rows], ro.lengths[rows], ro.finished[rows], ro.group_size,
                   [ro.texts[i] for i in rows.tolist()])


def _worker(rank: int, world: int, port: int, a: argparse.Namespace, out: str) -> None:
    """One process: time both modes on its share of the batch; writes ``rank{r}.json``."""
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    torch.set_num_threads(a.threads)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         init_method=f"tcp://127.0.0.1:{port}")
    from pipeline.models.builtin import build_model
    from pipeline.models.tokenizer import build_char_tokenizer
    from pipeline.rl import fsdp
    from pipeline.rl.config import RLConfig
    from pipeline.rl.distributed import current
    from pipeline.rl.rollout_engine import StaticDecoderEngine
    from pipeline.rl.trainer import make_optimizer, prepare, update

    s = SIZES[a.size]
    tok = build_char_tokenizer()
    spec = model_spec(a.size)
    cfg = RLConfig(method="grpo", prompts_per_step=s["groups"], group_size=s["group_size"],
                   updates_per_batch=1, micro_batch_size=a.micro_batch, lr=1e-4, seed=0)
    ro = local_share(fixed_rollout(a.size, len(tok), tok.pad_token_id), rank, world)
    sync_dtype = getattr(torch, a.sync_dtype)

    ddp_model = build_model(spec, tok, seed=0).eval()
    fsdp_model = build_model(spec, tok, seed=0).eval()
    engine = StaticDecoderEngine(fsdp.unsharded_copy(fsdp_model, sync_dtype), tok,
                                 owns_weights=True)
    fsdp.shard(fsdp_model)
    runs = {"ddp": (ddp_model, current("ddp")), "fsdp2": (fsdp_model, current("fsdp2"))}
    opts = {m: make_optimizer(model, cfg) for m, (model, _) in runs.items()}

    def step(mode: str) -> float:
        model, dist = runs[mode]
        dist.barrier()
        t0 = time.perf_counter()
        update(model, opts[mode], ro, prepare(model, ro, cfg, 1, dist), cfg, 1, dist=dist)
        return time.perf_counter() - t0

    def sync() -> float:
        runs["fsdp2"][1].barrier()
        t0 = time.perf_counter()
        engine.load_weights(fsdp.full_tensors(fsdp_model, sync_dtype))
        return time.perf_counter() - t0

    for mode in runs:  # warm-up (also creates the AdamW state)
        step(mode)
    sync()
    times: dict[str, list[float]] = {"ddp": [], "fsdp2": [], "sync": []}
    for _ in range(a.repeats):
        for mode in runs:
            times[mode].append(step(mode))
        times["sync"].append(sync())
    diff = moved = 0.0  # both modes took the same steps on the same batch
    ref = dict(ddp_model.named_parameters())
    init = dict(build_model(spec, tok, seed=0).named_parameters())
    for name, t in fsdp.full_tensors(fsdp_model, torch.float32):
        diff = max(diff, float((t - ref[name].detach()).abs().max()))
        moved = max(moved, float((ref[name] - init[name]).detach().abs().max()))
    res = {"rank": rank, "times": times, "max_param_diff": diff, "max_param_change": moved,
           "resident_bytes": {m: fsdp.resident_bytes(model, opts[m])
                              for m, (model, _) in runs.items()},
           "params": sum(p.numel() for p in ddp_model.parameters()),
           "rows": int(ro.input_ids.shape[0]), "tokens": int(ro.attention_mask.sum()),
           "response_tokens": int(ro.response_mask.sum())}
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    torch.distributed.destroy_process_group()


def summarise(ranks: list[dict[str, Any]], a: argparse.Namespace) -> dict[str, Any]:
    """Per-step times as the slowest process's, medians, ratios fsdp2 / ddp."""
    slow = {k: [max(xs) for xs in zip(*(r["times"][k] for r in ranks), strict=True)]
            for k in ranks[0]["times"]}
    med = {k: statistics.median(v) for k, v in slow.items()}
    resident = {m: [r["resident_bytes"][m] for r in ranks] for m in ("ddp", "fsdp2")}
    return {
        "size": a.size, "spec": model_spec(a.size), "world": len(ranks),
        "threads_per_process": a.threads, "repeats": a.repeats, "sync_dtype": a.sync_dtype,
        "params": ranks[0]["params"],
        "rows_per_rank": [r["rows"] for r in ranks],
        "tokens_per_rank": [r["tokens"] for r in ranks],
        "response_tokens_per_rank": [r["response_tokens"] for r in ranks],
        "step_s": slow, "median_s": med,
        "ratio_step": med["fsdp2"] / med["ddp"],
        "ratio_step_with_sync": (med["fsdp2"] + med["sync"]) / med["ddp"],
        "resident_bytes": resident,
        "ratio_resident": max(resident["fsdp2"]) / max(resident["ddp"]),
        "max_param_diff": max(r["max_param_diff"] for r in ranks),
        "max_param_change": max(r["max_param_change"] for r in ranks),
    }


def format_table(res: dict[str, Any]) -> str:
    """The printed summary of :func:`summarise`'s result."""
    med, res_b = res["median_s"], res["resident_bytes"]
    mib = 2.0 ** 20
    lines = [
        f"model {res['size']} ({res['params'] / 1e6:.2f} M params), {res['world']} processes "
        f"× {res['threads_per_process']} thread(s), gloo; per process "
        f"{res['rows_per_rank'][0]} rows, {res['tokens_per_rank'][0]} tokens; median of "
        f"{res['repeats']} steps (prepare + update), slowest process",
        f"{'mode':<8} {'s/step':>8} {'/ ddp':>7} {'resident MiB/rank':>18} {'/ ddp':>7}",
    ]
    ref_b = max(res_b["ddp"])
    for mode in ("ddp", "fsdp2"):
        b = max(res_b[mode])
        lines.append(f"{mode:<8} {med[mode]:8.3f} {med[mode] / med['ddp']:7.2f} "
                     f"{b / mib:18.2f} {b / ref_b:7.2f}")
    lines.append(f"fsdp2 weight sync ({res['sync_dtype']} unsharded copy): {med['sync']:.4f} s"
                 f"/step; fsdp2 step + sync / ddp step = {res['ratio_step_with_sync']:.2f}")
    lines.append(f"max |Δθ| fsdp2 vs ddp after the same steps: {res['max_param_diff']:.3g} "
                 f"(largest change from the initial weights {res['max_param_change']:.3g})")
    return "\n".join(lines)


def run(a: argparse.Namespace) -> int:
    import torch.multiprocessing as mp

    from pipeline.rl.distributed import free_port

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mp.spawn(_worker, args=(a.world, free_port(), a, tmp), nprocs=a.world, join=True)
        wall = time.perf_counter() - t0
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(a.world)]
    res = summarise(ranks, a)
    res["wall_s"] = wall
    print(format_table(res))
    print(f"wall time {wall:.1f} s")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0
