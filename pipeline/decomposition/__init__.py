"""Internal-policy decomposition (BuPO, docs/methods.md §1): entropies per layer and module.

Public API::

    internal_entropies(model, input_ids, attention_mask=None, *, apply_final_norm=False,
                       chunk_tokens=None) -> dict[str, Tensor]
        # "layer", "cos_final" = cos(h[l], h[L]) [B, L+1, T]; "attn", "ffn", "attn_in",
        # "ffn_in", "cos_attn", "cos_ffn" [B, L, T]; nats, float32, NaN at padding
    entropy_changes(ents) -> {"layer", "attn", "ffn"}: ΔH [B, L, T]
    aggregate(values [B, L, T], mask [B, T]) -> (token_mean [L], per_sample_mean [B, L])
    boundary_layer(delta_ffn [L], *, tol=0.05, relative=True, fallback=None) -> int (1-based)
"""

from pipeline.decomposition.aggregate import aggregate
from pipeline.decomposition.boundary import boundary_layer
from pipeline.decomposition.changes import entropy_changes
from pipeline.decomposition.internal import (
    MODULE_KEYS,
    internal_entropies,
    position_ids_from_mask,
)
from pipeline.model_access import DecoderLayout, UnembeddingEntropy, cosine, find_layout

__all__ = [
    "MODULE_KEYS",
    "DecoderLayout",
    "UnembeddingEntropy",
    "aggregate",
    "boundary_layer",
    "cosine",
    "entropy_changes",
    "find_layout",
    "internal_entropies",
    "position_ids_from_mask",
]
