"""Peer test of our GRPO pieces against TRL's (issue 6, docs/methods.md §2).

TRL is a test dependency only (pinned in the ``test`` extra); the module is skipped
without it. Everything runs TRL's own code paths on a tiny random model, on CPU:

* advantages: ``GRPOTrainer._generate_and_score_completions`` (``scale_rewards="group"``)
  and ``RLOOTrainer._generate_and_score_completions`` (``beta=0``, no normalisation) with
  a reward function that returns fixed rewards, against ``group_advantages`` /
  ``rloo_advantages``;
* the clipped surrogate: ``GRPOTrainer.compute_loss`` on a hand-made batch (left-padded
  prompts, right-padded completions, old log-probs off the current ones so that both
  clip branches are active) against ``policy_loss`` on our ``token_logprobs``; loss,
  gradient w.r.t. every parameter, per-token log-probs and clip fractions.

Conventions (read in trl 1.16.0 ``grpo_trainer.py``; the tests pin them):

* group std: both use the unbiased (Bessel) std (TRL's ``nanstd`` multiplies the
  population variance by n/(n−1)); but TRL divides by ``std + 1e-4`` and we by
  ``std + 1e-6`` (docs/methods.md §2). Equal to 1e-6 once our ``EPS`` is set to 1e-4; with
  the defaults the difference is ``|Â|·(1e-4 − 1e-6)/(std + 1e-4)`` (≈1.5e-4 for 0/1
  rewards in a group of 4).
* token-mean: our ``policy_loss(num_tokens=N)`` (trainer: N = response tokens of the
  whole minibatch, every micro-batch) is TRL's ``loss_type="dapo"`` (sum over the
  micro-batch / ``num_items_in_batch``); without ``num_tokens`` it is ``"bnpo"`` (sum /
  tokens of the local batch). The two agree when there is one micro-batch. TRL's
  default-named ``"grpo"`` is a per-sequence mean and is *not* our loss.
* positions: TRL's loss forward passes no ``position_ids`` (a left-padded row starts at
  position = its pad count); ours derives them from the attention mask. Same maths under
  RoPE (relative), so only float rounding differs; pinned below on left-padded rows and
  on our own right-padded layout of the same sequences.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer  # noqa: E402

from pipeline.models.builtin import build_model  # noqa: E402
from pipeline.models.tokenizer import build_char_tokenizer  # noqa: E402
from pipeline.rl import losses  # noqa: E402
from pipeline.rl.logprobs import token_logprobs  # noqa: E402
from pipeline.rl.losses import (  # noqa: E402
    group_advantages,
    policy_loss,
    policy_loss_stats,
    rloo_advantages,
)

# transformers 5.23 deprecates the `gradient_checkpointing` names that TRL's config uses.
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")

TRL_VERSION = "1.16.0"
TINY = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=None, max_position_embeddings=256, rope_theta=10000.0,
            tie_word_embeddings=True, seed=0)
PROMPTS = ["12+3=", "7*8=", "9-4="]


def test_trl_version_is_the_pinned_one():
    assert trl.__version__ == TRL_VERSION


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _model(tok, arch: str = "qwen3"):
    """A fresh tiny model per trainer: TRL patches the instance's ``forward``."""
    return build_model({**TINY, "arch": arch}, tok, seed=0)


def _trainer(trainer_cls, config_cls, model, tok, tmp_path, *, reward_fn=None, batch=12,
             group=4, **kw):
    if reward_fn is None:
        def reward_fn(completions, **_):
            return [0.0] * len(completions)
    args = config_cls(output_dir=str(tmp_path), per_device_train_batch_size=batch,
                      num_generations=group, max_completion_length=4, use_cpu=True,
                      report_to=[], beta=0.0, save_strategy="no", bf16=False,
                      gradient_checkpointing=False, disable_tqdm=True, seed=0, **kw)
    tr = trainer_cls(model=model, reward_funcs=reward_fn, args=args,
                     train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
                     processing_class=tok)
    tr.model.train()
    # Set by transformers' training loop before compute_loss; one micro-batch per step.
    tr.current_gradient_accumulation_steps = 1
    return tr


def _trl_advantages(trainer_cls, config_cls, tok, tmp_path, rewards: torch.Tensor, group: int,
                    **kw) -> torch.Tensor:
    """Advantages from TRL's own rollout-and-score path with ``rewards`` injected (the
    batch is each prompt repeated ``group`` times, contiguous, as TRL's sampler lays it)."""
    def reward_fn(completions, **_):
        assert len(completions) == rewards.numel()
        return rewards.tolist()

    n = rewards.numel()
    tr = _trainer(trainer_cls, config_cls, _model(tok), tok, tmp_path, reward_fn=reward_fn,
                  batch=n, group=group, **kw)
    inputs = [{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(n // group)
              for _ in range(group)]
    return tr._generate_and_score_completions(inputs)["advantages"].float()


REWARDS = {
    "binary_g4": (torch.tensor([1., 0., 0., 1., 1., 1., 1., 1., 0., 0., 0., 1.]), 4),
    "binary_g2": (torch.tensor([1., 0., 0., 0., 1., 1., 0., 1.]), 2),
    "real_g3": (torch.tensor([0.3, -1.2, 2.5, 0.7, 0.7, 0.1, -0.4, 1.9, 0.0]), 3),
}


# --------------------------------------------------------------------------- advantages
@pytest.mark.parametrize("case", sorted(REWARDS))
def test_group_advantages_match_trl_grpo(case, tok, tmp_path, monkeypatch):
    rewards, g = REWARDS[case]
    theirs = _trl_advantages(GRPOTrainer, GRPOConfig, tok, tmp_path, rewards, g,
                             scale_rewards="group", loss_type="dapo")
    # Our default (eps 1e-6) against TRL's (eps 1e-4): the documented eps difference only.
    ours = group_advantages(rewards, g)
    std = rewards.reshape(-1, g).std(1, unbiased=True).repeat_interleave(g)
    assert torch.allclose(ours * (std + 1e-6) / (std + 1e-4), theirs, atol=1e-6, rtol=0)
    assert (ours - theirs).abs().max() < 2e-3
    # Same convention (unbiased std, eps 1e-4): equal.
    monkeypatch.setattr(losses, "EPS", 1e-4)
    assert (group_advantages(rewards, g) - theirs).abs().max() <= 1e-6
    # The population std would not match: the test can tell the two conventions apart.
    pop = rewards.reshape(-1, g)
    pop = ((pop - pop.mean(1, keepdim=True)) / (pop.std(1, unbiased=False, keepdim=True) + 1e-4))
    assert (pop.reshape(-1) - theirs).abs().max() > 1e-2


@pytest.mark.parametrize("case", sorted(REWARDS))
def test_rloo_advantages_match_trl_rloo(case, tok, tmp_path):
    rewards, g = REWARDS[case]
    theirs = _trl_advantages(RLOOTrainer, RLOOConfig, tok, tmp_path, rewards, g,
                             normalize_advantages=False)
    assert (rloo_advantages(rewards, g) - theirs).abs().max() <= 1e-6


# --------------------------------------------------------------------------- loss
B, P, C = 6, 5, 6
PROMPT_LENS = [5, 3, 4, 2, 5, 3]
COMPLETION_LENS = [6, 4, 6, 2, 5, 3]


def _batch(tok, seed: int = 0) -> dict[str, torch.Tensor]:
    """TRL's layout: prompts left-padded to P, completions right-padded to C."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = 10, len(tok)  # ordinary characters, no special tokens
    pad = tok.pad_token_id
    prompt_ids = torch.full((B, P), pad)
    prompt_mask = torch.zeros(B, P, dtype=torch.long)
    completion_ids = torch.full((B, C), pad)
    completion_mask = torch.zeros(B, C, dtype=torch.long)
    for b, (p, c) in enumerate(zip(PROMPT_LENS, COMPLETION_LENS, strict=True)):
        prompt_ids[b, P - p:] = torch.randint(lo, hi, (p,), generator=gen)
        prompt_mask[b, P - p:] = 1
        completion_ids[b, :c] = torch.randint(lo, hi, (c,), generator=gen)
        completion_mask[b, :c] = 1
    return dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                completion_mask=completion_mask)


def _ours_trl_layout(model, batch, temperature: float) -> torch.Tensor:
    """Our log-probs [B, C] of the completion tokens on TRL's (left-padded) layout."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    am = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    rm = torch.cat([torch.zeros_like(batch["prompt_mask"]), batch["completion_mask"]], 1)
    return token_logprobs(model, ids, am, rm, temperature=temperature)[:, P - 1:]


def _ours_packed(model, batch, temperature: float, pad: int) -> torch.Tensor:
    """Our log-probs [B, C] on our trainer's layout: prompt+response packed from column 0,
    right-padded; re-aligned to TRL's completion columns."""
    width = max(p + c for p, c in zip(PROMPT_LENS, COMPLETION_LENS, strict=True))
    ids = torch.full((B, width), pad)
    am = torch.zeros(B, width, dtype=torch.long)
    rm = torch.zeros(B, width, dtype=torch.long)
    for b, (p, c) in enumerate(zip(PROMPT_LENS, COMPLETION_LENS, strict=True)):
        ids[b, :p + c] = torch.cat([batch["prompt_ids"][b, P - p:], batch["completion_ids"][b, :c]])
        am[b, :p + c] = 1
        rm[b, p:p + c] = 1
    lp = token_logprobs(model, ids, am, rm, temperature=temperature)
    rows = []
    for b, (p, c) in enumerate(zip(PROMPT_LENS, COMPLETION_LENS, strict=True)):
        rows.append(torch.nn.functional.pad(lp[b, p - 1:p - 1 + c], (0, C - c)))
    return torch.stack(rows)


def _grads(model) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for p in model.parameters()]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


LOSS_CASES = [
    # arch, loss_type, epsilon, epsilon_high, temperature, extra tokens in the minibatch
    ("qwen3", "dapo", 0.2, None, 1.0, 0),
    ("qwen3", "dapo", 0.2, 0.28, 1.0, 0),
    ("qwen3", "dapo", 0.2, 0.28, 0.7, 13),  # micro-batch of a larger minibatch
    ("qwen3", "bnpo", 0.2, None, 1.0, 0),
    ("llama", "dapo", 0.2, None, 1.0, 0),
    ("llama", "bnpo", 0.1, 0.3, 0.7, 0),
]


@pytest.mark.parametrize("arch,loss_type,eps,eps_high,temperature,extra", LOSS_CASES)
def test_policy_loss_matches_trl_compute_loss(arch, loss_type, eps, eps_high, temperature,
                                              extra, tok, tmp_path):
    model = _model(tok, arch)
    tr = _trainer(GRPOTrainer, GRPOConfig, model, tok, tmp_path, loss_type=loss_type,
                  epsilon=eps, epsilon_high=eps_high, temperature=temperature)
    clip_high = eps if eps_high is None else eps_high
    batch = _batch(tok)
    mask = batch["completion_mask"]
    n_tok = int(mask.sum())
    gen = torch.Generator().manual_seed(1)
    adv = torch.randn(B, generator=gen)
    adv[3] = 0.0  # a zero-advantage row (constant group) contributes nothing
    with torch.no_grad():
        now = _ours_trl_layout(model, batch, temperature)
    old = (now + 0.3 * torch.randn(B, C, generator=gen)) * mask
    inputs = dict(batch, advantages=adv, old_per_token_logps=old,
                  num_items_in_batch=torch.tensor(float(n_tok + extra)))

    # TRL: loss and gradient through its own forward (fused LM head) and loss hook.
    model.zero_grad(set_to_none=True)
    loss_trl = tr.compute_loss(tr.model, inputs)
    loss_trl.backward()
    g_trl = _grads(model)
    metrics = {k: v[-1] for k, v in tr._metrics["train"].items()}

    # Ours: token_logprobs + policy_loss on the same model, same batch layout.
    model.zero_grad(set_to_none=True)
    logp = _ours_trl_layout(model, batch, temperature)
    num_tokens = n_tok + extra if loss_type == "dapo" else None
    st = policy_loss_stats(logp, old, adv, mask, clip_low=eps, clip_high=clip_high,
                           num_tokens=num_tokens)
    st.loss.backward()
    g_ours = _grads(model)

    assert st.clip_low_frac > 0 and st.clip_high_frac > 0  # both clip branches active
    assert abs(float(st.loss.detach()) - float(loss_trl.detach())) <= 1e-6
    assert _max_diff(g_ours, g_trl) <= 1e-6
    assert metrics["clip_ratio/low_mean"] == pytest.approx(st.clip_low_frac, abs=1e-6)
    assert metrics["clip_ratio/high_mean"] == pytest.approx(st.clip_high_frac, abs=1e-6)
    assert metrics["clip_ratio/region_mean"] == pytest.approx(st.clip_frac, abs=1e-6)

    # Per-token log-probs: TRL's forward vs ours, on its layout and on our packed one.
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        am = torch.cat([batch["prompt_mask"], mask], 1)
        lp_trl, _, _ = tr._get_per_token_logps_and_entropies(model, ids, am, C)
        lp_ours = _ours_trl_layout(model, batch, temperature)
        lp_packed = _ours_packed(model, batch, temperature, tok.pad_token_id)
    m = mask.bool()
    assert (lp_trl - lp_ours)[m].abs().max() <= 1e-5
    assert (lp_trl - lp_packed)[m].abs().max() <= 1e-5
    # The loss formula alone, on TRL's own log-probs: exact up to fp32 summation order.
    ours_on_trl = policy_loss(lp_trl, old, adv, mask, clip_low=eps, clip_high=clip_high,
                              num_tokens=num_tokens)
    assert abs(float(ours_on_trl) - float(loss_trl.detach())) <= 1e-6


def test_trl_grpo_loss_type_is_a_sequence_mean_not_ours(tok, tmp_path):
    """TRL's ``loss_type="grpo"`` averages per sequence first: it equals the mean over rows
    of our per-row token-mean, and differs from our batch token-mean (unequal lengths)."""
    model = _model(tok)
    tr = _trainer(GRPOTrainer, GRPOConfig, model, tok, tmp_path, loss_type="grpo")
    batch = _batch(tok)
    mask = batch["completion_mask"]
    gen = torch.Generator().manual_seed(1)
    adv = torch.randn(B, generator=gen)
    with torch.no_grad():
        now = _ours_trl_layout(model, batch, 1.0)
        old = (now + 0.3 * torch.randn(B, C, generator=gen)) * mask
        loss_trl = float(tr.compute_loss(tr.model, dict(batch, advantages=adv,
                                                        old_per_token_logps=old)))
    per_row = [float(policy_loss(now[b:b + 1], old[b:b + 1], adv[b:b + 1], mask[b:b + 1]))
               for b in range(B)]
    assert abs(sum(per_row) / B - loss_trl) <= 1e-6
    assert abs(float(policy_loss(now, old, adv, mask)) - loss_trl) > 1e-3
