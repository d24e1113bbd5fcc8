"""The paper's claims (docs/methods.md §4), recomputed from the depth stage's tables: each a
record ``{"claim", "lens", "measured", "criterion", "holds"}`` (``holds`` None when there
are too few prompts or the claim is not measurable on this text). Pure functions of the
tables: nothing here runs a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.depth.spec import BUILTIN_TEXT_KIND, TOKEN_CLASSES


def early_layers(num_layers: int, early_frac: float) -> list[int]:
    """The "early" layers of the claims: h[1]..h[max(1, ⌊early_frac·L⌋)]."""
    return list(range(1, max(1, int(math.floor(early_frac * num_layers))) + 1))


def _never_as(layers: np.ndarray, num_layers: int) -> np.ndarray:
    """First-layer arrays with −1 (never) mapped to L+1."""
    a = np.asarray(layers, dtype=float)
    return np.where(a < 0, num_layers + 1, a)


@dataclass(frozen=True)
class Ctx:
    """What every claim needs besides the tables."""

    L: int  # blocks
    early: list[int]  # the early layers (:func:`early_layers`)
    early_frac: float
    min_n: int
    builtin: bool


def compute_claims(tables: Mapping[str, pd.DataFrame], *, lenses: Sequence[str],
                   num_layers: int, builtin: bool, early_frac: float = 0.25,
                   min_n: int = 5) -> list[dict[str, Any]]:
    """The paper's claims (docs/methods.md §4), one dict per (claim, lens), recomputed from the
    tables: ``{"claim", "lens", "measured", "criterion", "holds"}`` (``holds`` None when
    there are too few prompts or the claim is not measurable on this text)."""
    ctx = Ctx(num_layers, early_layers(num_layers, early_frac), early_frac, min_n, builtin)
    return [claim(tables, lens, ctx) for claim in CLAIMS for lens in lenses]


_NA = f"not measurable on {BUILTIN_TEXT_KIND}"


def frequency_claim(tables: Mapping[str, pd.DataFrame], lens: str, ctx: Ctx
                    ) -> dict[str, Any]:
    """Early guesses are mostly high-frequency tokens (``bucket_mix``)."""
    L, early, min_n = ctx.L, ctx.early, ctx.min_n
    mix = tables["bucket_mix"]
    m = mix[mix.lens == lens]
    top = m[m.bucket == "Top1-10"].set_index("layer")["share"]
    top100 = m[m.bucket.isin(["Top1-10", "11-100"])].groupby("layer")["share"].sum()
    n_prompts = int(m["n_prompts"].iloc[0]) if len(m) else 0
    share = float(top.loc[early].mean()) if n_prompts else math.nan
    return {
        "claim": "early guesses are mostly high-frequency tokens",
        "lens": lens,
        "measured": {"early_layers": early,
                     "top1_10_share_per_early_layer": [float(top.loc[i]) for i in early],
                     "mean_top1_10_share_early": share,
                     "mean_top1_100_share_early": float(top100.loc[early].mean())
                     if n_prompts else math.nan,
                     "top1_10_share_final_output": float(top.loc[L]) if n_prompts
                     else math.nan,
                     "n_prompts": n_prompts},
        "criterion": (f"mean over the early layers h[{early[0]}]..h[{early[-1]}] "
                      f"(⌊{ctx.early_frac}·L⌋) of the share of BASELINE prompts whose lens "
                      "top-1 lies in the Top1-10 frequency bucket > 0.5; None if fewer "
                      f"than {min_n} prompts"),
        "holds": None if n_prompts < min_n else bool(share > 0.5),
    }


def flip_claim(tables: Mapping[str, pd.DataFrame], lens: str, ctx: Ctx) -> dict[str, Any]:
    """>70 % of early high-frequency guesses are later refined (``flip_rates``)."""
    early, min_n = ctx.early, ctx.min_n
    flips = tables["flip_rates"]
    f = flips[(flips.lens == lens) & (flips.bucket == "Top1-10") & flips.layer.isin(early)]
    n_in, n_flip = int(f["n_in_bucket"].sum()), int(f["n_flip"].sum())
    rate = n_flip / n_in if n_in else math.nan
    return {
        "claim": ">70 % of early high-frequency guesses are later refined (flipped)",
        "lens": lens,
        "measured": {"early_layers": early, "n_top1_10_guesses": n_in,
                     "n_flipped": n_flip, "flip_rate_top1_10_early": rate,
                     "flip_rate_per_early_layer": [
                         float(x) if np.isfinite(x) else None
                         for x in f.sort_values("layer")["flip_rate"]]},
        "criterion": ("pooled over the early layers h[1]..h[⌊early_frac·L⌋], of the lens "
                      "top-1 guesses in the Top1-10 bucket, the fraction that differ "
                      "from the model's final output (n_flip / n_in_bucket) > 0.7; None "
                      f"if fewer than {min_n} such guesses"),
        "holds": None if n_in < min_n else bool(rate > 0.7),
    }


def facts_claim(tables: Mapping[str, pd.DataFrame], lens: str, ctx: Ctx) -> dict[str, Any]:
    """The first answer token needs the most depth (``facts_summary``)."""
    min_n = ctx.min_n
    claim = "the first answer token needs the most depth (fact recall)"
    crit = ("mean earliest layer at k=1 (first hit) over correct-only teacher-forced "
            "prompts at answer-token position 1 > the mean at every other position "
            f"1 < j ≤ 3 with ≥ {min_n} correct prompts; None if position 1 or all others "
            f"have fewer than {min_n}")
    if ctx.builtin or "facts_summary" not in tables:
        return _not_measured(claim, lens, crit + f" — {_NA}")
    s = tables["facts_summary"]
    s = s[(s.lens == lens) & (s.variant == "first")].set_index("answer_token")
    means = {int(j): float(r.mean_layer) for j, r in s.iterrows()}
    ns = {int(j): int(r.n_used) for j, r in s.iterrows()}
    others = [j for j in means if j != 1 and ns[j] >= min_n]
    if ns.get(1, 0) < min_n or not others:
        holds = None
    else:
        holds = bool(all(means[1] > means[j] for j in others))
    stays = tables["facts_summary"]
    stays = stays[(stays.lens == lens) & (stays.variant == "stays")]
    return {"claim": claim, "lens": lens,
            "measured": {"mean_earliest_layer": means, "n_correct": ns,
                         "mean_earliest_layer_stays": {
                             int(r.answer_token): float(r.mean_layer)
                             for r in stays.itertuples()},
                         "ci95": {int(j): [float(r.ci95_lo), float(r.ci95_hi)]
                                  for j, r in s.iterrows()}},
            "criterion": crit, "holds": holds}


def mcq_claim(tables: Mapping[str, pd.DataFrame], lens: str, ctx: Ctx) -> dict[str, Any]:
    """Options reach the top early, the choice among them is settled late (``mcq``)."""
    L, min_n = ctx.L, ctx.min_n
    claim = ("valid options reach the top in the first half of the layers, the choice "
             "among them is settled late (multiple choice)")
    crit = (f"median over MMLU prompts of the first layer where the 4 option letters "
            f"dominate (all above every other token; never → L+1) ≤ L/2 = {L / 2:g}, "
            "AND median of the first layer from which the model's chosen option stays "
            f"strictly above the other options (settled, stays variant) > L/2; None if "
            f"fewer than {min_n} prompts")
    if ctx.builtin or "mcq" not in tables:
        return _not_measured(claim, lens, crit + f" — {_NA}")
    q = tables["mcq"]
    q = q[q.lens == lens]
    n = len(q)
    dom = _never_as(q["dominate_layer"].to_numpy(), L)
    dom_stays = _never_as(q["dominate_layer_stays"].to_numpy(), L)
    settled = _never_as(q["choice_settled_layer_stays"].to_numpy(), L)
    settled_first = _never_as(q["choice_settled_layer"].to_numpy(), L)
    top1 = _never_as(q["choice_top1_layer_stays"].to_numpy(), L)
    med = (lambda a: float(np.median(a)) if len(a) else math.nan)
    measured = {"n_prompts": n, "num_layers": L,
                "median_dominate_layer": med(dom),
                "median_dominate_layer_stays": med(dom_stays),
                "frac_ever_dominate": float((q["dominate_layer"] >= 0).mean())
                if n else math.nan,
                "median_choice_settled_layer_stays": med(settled),
                "median_choice_settled_layer_first": med(settled_first),
                "median_choice_top1_layer_stays": med(top1),
                "accuracy": float(q["correct"].mean()) if n else math.nan}
    holds = None if n < min_n else bool(measured["median_dominate_layer"] <= L / 2
                                        and measured["median_choice_settled_layer_stays"]
                                        > L / 2)
    return {"claim": claim, "lens": lens, "measured": measured, "criterion": crit,
            "holds": holds}


def function_words_claim(tables: Mapping[str, pd.DataFrame], lens: str, ctx: Ctx
                         ) -> dict[str, Any]:
    """Function words are decided earliest: ``pos_summary`` on natural text
    (:func:`_pos_claim`), the token-class analog on builtin-task text."""
    min_n = ctx.min_n
    claim = "function words (DET, ADP, PUNCT) are decided earliest (POS)"
    if not ctx.builtin:
        return _pos_claim(tables.get("pos_summary"), claim, lens, min_n=min_n)
    if "token_class_summary" not in tables:
        return _not_measured(claim, lens, f"not measured: no token-class table ({_NA})")
    s = tables["token_class_summary"]
    s = s[(s.lens == lens) & (s.variant == "first")].set_index("token_class")
    means = {c: float(s.loc[c, "mean_layer"]) if c in s.index else math.nan
             for c in TOKEN_CLASSES}
    ns = {c: int(s.loc[c, "n_used"]) if c in s.index else 0 for c in TOKEN_CLASSES}
    func = [c for c in ("operator", "bracket") if ns[c] >= min_n]
    holds = None if ns["digit"] < min_n or not func else \
        bool(all(means[c] < means["digit"] for c in func))
    return {"claim": claim + f" — analog on {BUILTIN_TEXT_KIND}: function-like "
                             "tokens (operators, brackets) before digits",
            "lens": lens, "measured": {"mean_earliest_layer": means, "n_correct": ns},
            "criterion": ("mean earliest layer at k=1 (first hit, correct-only, by "
                          "class of the true next token) of operators and of brackets "
                          f"(each with ≥ {min_n} prompts) < that of digits; None if "
                          f"digits or both function-like classes have < {min_n}"),
            "holds": holds}


#: The claims in the summary's order (each record per lens).
CLAIMS = (frequency_claim, flip_claim, facts_claim, mcq_claim, function_words_claim)


def _not_measured(claim: str, lens: str, criterion: str) -> dict[str, Any]:
    return {"claim": claim, "lens": lens, "measured": {}, "criterion": criterion,
            "holds": None}


def _pos_claim(summ: pd.DataFrame | None, claim: str, lens: str, *, min_n: int
               ) -> dict[str, Any]:
    """The POS claim on natural text from the ``pos_summary`` table."""
    crit = ("mean earliest layer at k=1 (first hit, correct-only prompts) of every function "
            "tag < that of every content tag, over the tags with ≥ "
            f"{min_n} correct prompts; None if no function or no content tag has that many "
            "(medians and the pooled function / content means reported beside)")
    if summ is None or not len(summ):
        return _not_measured(claim, lens, crit + " — not measured: the POS case study did "
                                                 "not run")
    s = summ[(summ.lens == lens) & (summ.variant == "first")].set_index("upos")
    means = {str(t): float(r.mean_layer) for t, r in s.iterrows()}
    medians = {str(t): float(r.median_layer) for t, r in s.iterrows()}
    ns = {str(t): int(r.n_used) for t, r in s.iterrows()}
    cls = {str(t): str(r.word_class) for t, r in s.iterrows()}
    func = [t for t in means if cls[t] == "function" and ns[t] >= min_n]
    cont = [t for t in means if cls[t] == "content" and ns[t] >= min_n]

    def pooled(group: str) -> float:
        tot = sum(ns[t] for t in means if cls[t] == group and ns[t])
        return (sum(means[t] * ns[t] for t in means if cls[t] == group and ns[t]) / tot
                if tot else math.nan)

    holds = None if not func or not cont else bool(
        max(means[t] for t in func) < min(means[t] for t in cont))
    return {"claim": claim, "lens": lens,
            "measured": {"mean_earliest_layer": means, "median_earliest_layer": medians,
                         "n_correct": ns, "word_class": cls,
                         "pooled_mean_function": pooled("function"),
                         "pooled_mean_content": pooled("content"),
                         "ci95": {str(t): [float(r.ci95_lo), float(r.ci95_hi)]
                                  for t, r in s.iterrows()}},
            "criterion": crit, "holds": holds}
