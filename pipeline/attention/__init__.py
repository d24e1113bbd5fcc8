"""Attention rhythm (docs/methods.md §3): head groups, WAAD, FAI, preplan/anchor tokens and
the token credit weights of attention-based credit assignment.

Public API::

    rhythm(model, input_ids, response_mask, attention_mask=None, *, layers=None, window=10,
           h_lo=10, h_hi=100, head_frac=0.3, top_frac=0.4, ...) -> Rhythm
    credit_weights(rhythm, method, *, gamma_amp=1.5, alpha=0.5, shift=0, ...) -> Tensor

Modules: :mod:`.capture` (post-RoPE q/k of the chosen layers, early stop),
:mod:`.head_stats` (chunked softmax and per-head reductions), :mod:`.metrics` (the batch
entry point :func:`rhythm`, its result :class:`Rhythm`, the head groups),
:mod:`pipeline.attention.rhythm` (WAAD, FAI, Δ and the token classes: preplan, anchor,
locally dominated, intro), :mod:`.credit` (γ and the alignment convention), :mod:`.stage`
(the DAG stage: tables, summary, figures).

``pipeline.attention.rhythm`` is the *function* (the name is bound last below, over the
submodule of the same name that importing :mod:`.metrics` loads first). The module is
``importlib.import_module("pipeline.attention.rhythm")``, or import from it directly
(``from pipeline.attention.rhythm import waad, fai``); ``import pipeline.attention.rhythm
as m`` reads the package attribute first and so also gives the function.
"""

from pipeline.attention.capture import capture_qk, default_layers, find_attention_modules
from pipeline.attention.credit import METHODS, credit_weights
from pipeline.attention.metrics import Rhythm, rhythm  # last: the function over the module

__all__ = [
    "METHODS",
    "Rhythm",
    "capture_qk",
    "credit_weights",
    "default_layers",
    "find_attention_modules",
    "rhythm",
]
