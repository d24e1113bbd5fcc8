"""The claim registry (docs/methods.md §9.11): for every claim id the table can hold, the
paper, where the paper says it (figure, table, section), the paper's statement in the
project's words, the models or setting it applies to, the paper's own number and whether
it is the paper's statistic (``paper``) or one the project adds (``extension``).

Emitted ids are a registry id or a registry id followed by ``.<suffix>`` (a lens, a
benchmark, a method): :func:`spec_of` finds the longest registered prefix. :func:`annotate`
fills each record's ``paper``, ``paper_ref``, ``paper_value`` and ``source`` from here, so
the registry is the one place these are written; an unregistered id is an error. ``requires``
says when an entry is not emitted (the stated reason the registry test accepts)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.claims.common import PAPER_BUPO, PAPER_DEPTH, PAPER_RHYTHM
from pipeline.claims.record import ClaimRecord

PAPER_RL = "arXiv:2504.13837"  # "Does RL really incentivize reasoning beyond the base model?"


@dataclass(frozen=True)
class ClaimSpec:
    """One registered claim (§9.11)."""

    id: str
    paper: str
    where: str  # figure / table / section of the paper
    statement: str  # the paper's sentence, in the project's words
    applies_to: str  # model family or setting the paper states it for
    paper_value: str = ""  # the paper's number, as text
    source: str = "paper"  # "paper" or "extension"
    requires: str = ""  # when it is not emitted ("" = emitted whenever its stage ran)


_B, _R, _D = PAPER_BUPO, PAPER_RHYTHM, PAPER_DEPTH
_QWEN = "Qwen family (Qwen3-4B/8B; claims_family: qwen)"
_LLAMA = "Llama family (Llama-3.2-3B, OctoThinker; claims_family: llama)"
_COUNTDOWN = "Qwen3-4B-Base, Countdown (v2 Table: GRPO 52.6, random 55.0, entropy 57.7, " \
             "local 59.9, global 60.4, coupled 63.1)"
_TRAINED = "a BuPO run in rl.methods"

SPECS: tuple[ClaimSpec, ...] = (
    # ---- internal policies (BuPO), decomposition stage
    ClaimSpec("bupo.entropy_drop", _B, "Fig. 2, §3.1",
              "internal-policy entropy is high in the lower layers and falls toward the top",
              "every model (universal pattern)", "Qwen3: ≈ 12 nats low → ≈ 0 at the top"),
    ClaimSpec("bupo.entropy_top", _B, "Fig. 2, §3.1",
              "the top layers' internal policy converges to near-zero entropy",
              "every model (universal pattern)", "≈ 0 nats at h[L]"),
    ClaimSpec("bupo.eic_explore", _B, "Fig. 3 (bottom), §3.2",
              "Qwen FFN ΔH is positive in the lower layers (exploration)", _QWEN,
              "Qwen3-4B: ΔH_FFN > 0 at layers 1–6 of 36", requires="a Qwen-family model"),
    ClaimSpec("bupo.eic_converge", _B, "Fig. 3 (bottom), §3.2",
              "Qwen FFN ΔH is negative in the top layers (convergence)", _QWEN,
              "Qwen3-4B: ΔH_FFN < 0 at layers 27–36", requires="a Qwen-family model"),
    ClaimSpec("bupo.attn_explore", _B, "Fig. 3 (top), §3.2",
              "Qwen attention ΔH is positive at nearly all layers (sustained exploration)",
              _QWEN, "ΔH_ATTN > 0 at nearly all layers (axes ±10 nats)",
              requires="a Qwen-family model"),
    ClaimSpec("bupo.boundary_depth", _B, "§5.3, Table 3",
              "the boundary layer (last FFN-exploration layer) lies low in Qwen models",
              _QWEN, "π^6 of 36 layers (k/L = 0.17)", requires="a Qwen-family model"),
    ClaimSpec("bupo.qwen_progressive", _B, "Fig. 2, §3.1",
              "Qwen layer entropy contracts progressively, not only in the last layers",
              _QWEN, "progressive contraction over the upper layers",
              requires="a Qwen-family model with L ≥ 6"),
    ClaimSpec("bupo.llama_abrupt", _B, "Fig. 2, §3.1",
              "Llama layer entropy converges abruptly, only within the last three layers",
              _LLAMA, "sudden convergence in the last 3 layers",
              requires="a Llama-family model with L ≥ 6"),
    ClaimSpec("bupo.llama_ffn_positive", _B, "Fig. 3 (bottom), §3.2",
              "Llama FFN ΔH is weakly positive in almost every layer", _LLAMA,
              "weakly positive (axes ±0.2 nats)", requires="a Llama-family model"),
    ClaimSpec("bupo.llama_ffn_final", _B, "Fig. 3 (bottom), §3.2",
              "Llama FFN ΔH converges (turns negative) only at the final layer", _LLAMA,
              "negative at the final layer only", requires="a Llama-family model"),
    ClaimSpec("bupo.llama_boundary_depth", _B, "§5, Table 3",
              "for Llama-family models the BuPO layer is the penultimate layer", _LLAMA,
              "π^27 of 28 (OctoThinker-3B), π^31 of 32 (8B): k/L ≈ 0.96",
              requires="a Llama-family model"),
    ClaimSpec("bupo.llama_small_dh", _B, "Fig. 3, §3.2",
              "Llama module-level |ΔH| is about 50× smaller than Qwen's",
              "a Llama-family and a Qwen-family model together", "≈ 1/50 (axes ±0.2 vs ±10)",
              requires="a Llama-family and a Qwen-family model in analysis.models"),
    ClaimSpec("bupo.refinement_after", _B, "Fig. 5, §4",
              "after BuPO training, h[k] is closer to the top-layer state (feature "
              "refinement): cos(h[k], h[L]) rises", "Qwen3-4B, π^6 under IPA",
              "cos(h[6], higher layers) rises over steps 0–50",
              requires=_TRAINED + " with a decomposition of the trained checkpoint"),
    # ---- BuPO training and evaluation (compare/ tables)
    ClaimSpec("rl.bupo.ipa_entropy_k_rises", _B, "§4, Fig. 4",
              "under IPA the entropy of the internal policy π^k grows stably",
              "Qwen3-4B, π^6", "H(π^6) grows stably over 300 IPA steps", requires=_TRAINED),
    ClaimSpec("rl.bupo.ipa_entropy_vs_grpo", _B, "Fig. 7",
              "the entropy of π_θ rises during the IPA phase compared with GRPO",
              "Qwen3-4B/8B", "higher than GRPO's during IPA",
              requires=_TRAINED + " and grpo with common seeds"),
    ClaimSpec("rl.bupo.ipa_delta_k_falls", _B, "Fig. 5",
              "ΔH of π^k drifts negative over the IPA steps", "Qwen3-4B, π^6",
              "≈ 0 → ≈ −0.25 over 300 IPA steps", requires=_TRAINED),
    ClaimSpec("rl.bupo.feature_refinement", _B, "Fig. 5",
              "cos(h[k], h[L]) rises over the IPA steps (feature refinement)",
              "Qwen3-4B, π^6", "rises over steps 0–50", requires=_TRAINED),
    ClaimSpec("rl.bupo_vs_grpo", _B, "Table 1, Table 10",
              "BuPO beats GRPO on the benchmarks' Avg@K", "Qwen3-4B/8B, OctoThinker-3B/8B",
              "avg +3.43 (Qwen3-4B 58.51 vs 55.08), +2.13 (8B), +1.01 / +3.68 (Octo)",
              requires="bupo and grpo in rl.methods"),
    ClaimSpec("rl.bupo_vs", _B, "Table 1",
              "BuPO is at least as good as PPO, RLOO and REINFORCE++",
              "Qwen3-4B/8B, OctoThinker", "Qwen3-4B: 58.51 vs RLOO 54.00, R++ 45.03",
              requires="bupo and rloo / reinforce_pp in rl.methods"),
    # ---- attention rhythm: the paper's Table 2 statistics (attention stage)
    ClaimSpec("rhythm.waad_peak_entropy", _R, "Table 2",
              "policy entropy at WAAD peaks is higher than over all tokens",
              "Qwen3-4B-Base, 70 GSM8K questions", "0.3608 vs 0.2386 (ratio 1.52, +51.97 %)"),
    ClaimSpec("rhythm.receiver_global_cooccur", _R, "Table 2",
              "receiver-head FAI peaks co-occur with global-head FAI peaks more often than "
              "at random", "Qwen3-4B-Base, 70 GSM8K questions",
              "60.84 % vs 22.41 % at random (lift 2.71)"),
    ClaimSpec("rhythm.fai_follows_waad", _R, "Table 2",
              "FAI peaks follow or coincide with WAAD peaks more often than at random",
              "Qwen3-4B-Base, 70 GSM8K questions", "52.53 % vs 36.87 % at random (lift 1.42)"),
    # ---- attention rhythm: the project's own statistics
    ClaimSpec("rhythm.head_groups_stable", _R, "§4.1 (open: per sequence or fixed)",
              "the local/global head split is stable across responses", "every model",
              source="extension"),
    ClaimSpec("rhythm.preplan_entropy", _R, "§5 (preplan = top-40 % |ΔWAAD|)",
              "policy entropy is higher at preplan tokens than over all tokens",
              "every model", source="extension"),
    ClaimSpec("rhythm.anchor_entropy", _R, "§5 (anchor = top-40 % FAI)",
              "policy entropy is higher at anchor tokens than over all tokens",
              "every model", source="extension"),
    ClaimSpec("rhythm.anchor_follows_preplan", _R, "§5, Eq. 18 (window [t−k, t−1])",
              "anchors follow preplan tokens more often than the permutation null",
              "every model", source="extension"),
    ClaimSpec("rhythm.rl_waad_shift", _R, "(not in the paper)",
              "mean WAAD of a trained run − the base model's (descriptive)",
              "trained runs", source="extension", requires="an RL run"),
    ClaimSpec("rhythm.rl_fai_shift", _R, "(not in the paper)",
              "mean FAI of a trained run − the base model's (descriptive)",
              "trained runs", source="extension", requires="an RL run"),
    # ---- attention rhythm: RL
    ClaimSpec("rl.rhythm.vs_grpo", _R, "Fig. 4 / Table (Countdown), math tables",
              "each rhythm credit (local, global, coupled) beats GRPO", _COUNTDOWN,
              "Countdown: local +7.3, global +7.8, coupled +10.5 points",
              requires="grpo and a rhythm_* method in rl.methods"),
    ClaimSpec("rl.credit.coupled_vs_rhythm_local", _R, "Countdown table, math tables",
              "coupled credit beats local-chunk credit", _COUNTDOWN, "63.1 vs 59.9",
              requires="a model with RL runs"),
    ClaimSpec("rl.credit.coupled_vs_rhythm_global", _R, "Countdown table, math tables",
              "coupled credit beats global-anchor credit", _COUNTDOWN, "63.1 vs 60.4",
              requires="a model with RL runs"),
    ClaimSpec("rl.credit.coupled_vs_credit_random", _R, "Countdown table, math tables",
              "coupled credit beats the random-token control", _COUNTDOWN, "63.1 vs 55.0",
              requires="a model with RL runs"),
    ClaimSpec("rl.credit.coupled_vs_credit_entropy", _R, "Countdown table, math tables",
              "coupled credit beats the high-entropy-token control", _COUNTDOWN,
              "63.1 vs 57.7", requires="a model with RL runs"),
    ClaimSpec("rl.credit.random_vs_grpo", _R, "math tables (4B-1K), Countdown table",
              "random-token credit is no better than GRPO (a control)",
              "Qwen3-4B/8B-Base", "math 37.1 vs 37.1 (4B-1K); Countdown 55.0 vs 52.6",
              requires="grpo and credit_random in rl.methods"),
    ClaimSpec("rl.credit.entropy_vs_random", _R, "Countdown table",
              "high-entropy credit beats random credit (the controls' order)", _COUNTDOWN,
              "57.7 vs 55.0", requires="credit_entropy and credit_random in rl.methods"),
    ClaimSpec("rl.vs_grpo", "(project)", "(not a paper claim)",
              "another method − GRPO (descriptive: RLOO, REINFORCE++, the credit controls)",
              "any RL method", source="extension",
              requires="grpo and another method without a paper claim against GRPO"),
    # ---- RL sharpens rather than widens (arXiv:2504.13837)
    ClaimSpec("rl.raises_avg", PAPER_RL, "pass@k curves (small k)",
              "RL with verifiable rewards raises avg@k (pass@1) over the base model",
              "math / code RLVR", requires="grpo in rl.methods and an evaluation with avg@n"),
    ClaimSpec("rl.not_pass_at_kmax", PAPER_RL, "pass@k curves (large k)",
              "RL does not raise pass@k at large k over the base model",
              "math / code RLVR", requires="grpo in rl.methods and ≥ 2 pass@k values"),
    # ---- guess-then-refine depth
    ClaimSpec("depth.early_freq", _D, "abstract, Fig. 2",
              "early-layer top-1 tokens are mostly high-frequency (Top1-10) tokens",
              "GPT-2, Pythia, Llama", "> 75 % of layer-1 top-1 in Top1-10 (Pythia-6.9B)"),
    ClaimSpec("depth.early_flip", _D, "v1 abstract, Fig. 3",
              "early high-frequency guesses are refined later > 70 % of the time",
              "GPT-2, Pythia, Llama", "> 70 %"),
    ClaimSpec("depth.function_words", _D, "§ case study (i), POS",
              "function words are, on average, the earliest to be predicted correctly",
              "natural text"),
    ClaimSpec("depth.fact_first_token", _D, "§ case study (ii), fact recall",
              "the first token of a multi-token answer needs the most depth",
              "natural-text facts", requires="natural text (not builtin-task text)"),
    ClaimSpec("depth.early_guess_wrong", _D, "§ conclusion (open question)",
              "do wrong first answer tokens come from early guesses the later layers fail "
              "to correct? (descriptive)", "natural-text facts", source="extension",
              requires="natural text (not builtin-task text)"),
    ClaimSpec("depth.mcq_options_early", _D, "§ case study (iii), Fig. 1c",
              "valid options reach the top within the first half of the layers",
              "MMLU-style multiple choice", "first half",
              requires="natural text (not builtin-task text)"),
    ClaimSpec("depth.mcq_choice_late", _D, "§ case study (iii), Fig. 1c",
              "the choice among the options is finalised in the latter half of the layers",
              "MMLU-style multiple choice", "latter half",
              requires="natural text (not builtin-task text)"),
)

REGISTRY: dict[str, ClaimSpec] = {s.id: s for s in SPECS}


def spec_of(claim_id: str) -> ClaimSpec:
    """The registry entry of an emitted id: the id itself or its longest registered prefix
    ending at a ``.`` boundary. ``KeyError`` names an unregistered id."""
    parts = claim_id.split(".")
    for i in range(len(parts), 0, -1):
        hit = REGISTRY.get(".".join(parts[:i]))
        if hit is not None:
            return hit
    raise KeyError(f"claim id {claim_id!r} has no entry in pipeline.claims.registry")


def annotate(records: Iterable[ClaimRecord]) -> list[ClaimRecord]:
    """The records with ``paper``, ``paper_ref``, ``paper_value`` and ``source`` from the
    registry (§9.11)."""
    out = []
    for r in records:
        s = spec_of(r.claim_id)
        out.append(dataclasses.replace(r, paper=s.paper, paper_ref=s.where,
                                       paper_value=r.paper_value or s.paper_value,
                                       source=s.source))
    return out
