"""Boundary layer k for BuPO from the FFN entropy change curve (docs/methods.md §1.1, §2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def boundary_layer(
    delta_ffn: Tensor | Sequence[float],
    *,
    tol: float = 0.05,
    relative: bool = True,
    fallback: int | None = None,
) -> int:
    """1-based boundary layer: the end of the exploration phase of ΔH_ffn (docs/methods.md §1.1).

    ``delta_ffn`` [L]: the token-weighted mean ΔH_ffn per layer (``aggregate(...)[0]`` of
    ``entropy_changes(...)["ffn"]``). A layer is *exploring* when ΔH_ffn > thr, with
    ``thr = tol · max_l |ΔH_ffn^l|`` if ``relative`` (default: scale-free, since Llama's ΔH
    is ~50× smaller than Qwen3's) else ``thr = tol``. Scanning from layer 1 up, leading
    non-exploring layers are skipped; the boundary is the **last layer of the first run of
    consecutive exploring layers**, provided the curve then turns ≈0/negative (the run ends
    before layer L). Later exploring layers (a late bump) are ignored, and the threshold
    keeps near-zero noise of the integration phase from extending the run.

    Otherwise — no exploring layer (e.g. Llama: ΔH ≈ 0 then an abrupt convergence, whose
    large |ΔH| also lifts thr above the noise), or a run that reaches layer L (no turn) —
    ``fallback`` is returned, default L − 1: the penultimate layer the paper uses for Llama
    (1 for a one-layer model). NaN layers count as non-exploring. Trade-off of the relative
    threshold: an exploration peak smaller than ``tol`` × the largest |ΔH| (e.g. a very
    strong convergence) is not detected; use ``relative=False`` for an absolute threshold.
    """
    d = torch.as_tensor(delta_ffn, dtype=torch.float64).flatten()
    n_layers = d.numel()
    if n_layers == 0:
        raise ValueError("delta_ffn is empty")
    default = fallback if fallback is not None else max(1, n_layers - 1)
    finite = torch.isfinite(d)
    if not finite.any():
        return default
    thr = tol * d[finite].abs().max().item() if relative else tol
    exploring = (finite & (d > thr)).tolist()
    if True not in exploring:
        return default
    end = exploring.index(True)
    while end + 1 < n_layers and exploring[end + 1]:
        end += 1
    return default if end == n_layers - 1 else end + 1
