"""Data parallelism of the RL trainer over ``torch.distributed`` (``accelerate launch``).

Scheme (no DDP wrapper): every process holds the full model and optimizer; each step's
prompts are split across the processes (process ``r`` of ``W`` takes prompts
``r, r+W, r+2W, …``) and each samples its prompts' whole groups, so group statistics stay
local. Batch-wide statistics (REINFORCE++ whitening, the token count that normalises the
token-mean loss, logged metrics) are all-reduced or all-gathered; after the backward of a
minibatch every gradient is summed across processes with an explicit ``all_reduce``, and
every process clips and steps identically, so the weights stay identical. A DDP wrapper
would not do here: BuPO's IPA phase stops the forward after block k and attention credit
reads hooks, neither of which DDP's reducer follows.

With the strided split, local minibatch ``u`` of every process (its groups
``[u·m, (u+1)·m)``, ``m = prompts_per_step / (updates_per_batch·W)``) is exactly the
single-process minibatch ``u``, so one update on ``W`` processes equals the single-process
update on the whole batch up to float summation order.

``rl.distributed: fsdp2`` keeps this scheme (prompt split, batch-wide statistics) but
shards the model with FSDP2 (:mod:`pipeline.rl.fsdp`), which sums the gradients itself.
accelerate's own FSDP and DeepSpeed launches are refused (:func:`check_launch`): the
trainer shards the model itself and those plugins would wrap it a second time (or,
on CPU, silently do nothing).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor

#: Gradient all-reduce bucket size (bytes of one flattened bucket).
BUCKET_BYTES = 128 * 2**20
#: Collective timeout: process 0 writes checkpoints (model + AdamW state) and the final
#: model while the others wait in their next collective, which may take minutes.
TIMEOUT = timedelta(hours=1)


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


MODES = ("ddp", "fsdp2")


def check_launch() -> None:
    """One-line ``SystemExit`` under an accelerate FSDP or DeepSpeed launch: the trainer
    shards the model itself (``rl.distributed: fsdp2``) or replicates it (``ddp``)."""
    for env, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if _flag(env):
            raise SystemExit(
                f"rl: accelerate's {name} plugin is not supported: the RL trainer shards the "
                "model itself; use rl.distributed: fsdp2 (or ddp) with a MULTI_GPU/MULTI_CPU "
                "accelerate config")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a local rendezvous (MASTER_PORT / init_method)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_split(prompts_per_step: int, updates_per_batch: int, world: int) -> None:
    """ValueError unless every process gets the same whole groups for every minibatch."""
    if prompts_per_step % (updates_per_batch * world):
        raise ValueError(
            f"rl: prompts_per_step={prompts_per_step} must be a multiple of updates_per_batch "
            f"× processes = {updates_per_batch}×{world} for multi-process training")


def shard(indices: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Process ``rank``'s share of a step's prompts: every ``world``-th from ``rank``."""
    return list(indices[rank::world])


def rank_seed(seed: int, rank: int) -> int:
    """A per-process seed; process 0 keeps ``seed`` (single-process runs are unchanged)."""
    if rank == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


@dataclass(frozen=True)
class Dist:
    """The process group as the trainer sees it; ``Dist()`` is one process (every
    collective is the identity, so single-process results are unchanged bit for bit).
    ``device``: this process's device (CUDA of its local rank, else CPU), used for the
    model and for collectives."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None
    fsdp: bool = False  # FSDP2 shards the model (:mod:`pipeline.rl.fsdp`)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def _to(self, x: Tensor) -> Tensor:
        return x.to(self.device) if self.device is not None else x

    def all_reduce(self, x: Tensor, op: str = "sum") -> Tensor:
        """A reduced copy of ``x`` (sum or max) on ``x``'s device."""
        if not self.enabled:
            return x
        y = self._to(x.clone())
        red = torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX
        torch.distributed.all_reduce(y, op=red)
        return y.to(x.device)

    def sum(self, *values: float) -> list[float]:
        """Python numbers summed over the processes (float64)."""
        if not self.enabled:
            return list(values)
        return self.all_reduce(torch.tensor(values, dtype=torch.float64)).tolist()

    def any(self, flag: bool) -> bool:
        return bool(self.sum(float(flag))[0] > 0) if self.enabled else bool(flag)

    def gather_groups(self, x: Tensor, group_size: int) -> Tensor:
        """A per-response tensor ``[n, …]`` (this process's groups, contiguous) gathered in
        the order of the whole step's batch (global group ``g`` = process ``g mod W``'s
        group ``g div W``), on ``x``'s device."""
        if not self.enabled:
            return x
        dtype = x.dtype
        y = self._to(x.to(torch.uint8) if dtype == torch.bool else x).contiguous()
        parts = [torch.empty_like(y) for _ in range(self.world)]
        torch.distributed.all_gather(parts, y)
        out = torch.stack([p.reshape(-1, group_size, *p.shape[1:]) for p in parts], dim=1)
        out = out.reshape(-1, *x.shape[1:]).to(x.device)
        return out.bool() if dtype == torch.bool else out

    def local_groups(self, x: Tensor, group_size: int) -> Tensor:
        """Inverse of :meth:`gather_groups`: this process's rows of a whole-batch tensor."""
        if not self.enabled:
            return x
        g = x.reshape(-1, self.world, group_size, *x.shape[1:])[:, self.rank]
        return g.reshape(-1, *x.shape[1:])

    def masked_mean(self, x: Tensor | None, mask: Tensor) -> float:
        """Mean of ``x[mask]`` over all processes (NaN when empty or ``x`` is None)."""
        s = float(x[mask].double().sum()) if x is not None else 0.0
        s, n = self.sum(s, float(mask.sum()))
        return s / n if x is not None and n > 0 else float("nan")

    def sync_grads(self, params: Iterable[Tensor]) -> None:
        """Sum every parameter's gradient over the processes (in place). A parameter with
        no gradient on some process counts as zero there; one with no gradient on every
        process keeps ``grad=None`` (the optimizer skips it, as in one process)."""
        if not self.enabled:
            return
        params = list(params)
        has = self.all_reduce(torch.tensor([float(p.grad is not None) for p in params]))
        live = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        buckets: dict[tuple[torch.device, torch.dtype], list[list[Tensor]]] = {}
        filled: dict[tuple[torch.device, torch.dtype], int] = {}
        for p in live:
            key, nbytes = (p.grad.device, p.grad.dtype), p.grad.numel() * p.grad.element_size()
            rows = buckets.setdefault(key, [[]])
            if rows[-1] and filled.get(key, 0) + nbytes > BUCKET_BYTES:
                rows.append([])
                filled[key] = 0
            rows[-1].append(p.grad)
            filled[key] = filled.get(key, 0) + nbytes
        for rows in buckets.values():
            for grads in rows:
                flat = self._to(torch.cat([g.reshape(-1) for g in grads]))
                torch.distributed.all_reduce(flat)
                offset = 0
                for g in grads:
                    g.copy_(flat[offset:offset + g.numel()].view_as(g))
                    offset += g.numel()

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def current(mode: str = "ddp") -> Dist:
    """The already initialised process group, or one process (initialises nothing). The
    device is the current CUDA device under NCCL (accelerate sets it to the local rank's
    GPU), else the CPU."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return Dist()
    world = torch.distributed.get_world_size()
    if world == 1:
        return Dist()
    if "nccl" in str(torch.distributed.get_backend()):
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return Dist(torch.distributed.get_rank(), world, device, fsdp=mode == "fsdp2")


def init(mode: str = "ddp") -> Dist:
    """The process group of a multi-process launch (``accelerate launch`` / torchrun:
    ``WORLD_SIZE > 1``), initialised through ``accelerate.PartialState`` (NCCL and the
    local rank's GPU, or gloo on CPU when there is no GPU), or one process. ``mode``:
    ``ddp`` or ``fsdp2`` (:data:`MODES`; one process ignores it). Refuses accelerate's
    FSDP and DeepSpeed launches (:func:`check_launch`). Idempotent; keeps the thread
    count."""
    if mode not in MODES:
        raise ValueError(f"rl.distributed: unknown mode {mode!r}; known: {list(MODES)}")
    check_launch()
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not initialised and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not initialised:
        from accelerate import PartialState

        threads = torch.get_num_threads()
        cpu = (not torch.cuda.is_available() or _flag("ACCELERATE_USE_CPU")
               or _flag("PIPELINE_TRAIN_CPU"))  # the DAG's CPU processes (rl.processes)
        PartialState(cpu=cpu, timeout=TIMEOUT)
        torch.set_num_threads(threads)
    return current(mode)
