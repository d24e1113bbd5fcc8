"""FSDP2 sharding of the RL trainer's model (``rl.distributed: fsdp2``; docs/architecture.md §7).

Layout: ``fully_shard`` on every decoder block, then on the root (the causal LM: its own
group holds the embedding, the final norm and ``lm_head``, so tied embeddings share one
group). Parameters, gradients and AdamW state live as fp32 shards (the master weights,
1/W of the model per process); ``compute_dtype`` (``rl.trainer.compute_dtype``) is the
dtype blocks are all-gathered in for forward and backward
(``MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=fp32)``): bf16 compute
keeps Adam updates of ~1e-6 that bf16 masters would round away.

Gradients are *summed* over processes (``set_gradient_divide_factor(1.0)`` with
``set_force_sum_reduction_for_comms(True)``): the loss is already divided by the global
token count (docs/methods.md §2), exactly as the data-parallel path sums its all-reduce.
Every micro-batch's backward reduce-scatters into the fp32 gradient shards (which
accumulate); skipping the sync (``set_requires_gradient_sync(False)``) would keep the
whole model's unsharded gradients until the last micro-batch, which is what sharding is
there to avoid.

Every training forward runs *inside the root's forward* (:func:`rooted`): a method
registered with ``register_fsdp_forward_method`` calls the model-access runner, so the
root's pre-/post-forward hooks unshard and reshard its parameters and install the
backward hooks. Calling ``model.model`` or ``lm_head`` outside it mixes plain tensors and
DTensors. The runner's truncated forward (BuPO's π^k, ``stop_after=k``) never
all-gathers the blocks above k and gives them no gradient.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from pipeline.model_access import find_layout

T = TypeVar("T")
ROOT_METHOD = "rl_call"


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` is an FSDP2 root (:func:`shard`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _call(self: nn.Module, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return fn(self, *args, **kwargs)


def shard(model: nn.Module, *, compute_dtype: torch.dtype | None = None,
          checkpointing: bool = False, mesh: Any = None) -> nn.Module:
    """Shard ``model`` in place with FSDP2 over the default process group (or ``mesh``).

    The parameters become fp32 masters first. ``compute_dtype`` None or fp32 computes in
    fp32; ``checkpointing`` recomputes each block in backward (composable
    ``checkpoint``, which keeps module names, so checkpoints and the runner see the
    original model). Returns ``model`` (now an FSDP module) with :data:`ROOT_METHOD`
    registered as a root forward method."""
    from torch.distributed._composable import checkpoint as checkpoint_block
    from torch.distributed.fsdp import (
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    layout = find_layout(model)
    model.float()
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32,
                              cast_forward_inputs=True)
    for b in layout.blocks:
        if checkpointing:
            checkpoint_block(b.block)
        fully_shard(b.block, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    root_mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32,
                                   cast_forward_inputs=False)
    fully_shard(model, mesh=mesh, mp_policy=root_mp)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    setattr(model, ROOT_METHOD, _call.__get__(model, type(model)))
    register_fsdp_forward_method(model, ROOT_METHOD)
    return model


def rooted(model: nn.Module, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(model, *args, **kwargs)``, inside the FSDP2 root forward when ``model`` is
    sharded (a plain call otherwise)."""
    if is_sharded(model):
        return getattr(model, ROOT_METHOD)(fn, *args, **kwargs)
    return fn(model, *args, **kwargs)


def grad_norm(params: list[Tensor], max_norm: float) -> Tensor:
    """``clip_grad_norm_`` over (possibly DTensor) parameters; the total norm as a plain
    tensor (a DTensor norm is gathered with ``full_tensor()``)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


def full_tensors(model: nn.Module, dtype: torch.dtype | None = None
                 ) -> Iterator[tuple[str, Tensor]]:
    """``(name, full tensor)`` of every parameter, gathered one at a time (a collective:
    every process must iterate to the end, in the same order), cast to ``dtype``."""
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        yield name, (t.detach().to(dtype) if dtype is not None else t.detach())


@torch.no_grad()
def copy_named(module: nn.Module, named_tensors: Iterable[tuple[str, Tensor]]) -> set[str]:
    """Copy ``(name, tensor)`` pairs into ``module``'s parameters of those names (cast to
    each parameter's dtype and device); returns the names copied. Unknown name → KeyError."""
    params = dict(module.named_parameters())
    seen = set()
    for name, t in named_tensors:
        if name not in params:
            raise KeyError(f"unknown parameter {name!r}")
        params[name].copy_(t)
        seen.add(name)
    return seen


def unsharded_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A plain (unsharded) deep copy of ``model`` (call before :func:`shard`, with the
    model on the CPU), in ``dtype``: the rollout engine's weights under FSDP2."""
    out = copy.deepcopy(model)
    if dtype is not None:
        out.to(dtype)
    return out.eval().requires_grad_(False)


def mesh(dist: Any) -> Any:
    """The 1-D device mesh of the trainer's process group on its device type (CPU under
    gloo even where CUDA is visible; FSDP2's default would pick the accelerator)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(dist.device.type, (dist.world,))


@torch.no_grad()
def consolidate(model: nn.Module, full: nn.Module | None, *, main: bool) -> nn.Module:
    """The trained weights as one plain fp32 model on the CPU of process 0 (a collective:
    every process gathers; the others drain the gather and get ``model`` back).
    ``full``: the unsharded copy to fill (``None``: a fresh CPU deep copy is not possible
    from a sharded model, so one is required when ``main``)."""
    gathered = full_tensors(model, torch.float32)
    if not main:
        for _ in gathered:
            pass
        return model
    if full is None:
        raise ValueError("consolidate: process 0 needs the unsharded copy")
    full.to(device="cpu", dtype=torch.float32)
    copy_named(full, gathered)
    return full


def resident_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes of this process's parameters (local shards of DTensors), their gradients and
    the optimizer's tensor state: the training state it holds."""
    def local(t: Tensor) -> Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    total = 0
    for p in model.parameters():
        total += local(p).numel() * p.element_size()
        if p.grad is not None:
            total += local(p.grad).numel() * p.grad.element_size()
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if isinstance(v, Tensor) and v.dim() > 0:
                    total += local(v).numel() * v.element_size()
    return total


@contextlib.contextmanager
def timed(out: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall time of the block to ``out[key]`` (seconds)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        out[key] = out.get(key, 0.0) + time.perf_counter() - t0
