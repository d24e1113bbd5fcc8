"""RL training: GRPO and its baselines, BuPO (docs/methods.md §2) and attention-rhythm credit
assignment (docs/methods.md §3) on a compact own loop.

Public API::

    group_advantages(rewards, group_size) -> Tensor [N]
    policy_loss(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.2) -> Tensor
    policy_loss_stats(...) -> LossStats        # the loss plus clip fraction etc.
    rloo_advantages, reinforce_pp_advantages   # classic baselines
    token_logprobs(model, input_ids, attention_mask, response_mask) -> [B, T-1]
    internal_token_logprobs(model, ..., layer, *, apply_final_norm=False) -> [B, T-1]
    policy_stats(model, ...) -> PolicyStats    # no-grad log-probs, entropies, cos(h[k], h[L])
    RLConfig, METHODS, train(model, tokenizer, problems, reward_fn, cfg, *, prompt_fn,
                             out_dir, run=None, resume=True) -> history

Modules: :mod:`.losses`, :mod:`.logprobs`, :mod:`.bupo` (π^k, phases, old log-probs),
:mod:`.credit` (γ and token advantages), :mod:`.config`, :mod:`.checkpoint`, :mod:`.trainer`,
:mod:`.distributed` (process groups, ddp), :mod:`.fsdp` (FSDP2 sharding),
:mod:`.rollout` (a step's scored, padded rollouts), :mod:`.rollout_engine` (what samples
them).
"""

# Lazy (PEP 562): importing pipeline.rl.config (what the workflow's validation reads while
# Snakemake parses the DAG) must not import torch or transformers through this package;
# each public name loads its module on first use.
from pipeline.lazy import lazy_exports

_MODULES: dict[str, tuple[str, ...]] = {
    "bupo": ("internal_token_logprobs",),
    "config": ("METHODS", "RLConfig"),
    "credit": ("credit_gamma", "token_advantages"),
    "logprobs": ("PolicyStats", "policy_stats", "token_logprobs"),
    "losses": ("LossStats", "group_advantages", "policy_loss", "policy_loss_stats",
               "reinforce_pp_advantages", "rloo_advantages"),
    "trainer": ("task_fns", "train"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _MODULES)
