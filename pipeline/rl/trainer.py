"""A compact GRPO-family training loop on plain torch (docs/methods.md §2, §3).

One step: sample ``prompts_per_step`` problems (deterministic from seed and step),
``group_size`` rollouts each with :func:`pipeline.generation.generate`, rewards from the
verifier, advantages by method, old log-probs with no grad on the same weights (plus γ
for attention credit), then ``updates_per_batch`` AdamW updates on disjoint minibatches
with the clipped surrogate. BuPO optimises π^k (IPA) for steps 1..s_inter, then π_θ,
with the same optimizer. No KL, no entropy bonus; dropout off (the model stays in eval
mode; gradients do not depend on it).

Why not TRL: it is not a dependency, and BuPO / token credit would have to override
private ``GRPOTrainer`` hooks that change between releases; the loop below is ~400 lines.

Multi-process (``accelerate launch`` with DDP, or any launch with ``WORLD_SIZE > 1``):
data parallel without a DDP wrapper, see :mod:`pipeline.rl.distributed`. Each process
samples whole groups of its share of the step's prompts with its own seed; REINFORCE++
whitening, the token-mean divisor and the logged metrics use the whole batch; gradients
are all-reduced after each minibatch's backward and every process steps identically.
Only process 0 writes checkpoints, the model, history.json and tracking metrics.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.models.provision import atomic_dir
from pipeline.rl import bupo, distributed, fsdp
from pipeline.rl.checkpoint import (
    atomic_write,
    load_checkpoint,
    load_sharded,
    save_checkpoint,
    save_sharded,
    set_aside,
    set_rng_states,
)
from pipeline.rl.config import RLConfig
from pipeline.rl.credit import credit_gamma, token_advantages
from pipeline.rl.distributed import Dist, check_split, rank_seed, shard
from pipeline.rl.logprobs import policy_stats
from pipeline.rl.losses import (
    group_advantages,
    policy_loss_stats,
    reinforce_pp_advantages,
    rloo_advantages,
)
from pipeline.rl.rollout import (  # noqa: F401  (Rollout, rollout: importable from here too)
    PromptFn,
    RewardFn,
    Rollout,
    _chunks,
    _micro,
    _step_seed,
    rollout,
)
from pipeline.rl.rollout_engine import RolloutEngine, StaticDecoderEngine

#: Config keys that may change between a checkpoint and its resumption.
RESUMABLE_CHANGES = frozenset({"steps", "save_every", "diag_every", "gen_batch_size",
                               "sample_dtype",
                               "micro_batch_size", "chunk_tokens",
                               "activation_checkpointing"})
TIME_KEYS = ("step_time", "gen_time", "update_time", "sync_time")


# --------------------------------------------------------------------------- tasks
def task_fns(task: str, tokenizer: PreTrainedTokenizerBase,
             style: str = "builtin") -> tuple[PromptFn, RewardFn]:
    """Prompt and 0/1 reward functions over benchmark items (:mod:`pipeline.evaluation.items`:
    ``countdown`` dicts with numbers/target, ``math`` dicts with problem/answer)."""
    from pipeline.evaluation import items as bench

    return (lambda item: bench.render_prompt(task, item, tokenizer, style),
            lambda item, text: float(bench.score(task, item, text)))


def step_indices(n: int, step: int, per_step: int, seed: int) -> list[int]:
    """Problem indices of a 1-based step: consecutive slices of per-epoch permutations
    seeded by (seed, epoch), so every step is reproducible without any saved state."""
    perms: dict[int, list[int]] = {}
    out = []
    for pos in range((step - 1) * per_step, step * per_step):
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=gen).tolist()
        out.append(perms[epoch][i])
    return out


# --------------------------------------------------------------------------- update
def make_optimizer(model: nn.Module, cfg: RLConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (one optimizer for both BuPO phases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)


def advantages_for(cfg: RLConfig, ro: Rollout, dist: Dist | None = None) -> Tensor:
    """Per-response advantages of this process's groups. Group-wise methods are local;
    REINFORCE++ whitens over the whole step's batch (gathered from every process)."""
    dist = dist or Dist()
    if cfg.advantage == "reinforce_pp" and dist.enabled:
        whole = Rollout(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                        response_mask=ro.response_mask,
                        rewards=dist.gather_groups(ro.rewards, ro.group_size),
                        lengths=dist.gather_groups(ro.lengths, ro.group_size),
                        finished=ro.finished, group_size=ro.group_size, texts=ro.texts)
        return dist.local_groups(advantages_for(cfg, whole), ro.group_size)
    if cfg.advantage == "rloo":
        return rloo_advantages(ro.rewards, ro.group_size)
    if cfg.advantage == "reinforce_pp":
        return reinforce_pp_advantages(ro.rewards, ro.group_size,
                                       lengths=ro.lengths if cfg.rpp_token_weighted else None,
                                       group_baseline=cfg.rpp_group_baseline)
    return group_advantages(ro.rewards, ro.group_size)


def _pad(x: Tensor, width: int, value: float = 0.0) -> Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def compute_context(cfg: RLConfig, dist: Dist, device: torch.device
                    ) -> contextlib.AbstractContextManager[Any]:
    """Where the training forwards run in ``cfg.compute_dtype`` over fp32 weights: FSDP2's
    mixed-precision policy does it under ``fsdp2`` (nothing here); one process or DDP
    uses ``torch.autocast``."""
    dtype = cfg.compute_dtype
    if dist.fsdp or dtype in (None, "float32"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


@torch.no_grad()
def prepare(model: nn.Module, ro: Rollout, cfg: RLConfig, step: int,
            dist: Dist | None = None) -> dict[str, Any]:
    """Old log-probs (of the policy the phase trains), diagnostics and token advantages,
    all with no grad on the rollout weights (this process's groups under ``dist``)."""
    dist = dist or Dist()
    ph = cfg.phase(step)
    need = bupo.needed_stats(ph, bupo=cfg.uses_bupo,
                             diagnostics=step % cfg.diag_every == 0 or step == 1,
                             entropy_credit=cfg.credit == "entropy")
    n, t = ro.input_ids.shape
    keys = ("logp", "entropy", "logp_k", "entropy_k", "cos_kL", "entropy_km1")
    acc: dict[str, list[Tensor]] = {k: [] for k in (*keys, "gamma")}
    gen = torch.Generator().manual_seed(rank_seed(_step_seed(cfg.seed, step, 1), dist.rank))
    for rows in _chunks(torch.arange(n, device=ro.input_ids.device), cfg.micro_batch_size):
        ids, am, rm, _ = _micro(ro, rows)
        with compute_context(cfg, dist, ids.device):
            st = fsdp.rooted(model, policy_stats, ids, am, rm, layer=cfg.bupo_layer, **need,
                             apply_final_norm=cfg.ipa_final_norm,
                             temperature=cfg.temperature, chunk_tokens=cfg.chunk_tokens)
        for k in keys:
            v = getattr(st, k)
            if v is not None:
                acc[k].append(_pad(v, t - 1))
        if cfg.credit:
            g = fsdp.rooted(model, credit_gamma, ids, am, rm, cfg.credit,
                            gamma_amp=cfg.gamma_amp, alpha=cfg.alpha, shift=cfg.credit_shift,
                            top_frac=cfg.top_frac, entropy=st.entropy, generator=gen,
                            rhythm_kwargs=cfg.rhythm)
            acc["gamma"].append(_pad(g, t, 1.0))
    out = {k: torch.cat(v) if v else None for k, v in acc.items()}
    out["token_mask"] = ro.response_mask[:, 1:]
    out["old_logp"] = bupo.old_logprobs(out, ph)
    adv = advantages_for(cfg, ro, dist)
    out["advantages"] = adv
    out["token_adv"] = token_advantages(adv.to(ro.input_ids.device), out["gamma"], t - 1)
    return out


def _masked_mean(x: Tensor | None, mask: Tensor) -> float:
    if x is None or not mask.any():
        return math.nan
    return float(x[mask].float().mean())


def update(model: nn.Module, optimizer: torch.optim.Optimizer, ro: Rollout, prep: dict[str, Any],
           cfg: RLConfig, step: int, *, backward: Callable[[Tensor], None] = Tensor.backward,
           dist: Dist | None = None) -> dict[str, float]:
    """``updates_per_batch`` optimizer steps on disjoint minibatches (by prompt group).
    Non-finite loss or gradient norm → FloatingPointError naming the step and method.

    Under ``dist`` (several processes, each with its share of the groups, see
    :mod:`.distributed`): the token-mean divisor is the minibatch's token count over all
    processes, gradients are summed over the processes before clipping, the returned
    statistics cover the whole batch, and every process raises together."""
    dist = dist or Dist()
    ph = cfg.phase(step)
    n_groups = ro.rewards.numel() // ro.group_size
    if dist.enabled and n_groups % cfg.updates_per_batch:
        raise ValueError(f"rl: {n_groups} groups per process do not split into "
                         f"updates_per_batch={cfg.updates_per_batch} minibatches")
    per_mb = n_groups // cfg.updates_per_batch
    device = ro.input_ids.device
    params = [p for g in optimizer.param_groups for p in g["params"]]
    tot: dict[str, float] = {"loss": 0.0, "clip_frac": 0.0, "grad_norm": 0.0, "ratio_mean": 0.0}
    n_tok_all = 0
    for u in range(cfg.updates_per_batch):
        rows = torch.arange(u * per_mb * ro.group_size, (u + 1) * per_mb * ro.group_size,
                            device=device)
        n_tok = int(prep["token_mask"][rows].sum())
        if dist.enabled:
            n_tok = int(dist.sum(n_tok)[0])
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        bad: str | None = None
        for mrows in _chunks(rows, cfg.micro_batch_size):
            ids, am, rm, w = _micro(ro, mrows)
            with compute_context(cfg, dist, ids.device):
                logp = fsdp.rooted(model, bupo.train_logprobs, ids, am, rm, step_phase=ph,
                                   layer=cfg.bupo_layer, apply_final_norm=cfg.ipa_final_norm,
                                   temperature=cfg.temperature, chunk_tokens=cfg.chunk_tokens)
            st = policy_loss_stats(logp, prep["old_logp"][mrows, :w - 1],
                                   prep["token_adv"][mrows, :w - 1],
                                   prep["token_mask"][mrows, :w - 1], clip_low=cfg.clip_low,
                                   clip_high=cfg.clip_high, num_tokens=max(n_tok, 1))
            if not torch.isfinite(st.loss):
                bad = (f"rl: non-finite loss {st.loss.item()} at step {step} (method "
                       f"{cfg.method}, phase {cfg.phase(step)}, update {u + 1})")
                if not dist.enabled:
                    raise FloatingPointError(bad)
            if dist.fsdp and dist.any(bad is not None):
                # FSDP2's backward is a collective: all processes stop before it, together
                raise FloatingPointError(bad or (
                    f"rl: non-finite loss on another process at step {step} (method "
                    f"{cfg.method}, phase {cfg.phase(step)}, update {u + 1})"))
            if bad is not None:
                break  # ddp: every process learns of it below, then all raise
            backward(st.loss)
            loss_sum += float(st.loss.detach())
            tot["clip_frac"] += st.clip_frac * st.num_tokens
            tot["ratio_mean"] += st.ratio_mean * st.num_tokens
        if dist.enabled:
            if dist.any(bad is not None):
                raise FloatingPointError(bad or (
                    f"rl: non-finite loss on another process at step {step} (method "
                    f"{cfg.method}, phase {cfg.phase(step)}, update {u + 1})"))
            loss_sum = dist.sum(loss_sum)[0]
            if not dist.fsdp:  # FSDP2 reduce-scatters (sums) in each backward
                dist.sync_grads(params)
        norm = fsdp.grad_norm(params, cfg.grad_clip)
        if not torch.isfinite(norm):
            raise FloatingPointError(f"rl: non-finite gradient norm at step {step} (method "
                                     f"{cfg.method}, phase {cfg.phase(step)}, update {u + 1})")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tot["loss"] += loss_sum / cfg.updates_per_batch
        tot["grad_norm"] += float(norm) / cfg.updates_per_batch
        n_tok_all += n_tok
    if dist.enabled:
        tot["clip_frac"], tot["ratio_mean"] = dist.sum(tot["clip_frac"], tot["ratio_mean"])
    tot["clip_frac"] /= max(n_tok_all, 1)
    tot["ratio_mean"] /= max(n_tok_all, 1)
    return tot


def step_metrics(ro: Rollout, prep: dict[str, Any], cfg: RLConfig, step: int,
                 dist: Dist | None = None) -> dict[str, Any]:
    """Rollout and policy diagnostics of one step (docs/methods.md §2, §3), over the whole
    batch of all processes under ``dist``."""
    dist = dist or Dist()
    g_size = ro.group_size
    rewards, lengths, finished, adv = (dist.gather_groups(x, g_size) for x in (
        ro.rewards, ro.lengths, ro.finished, prep["advantages"]))
    r = rewards.reshape(-1, g_size)
    m = prep["token_mask"]
    mean = dist.masked_mean if dist.enabled else _masked_mean
    out: dict[str, Any] = {
        "step": step,
        "phase": cfg.phase(step),
        "ipa": float(cfg.phase(step) == bupo.IPA),
        "reward_mean": float(rewards.mean()),
        "accuracy": float((rewards > 0.5).float().mean()),
        "group_pass": float((r > 0.5).any(1).float().mean()),
        "group_signal": float((r.max(1).values > r.min(1).values).float().mean()),
        "response_length": float(lengths.float().mean()),
        "finished_frac": float(finished.float().mean()),
        "entropy": mean(prep["entropy"], m),
        "adv_abs_mean": float(adv.abs().mean()),
        "verify_timeouts": ro.verify_timeouts,  # this process's answers past the budget
    }
    if cfg.uses_bupo:
        out["entropy_k"] = mean(prep["entropy_k"], m)
        out["cos_kL"] = mean(prep["cos_kL"], m)
        # ΔH^k = H(π^k) − H(π^{k−1}) (BuPO Fig. 5), NaN where not computed (as cos_kL)
        out["delta_k"] = out["entropy_k"] - mean(prep.get("entropy_km1"), m)
        out["layer_k"] = cfg.bupo_layer
    if cfg.credit:
        gamma = prep["gamma"][:, 1:]
        out["gamma_mean"] = mean(gamma, m)
        out["gamma_amp_frac"] = mean((gamma > 1).float(), m)
    return out


# --------------------------------------------------------------------------- loop
def config_changes(saved: dict[str, Any], cfg: RLConfig) -> list[str]:
    """Keys of the checkpoint's config that differ from ``cfg`` (beyond the resumable)."""
    now = cfg.to_dict()
    return sorted(k for k in set(saved) | set(now)
                  if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))


def _reseed(seed: int, rank: int, step: int) -> None:
    """Multi-process: global RNGs re-derived from (seed, rank, step) at every step, so a
    resumed run matches an uninterrupted one on every process (the checkpoint holds
    process 0's RNG states only)."""
    s = rank_seed(_step_seed(seed, step, 2), rank)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"
            and math.isfinite(float(v))}


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Any],
    reward_fn: RewardFn,
    cfg: RLConfig,
    *,
    prompt_fn: PromptFn,
    out_dir: str | Path,
    run: Any | None = None,
    resume: bool = True,
    save_model: bool = True,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    distributed_mode: str = "ddp",
    engine: RolloutEngine | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``cfg.steps`` steps; returns the per-step history.

    ``problems``: items passed to ``prompt_fn(item) -> str`` and
    ``reward_fn(item, response_text) -> float`` (0/1 from a verifier). ``run``: a
    :class:`pipeline.tracking.JobRun` (params and per-step metrics). Every
    ``cfg.save_every`` steps and at the end ``out_dir/checkpoint/state.pt`` is written
    atomically; ``resume=True`` continues from it. The final model (``save_pretrained``
    + tokenizer) goes to ``out_dir/model`` atomically, then ``out_dir/history.json``.

    Launched as several processes (``WORLD_SIZE > 1``, e.g. ``accelerate launch``):
    data parallel as in :mod:`.distributed`; the model is moved to the process's device;
    only process 0 logs to ``run`` and writes files; every process returns the same
    history (time keys aside). ``distributed_mode="fsdp2"`` shards the model
    (:mod:`.fsdp`): rollouts come from an unsharded copy refreshed every step
    (``sync_time`` in the history), checkpoints are sharded
    (:func:`.checkpoint.save_sharded`) and the final model is consolidated to one
    ``save_pretrained`` directory. accelerate's FSDP / DeepSpeed launches exit with a
    one-line error. ``engine``: another :class:`.rollout_engine.RolloutEngine` (it gets
    ``load_weights`` every step under fsdp2; the final model is still written from the
    trained weights).
    """
    dist = distributed.init(distributed_mode)
    if not problems:
        raise ValueError("rl: no training problems")
    if dist.enabled:
        check_split(cfg.prompts_per_step, cfg.updates_per_batch, dist.world)
        if not dist.fsdp and next(model.parameters()).device != dist.device:
            model.to(dist.device)  # fsdp2: fully_shard places only the shards
    device = dist.device if dist.fsdp else next(model.parameters()).device
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model.eval()
    full: nn.Module | None = None  # the default engine's unsharded copy under fsdp2
    push = engine is not None or dist.fsdp  # the engine needs the weights every step
    sync_dtype: torch.dtype | None = None  # what the gathered weights are cast to
    if dist.fsdp:
        if engine is None:
            sample_dtype = getattr(torch, cfg.sample_dtype) if cfg.sample_dtype else None
            full = fsdp.unsharded_copy(model, sample_dtype).to(device)  # copied on the CPU
            engine = StaticDecoderEngine(full, tokenizer, owns_weights=True)
            sync_dtype = next(full.parameters()).dtype
        elif dist.main and save_model:  # the copy the final model is consolidated into
            full = fsdp.unsharded_copy(model)
        fsdp.shard(model, compute_dtype=getattr(torch, cfg.compute_dtype or "float32"),
                   checkpointing=cfg.activation_checkpointing, mesh=fsdp.mesh(dist))
    else:
        engine = engine or StaticDecoderEngine(model, tokenizer)
        if cfg.activation_checkpointing:
            raise ValueError("rl: activation_checkpointing needs rl.distributed: fsdp2 on "
                             "two or more processes")
    optimizer = make_optimizer(model, cfg)
    history: list[dict[str, Any]] = []
    start = 1
    state = load_checkpoint(ckpt_dir) if resume else None
    if state is not None and (changes := config_changes(state["config"], cfg)):
        set_aside(ckpt_dir, changes, dist)
        state = None
    if state is not None:
        if "shards" in state and not dist.fsdp:
            raise ValueError(f"rl: {ckpt_dir} holds a sharded (fsdp2) checkpoint; resume it "
                             "with rl.distributed: fsdp2 on the same number of processes")
        if dist.fsdp:
            load_sharded(ckpt_dir, state, model=model, optimizer=optimizer)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        set_rng_states(state["rng"])
        history, start = list(state["history"]), int(state["step"]) + 1
    if run is not None and dist.main:
        run.params({"rl": cfg.to_dict()})
    for step in range(start, cfg.steps + 1):
        t0 = time.perf_counter()
        sync: dict[str, float] = {}
        if push:
            with fsdp.timed(sync, "sync_time"):
                engine.load_weights(fsdp.full_tensors(model, sync_dtype))
        indices = step_indices(len(problems), step, cfg.prompts_per_step, cfg.seed)
        if dist.enabled:
            _reseed(cfg.seed, dist.rank, step)
            indices = shard(indices, dist.rank, dist.world)
        items = [problems[i] for i in indices]
        ro = rollout(engine, tokenizer, items, prompt_fn, reward_fn, cfg, step, rank=dist.rank,
                     device=device)
        t1 = time.perf_counter()
        prep = prepare(model, ro, cfg, step, dist)
        upd = update(model, optimizer, ro, prep, cfg, step, dist=dist)
        t2 = time.perf_counter()
        metrics = {**step_metrics(ro, prep, cfg, step, dist), **upd, "lr": cfg.lr,
                   "gen_time": t1 - t0, "update_time": t2 - t1, "step_time": t2 - t0, **sync}
        history.append(metrics)
        if run is not None and dist.main:
            run.metrics(_numeric(metrics), step=step)
        if on_step is not None:
            on_step(metrics)
        if step % cfg.save_every == 0 or step == cfg.steps:
            kw = dict(model=model, optimizer=optimizer, step=step, history=history,
                      config=cfg.to_dict())
            if dist.fsdp:
                save_sharded(ckpt_dir, dist=dist, **kw)
            elif dist.main:
                save_checkpoint(ckpt_dir, **kw)
    if save_model:
        final = model
        if dist.fsdp:  # consolidate: every process gathers, process 0 keeps a CPU copy
            final = fsdp.consolidate(model, full, main=dist.main)
        if dist.main:
            with atomic_dir(out_dir / "model") as tmp:
                final.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            atomic_write(out_dir / "history.json",
                         lambda p: Path(p).write_text(json.dumps(history, indent=1)))
    dist.barrier()  # the files exist when any process returns
    return history
