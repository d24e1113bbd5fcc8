"""Attention rhythm (methods.md §3): head groups, WAAD, FAI, preplan/anchor tokens and
the token credit weights of attention-based credit assignment.

Public API::

    rhythm(model, input_ids, response_mask, attention_mask=None, *, layers=None, window=10,
           h_lo=10, h_hi=100, head_frac=0.3, top_frac=0.4, ...) -> Rhythm
    credit_weights(rhythm, method, *, gamma_amp=1.5, alpha=0.5, shift=0, ...) -> Tensor

Modules: :mod:`.capture` (post-RoPE q/k through hooks, early stop), :mod:`.head_stats`
(chunked softmax and per-head reductions), :mod:`.metrics` (the :class:`Rhythm` metrics
and token sets; not called ``rhythm.py`` so that the function does not shadow the
module), :mod:`.credit` (γ and the alignment convention).
"""

from pipeline.attention.capture import capture_qk, default_layers, find_attention_modules
from pipeline.attention.credit import METHODS, credit_weights
from pipeline.attention.metrics import Rhythm, rhythm

__all__ = [
    "METHODS",
    "Rhythm",
    "capture_qk",
    "credit_weights",
    "default_layers",
    "find_attention_modules",
    "rhythm",
]
