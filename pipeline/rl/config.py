"""Configuration of an RL run and the method table (docs/methods.md §2, §3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Attention-credit methods → :func:`pipeline.attention.credit_weights` method names.
CREDIT = {
    "rhythm_local": "local",
    "rhythm_global": "global",
    "rhythm_coupled": "coupled",
    "credit_random": "random",
    "credit_entropy": "entropy",
}
METHODS = ("grpo", "rloo", "reinforce_pp", "bupo", *CREDIT, "bupo+rhythm_coupled")


@dataclass
class RLConfig:
    """Hyperparameters of :func:`pipeline.rl.train`; defaults follow docs/methods.md §2 except the
    sizes (CPU-scale). ``updates_per_batch`` optimizer steps per rollout batch, each on a
    disjoint minibatch of ``prompts_per_step / updates_per_batch`` prompts' groups."""

    method: str = "grpo"
    steps: int = 40
    prompts_per_step: int = 16
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    gen_batch_size: int = 64
    sample_dtype: str | None = None  # decode-loop dtype of rollouts (None: the model's)
    # training forward/backward dtype over fp32 master weights (None: the weights' dtype);
    # FSDP2's MixedPrecisionPolicy under rl.distributed fsdp2, torch.autocast otherwise
    compute_dtype: str | None = None
    activation_checkpointing: bool = False  # recompute each block in backward
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    updates_per_batch: int = 1
    micro_batch_size: int | None = None  # sequences per forward (gradient accumulation)
    clip_low: float = 0.2
    clip_high: float = 0.2
    # BuPO (docs/methods.md §2)
    bupo_layer: int | None = None  # k, 1-based
    s_inter: int = 20
    ipa_final_norm: bool = False
    # attention credit (docs/methods.md §3)
    gamma_amp: float = 1.5
    alpha: float = 0.5
    credit_shift: int = 0
    top_frac: float = 0.4
    rhythm: dict[str, Any] = field(default_factory=dict)  # extra kwargs of attention.rhythm
    # REINFORCE++ options (see losses.reinforce_pp_advantages)
    rpp_token_weighted: bool = True
    rpp_group_baseline: bool = False
    seed: int = 0
    save_every: int = 10
    diag_every: int = 1  # π^k entropy and cos(h[k], h[L]) every n steps (BuPO)
    chunk_tokens: int | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.method not in METHODS:
            raise ValueError(f"unknown RL method {self.method!r}; known: {list(METHODS)}")
        if self.uses_bupo and self.bupo_layer is None:
            raise ValueError(f"method {self.method!r} needs bupo_layer (k, 1-based)")
        if self.prompts_per_step < 1 or self.group_size < 1 or self.steps < 0:
            raise ValueError("prompts_per_step, group_size must be >= 1 and steps >= 0")
        if self.updates_per_batch < 1 or self.prompts_per_step % self.updates_per_batch:
            raise ValueError(f"prompts_per_step={self.prompts_per_step} does not split into "
                             f"updates_per_batch={self.updates_per_batch} minibatches")
        if self.credit_shift not in (0, 1):
            raise ValueError(f"credit_shift must be 0 or 1, got {self.credit_shift}")
        if self.compute_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be float32 or bfloat16 (float16 would need "
                             f"loss scaling), got {self.compute_dtype!r}")
        if self.save_every < 1 or self.diag_every < 1:
            raise ValueError("save_every and diag_every must be >= 1")

    @property
    def uses_bupo(self) -> bool:
        return self.method.startswith("bupo")

    @property
    def credit(self) -> str | None:
        """The credit_weights method, or None for unshaped advantages."""
        return "coupled" if self.method == "bupo+rhythm_coupled" else CREDIT.get(self.method)

    @property
    def advantage(self) -> str:
        return self.method if self.method in ("rloo", "reinforce_pp") else "grpo"

    def phase(self, step: int) -> str:
        """``"ipa"`` for BuPO steps 1..s_inter (1-based), else ``"grpo"`` (docs/methods.md §2;
        :func:`pipeline.rl.bupo.phase`)."""
        from pipeline.rl.bupo import phase

        return phase(step, s_inter=self.s_inter, enabled=self.uses_bupo)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RLConfig:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown RL config keys {unknown}")
        return cls(**d)
