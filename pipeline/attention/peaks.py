"""Peaks of a per-token signal of one response (docs/methods.md §3.13): the rule that the
attention-rhythm paper's Table 2 statistics need and do not specify. The primary rule is
``mad`` (a local maximum above the response's median plus one MAD); ``top10`` and
``top20`` (the top 10 % / 20 % of the response's values) are the sensitivity rules."""

from __future__ import annotations

import numpy as np

from pipeline.attention.rhythm import top_count  # §3.6's count rule, shared

PEAK_RULES = ("mad", "top10", "top20")
PRIMARY_RULE = "mad"
_TOP = {"top10": 0.1, "top20": 0.2}


def peaks(x: np.ndarray, rule: str = PRIMARY_RULE) -> np.ndarray:
    """Boolean peak flags of one response's values ``x`` [n] (NaN never a peak).

    - ``mad``: ``x[t]`` is a local maximum (greater than ``x[t−1]``, at least ``x[t+1]``; a
      missing or NaN neighbour does not block) and ``x[t] > median + MAD``, with
      ``MAD = median |x − median|`` over the finite values (unscaled);
    - ``top10`` / ``top20``: the ``top_count(q, n_finite)`` largest finite values (ties →
      the earlier position).
    """
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    out = np.zeros(x.shape, dtype=bool)
    if not ok.any():
        return out
    if rule == "mad":
        med = float(np.median(x[ok]))
        thr = med + float(np.median(np.abs(x[ok] - med)))
        prev = np.concatenate([[-np.inf], x[:-1]])
        nxt = np.concatenate([x[1:], [-np.inf]])
        prev = np.where(np.isfinite(prev), prev, -np.inf)
        nxt = np.where(np.isfinite(nxt), nxt, -np.inf)
        return ok & (x > prev) & (x >= nxt) & (x > thr)
    if rule in _TOP:
        idx = np.flatnonzero(ok)
        order = idx[np.argsort(-x[idx], kind="stable")]
        out[order[:top_count(_TOP[rule], idx.size)]] = True
        return out
    raise ValueError(f"unknown peak rule {rule!r}; known: {list(PEAK_RULES)}")


def within(flags: np.ndarray, back: int, ahead: int = 0) -> np.ndarray:
    """``hit[t] = any(flags[u] for u in [t − back, t + ahead])`` (inside the response)."""
    f = np.asarray(flags, dtype=bool)
    n = f.size
    c = np.concatenate([[0], np.cumsum(f)])
    t = np.arange(n)
    lo = np.clip(t - back, 0, n)
    hi = np.clip(t + ahead + 1, 0, n)
    return (c[hi] - c[lo]) > 0
