"""Entropy change per layer and module, ΔH (docs/methods.md §1.1)."""

from __future__ import annotations

from torch import Tensor


def entropy_changes(ents: dict[str, Tensor]) -> dict[str, Tensor]:
    """ΔH from :func:`internal_entropies` output, each [B, L, T] (NaN at padding).

    ``"layer"``: H(h[l]) − H(h[l−1]); ``"attn"``: H(A^l) − H(attn_in^l);
    ``"ffn"``: H(F^l) − H(ffn_in^l) (docs/methods.md §1.1), l = 1..L along dim 1.
    """
    layer = ents["layer"]
    return {
        "layer": layer[:, 1:] - layer[:, :-1],
        "attn": ents["attn"] - ents["attn_in"],
        "ffn": ents["ffn"] - ents["ffn_in"],
    }
