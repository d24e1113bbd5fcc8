"""Post-RoPE queries and keys of chosen decoder layers (docs/methods.md §3).

The ``q[l]`` / ``k[l]`` read points of the model-access runner
(:func:`pipeline.model_access.run`): a pre-hook on each chosen layer's attention module
receives exactly the ``hidden_states`` (already input-normed) and ``position_embeddings``
``(cos, sin)`` that the module's own forward gets, and recomputes ``q``/``k`` the way the
HF Llama/Qwen2/Qwen3/Mistral/Gemma/OLMo2-family modules do
(:func:`pipeline.model_access.post_rope_qk`). KV heads stay unexpanded here
(``[B, KV, T, D]``); consumers expand them (query head ``h`` reads KV head
``h // (H // KV)``, as ``repeat_kv``). The forward stops before the last chosen block
(the runner's ``stop_after``): that block's q/k come from its normed input. Checked
against eager ``output_attentions`` in ``tests/test_attention.py``.

Why read q/k rather than patch the attention interface: the interface is dispatched
through ``config._attn_implementation``, which also selects the mask format, and
registering a wrapper changes a process-wide table; reading q/k leaves the model
untouched, works with whatever attention backend it runs (sdpa, eager, flash) and costs
two small projections per chosen layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pipeline.model_access import (
    DecoderLayout,
    Point,
    find_layout,
    position_ids,
    post_rope_qk,
    run,
    sliding_window_of,
)

__all__ = [
    "DEFAULT_ATTN_PATTERN",
    "capture_qk",
    "default_layers",
    "find_attention_modules",
    "positions_from_mask",
    "post_rope_qk",
    "resolve_layers",
    "run_capture",
    "sliding_window_of",
]

DEFAULT_ATTN_PATTERN = r"(?:^|\.)layers\.(\d+)\.self_attn$"
"""Regex over ``model.named_modules()`` names; group 1 is the 0-based block index. Only
used when a caller passes its own pattern: by default the attention modules come from
:func:`pipeline.model_access.find_layout` (every architecture it resolves)."""

OnLayer = Callable[[int, nn.Module, Tensor, Tensor], None]


def find_attention_modules(
    model: nn.Module, pattern: str = DEFAULT_ATTN_PATTERN, *, layout: DecoderLayout | None = None
) -> dict[int, nn.Module]:
    """Attention modules by 0-based decoder-block index: the blocks' attention modules
    (:func:`pipeline.model_access.find_layout`, or the ``layout`` given), or, for a custom
    ``pattern``, the modules whose names match it; ValueError if none match."""
    if pattern == DEFAULT_ATTN_PATTERN:
        return {i: blk.attn for i, blk in enumerate((layout or find_layout(model)).blocks)}
    rx = re.compile(pattern)
    found: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        m = rx.search(name)
        if m:
            if int(m.group(1)) in found:
                raise ValueError(
                    f"pattern {pattern!r} matches block {m.group(1)} twice ({name}); "
                    "pass a more specific attn_pattern"
                )
            found[int(m.group(1))] = module
    if not found:
        raise ValueError(f"no attention module matches the pattern {pattern!r}")
    return dict(sorted(found.items()))


def default_layers(n_layers: int, n: int = 5) -> list[int]:
    """docs/methods.md §3.2: ``n`` evenly spaced 0-based blocks from ⌊L/3⌋ to ⌊2L/3⌋
    (deduplicated)."""
    lo, hi = n_layers // 3, min((2 * n_layers) // 3, n_layers - 1)
    if n == 1 or hi == lo:
        return [lo]
    return sorted({int(lo + (hi - lo) * i / (n - 1) + 0.5) for i in range(n)})


def resolve_layers(
    model: nn.Module, layers: Sequence[int] | None, pattern: str = DEFAULT_ATTN_PATTERN, *,
    modules: dict[int, nn.Module] | None = None,
) -> list[int]:
    """Sorted unique 0-based layers (``None`` → :func:`default_layers`), validated against
    ``modules`` (default: :func:`find_attention_modules`)."""
    modules = modules if modules is not None else find_attention_modules(model, pattern)
    n_layers = max(modules) + 1
    chosen = default_layers(n_layers) if layers is None else sorted(set(int(x) for x in layers))
    if not chosen:
        raise ValueError("layers is empty")
    missing = [x for x in chosen if x not in modules]
    if missing:
        raise ValueError(
            f"layers {missing} have no attention module matching {pattern!r} "
            f"(model has blocks 0..{n_layers - 1})"
        )
    return chosen


#: Position ids counted over real tokens (the public name kept for
#: :func:`pipeline.model_access.position_ids`).
positions_from_mask = position_ids


def run_capture(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    layers: Sequence[int] | None,
    on_layer: OnLayer,
    *,
    pattern: str = DEFAULT_ATTN_PATTERN,
    position_ids: Tensor | None = None,
) -> list[int]:
    """One no-grad forward calling ``on_layer(layer, module, q, k)`` for each chosen layer
    (ascending); the forward stops before the last one's attention computes (its q/k come
    from its normed input). Returns the resolved layers.
    Position ids default to :func:`positions_from_mask`."""
    layout = find_layout(model)
    modules = find_attention_modules(model, pattern, layout=layout)
    chosen = resolve_layers(model, layers, pattern, modules=modules)
    for i in chosen:
        if modules[i] is not layout.blocks[i].attn:
            raise ValueError(f"pattern {pattern!r} picks {type(modules[i]).__name__} in block "
                             f"{i}, not the block's attention module")
    got: dict[int, Tensor] = {}
    called: list[int] = []

    def read_q(i: int) -> Callable[[Tensor], None]:
        return lambda q: got.__setitem__(i, q)

    def read_k(i: int) -> Callable[[Tensor], None]:
        def read(k: Tensor) -> None:
            on_layer(i, modules[i], got.pop(i), k)
            called.append(i)
        return read

    reads = {}
    for i in chosen:
        reads[Point("q", i)] = read_q(i)
        reads[Point("k", i)] = read_k(i)
    with torch.no_grad():
        run(model, input_ids, attention_mask, read=reads, stop_after=chosen[-1],
            position_ids_=position_ids, layout=layout)
    if called != chosen:
        raise RuntimeError(f"attention modules of layers {sorted(set(chosen) - set(called))} "
                           "were never called")
    return chosen


def capture_qk(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    layers: Sequence[int] | None = None,
    *,
    pattern: str = DEFAULT_ATTN_PATTERN,
    position_ids: Tensor | None = None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """``{layer: (q [B, H, T, D], k [B, KV, T, D])}``, post-RoPE, KV heads unexpanded."""
    out: dict[int, tuple[Tensor, Tensor]] = {}
    run_capture(
        model,
        input_ids,
        attention_mask,
        layers,
        lambda i, _m, q, k: out.__setitem__(i, (q, k)),
        pattern=pattern,
        position_ids=position_ids,
    )
    return out
