"""The one runner: a decoder forward with named read points and an early stop (docs/methods.md §0).

``run(model, input_ids, attention_mask, read={point: fn}, stop_after=k)`` executes

    embed -> blocks[0..k-1] -> (final norm, when ``final_norm=True`` and k = L)

as an explicit loop in one call, calling ``fn(tensor)`` at each named point as the
forward passes it. Points (:mod:`.points`, 0-based block index ``l``):
``resid_pre[l]`` (= h[l], the input of block l; ``resid_pre[0]`` is the embedding
output), ``resid_post[l]`` (= h[l+1], the raw block output, before any final norm),
``attn_in[l]`` / ``ffn_in[l]`` (the attention / MLP module's actual, normed input),
``attn_out[l]`` / ``ffn_out[l]`` (the residual contributions A / F: the module outputs,
or the post-norms' outputs in sandwich-norm blocks), ``q[l]`` / ``k[l]`` (post-RoPE queries
[B, H, T, D] and keys [B, KV, T, D] of block l's attention).

The loop never raises to stop: blocks after ``k`` are simply not called, so they get no
compute and no gradient. ``q[k]`` / ``k[k]`` of the first block *not* run may still be
read (they depend only on ``resid_pre[k]``): the loop computes them from its attention
norm without running the block's attention or MLP. The call can later be registered as
an FSDP2 root forward method (``register_fsdp_forward_method``). Residual points are read
in the loop itself; points inside a block are read by forward (pre-)hooks registered for
the duration of the call. This module and :mod:`.unembed` are the only places that hook
or unembed a model.

The explicit loop follows the decoder forward of transformers 5.x for the architectures
in :data:`LOOP_ARCHS` (same mask construction, rotary embeddings and block calls; tested
equal to ``model.model(...)``). Any other decoder-only layout that :func:`find_layout`
resolves runs its own ``decoder(...)`` forward with the same read points (residual points
through block hooks) and, having no way to stop without raising, computes every block.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.model_access.layout import DecoderLayout, find_layout, post_rope_qk
from pipeline.model_access.points import Point

#: Architectures (``config.model_type``) whose decoder forward the explicit loop replays.
LOOP_ARCHS = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo2"}
)

ReadFn = Callable[[Tensor], None]


def position_ids(attention_mask: Tensor) -> Tensor:
    """Position ids counted over real tokens only, as ``generate`` does: ``cumsum − 1``
    clamped at 0 (exact under left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode, restoring the model's training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def hidden_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The hidden-states input of a module call (keyword ``hidden_states`` or first arg)."""
    x = kwargs.get("hidden_states")
    if isinstance(x, Tensor):
        return x
    if args and isinstance(args[0], Tensor):
        return args[0]
    raise RuntimeError("cannot find the hidden_states input of a hooked module call")


def first_tensor(output: Any) -> Tensor:
    """A module's main output: the tensor itself or the first element of a tuple/list."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise RuntimeError(f"cannot read a tensor from a module output ({type(output)})")


def loop_supported(model: nn.Module, layout: DecoderLayout) -> bool:
    """Whether :func:`run` replays this decoder's forward as an explicit loop."""
    cfg = getattr(layout.decoder, "config", None)
    if getattr(cfg, "model_type", None) not in LOOP_ARCHS:
        return False
    if getattr(cfg, "use_bidirectional_attention", False):
        return False
    return all(hasattr(layout.decoder, n) for n in ("embed_tokens", "rotary_emb"))


def _masks(decoder: nn.Module, emb: Tensor, mask: Tensor, pos: Tensor) -> list[Any]:
    """The attention mask each block receives, built as the decoder's own forward does."""
    from transformers.masking_utils import (
        create_causal_mask,
        create_sliding_window_causal_mask,
    )

    cfg = decoder.config
    kw = dict(config=cfg, inputs_embeds=emb, attention_mask=mask, past_key_values=None,
              position_ids=pos)
    n = cfg.num_hidden_layers
    if cfg.model_type == "mistral":
        fn = create_causal_mask if cfg.sliding_window is None else \
            create_sliding_window_causal_mask
        return [fn(**kw)] * n
    types = getattr(cfg, "layer_types", None)
    if not types or cfg.model_type in ("llama", "gemma", "olmo2"):
        return [create_causal_mask(**kw)] * n
    built: dict[str, Any] = {}
    for t in set(types):
        fn = create_sliding_window_causal_mask if t == "sliding_attention" else create_causal_mask
        built[t] = fn(**kw)
    return [built[types[i]] for i in range(n)]


def _rotary(decoder: nn.Module, hidden: Tensor, pos: Tensor) -> list[Any]:
    """Per-block ``(cos, sin)``: one for all blocks, or one per layer type (Gemma 3)."""
    rot = decoder.rotary_emb
    n = decoder.config.num_hidden_layers
    if "layer_type" in inspect.signature(rot.forward).parameters:
        types = decoder.config.layer_types
        per = {t: rot(hidden, pos, t) for t in set(types)}
        return [per[types[i]] for i in range(n)]
    return [rot(hidden, pos)] * n


def _qk_hook(block_idx: int, fns: dict[str, ReadFn], module: nn.Module) -> Callable:
    sig = inspect.signature(module.forward)
    var_kw = next((n for n, p in sig.parameters.items()
                   if p.kind is inspect.Parameter.VAR_KEYWORD), None)

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = sig.bind_partial(*args, **kwargs).arguments
        extra = bound.get(var_kw, {}) if var_kw else {}
        hidden = bound.get("hidden_states", extra.get("hidden_states"))
        pos_emb = bound.get("position_embeddings", extra.get("position_embeddings"))
        if hidden is None or pos_emb is None:
            raise ValueError(f"{type(mod).__name__} (block {block_idx}) was not called with "
                             "hidden_states and position_embeddings (cos, sin); q/k reads "
                             "are not supported for this architecture")
        q, k = post_rope_qk(mod, hidden, pos_emb)
        if "q" in fns:
            fns["q"](q)
        if "k" in fns:
            fns["k"](k)
    return hook


def _register(layout: DecoderLayout, reads: dict[Point, ReadFn], residual_hooks: bool
              ) -> list[Any]:
    """Hooks for the points inside blocks (and, without the loop, the residual ones)."""
    handles = []
    qk: dict[int, dict[str, ReadFn]] = {}
    for p, fn in reads.items():
        blk = layout.blocks[p.layer]

        def pre(fn: ReadFn = fn) -> Callable:
            return lambda _m, args, kwargs: fn(hidden_arg(args, kwargs))

        def post(fn: ReadFn = fn) -> Callable:
            return lambda _m, _a, out: fn(first_tensor(out))

        if p.kind in ("q", "k"):
            qk.setdefault(p.layer, {})[p.kind] = fn
        elif p.kind == "attn_in":
            handles.append(blk.attn.register_forward_pre_hook(pre(), with_kwargs=True))
        elif p.kind == "ffn_in":
            handles.append(blk.mlp.register_forward_pre_hook(pre(), with_kwargs=True))
        elif p.kind == "attn_out":
            handles.append(blk.attn_out.register_forward_hook(post()))
        elif p.kind == "ffn_out":
            handles.append(blk.ffn_out.register_forward_hook(post()))
        elif residual_hooks and p.kind == "resid_pre":
            handles.append(blk.block.register_forward_pre_hook(pre(), with_kwargs=True))
        elif residual_hooks and p.kind == "resid_post":
            handles.append(blk.block.register_forward_hook(post()))
    for layer, fns in qk.items():
        attn = layout.blocks[layer].attn
        handles.append(attn.register_forward_pre_hook(_qk_hook(layer, fns, attn),
                                                      with_kwargs=True))
    return handles


def run(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    read: Mapping[str | Point, ReadFn] | None = None,
    stop_after: int | None = None,
    final_norm: bool = False,
    position_ids_: Tensor | None = None,
    layout: DecoderLayout | None = None,
) -> Tensor:
    """One forward of ``model``'s decoder; returns the residual stream where it stopped.

    ``stop_after``: number of blocks to run, k in 0..L (None = L); the result is the raw
    ``h[k]`` [B, T, d] — or ``norm_f(h[L])`` with ``final_norm=True`` (only when all L
    blocks run). ``read``: ``{point: fn}``; ``fn`` gets the full [B, T, d] activation (the
    tensors of q/k points: [B, heads, T, D]), with autograd history when grad is enabled.
    A point in a block that does not run is a ``ValueError``, except ``q[k]``/``k[k]``.
    Position ids come from the mask (:func:`position_ids`) unless given; no KV cache. The
    model's train/eval mode is left as it is (wrap the call in :func:`eval_mode` for
    analyses).
    """
    layout = layout or find_layout(model, need_final_norm=final_norm)
    n_layers = len(layout.blocks)
    k = n_layers if stop_after is None else int(stop_after)
    if not 0 <= k <= n_layers:
        raise ValueError(f"stop_after={stop_after} must be in 0..{n_layers} (blocks to run)")
    if final_norm and k != n_layers:
        raise ValueError("final_norm=True needs every block (stop_after=None or L)")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    reads = {Point.parse(p): fn for p, fn in (read or {}).items()}
    ahead = {p: fn for p, fn in reads.items() if p.layer == k and p.kind in ("q", "k")}
    if late := sorted(str(p) for p in reads
                      if (p.layer >= k and p not in ahead) or p.layer >= n_layers):
        raise ValueError(f"read points {late} lie after the last block run (k={k})")
    mask = (torch.ones_like(input_ids) if attention_mask is None
            else attention_mask.to(input_ids.device)).long()
    pos = position_ids(mask) if position_ids_ is None else position_ids_
    loop = loop_supported(model, layout)
    if not loop and ahead:  # the decoder's own forward runs block k anyway: hook it
        ahead = {}
    handles = _register(layout, {p: f for p, f in reads.items() if p not in ahead},
                        residual_hooks=not loop)
    try:
        if not loop:
            return _run_decoder(layout, input_ids, mask, pos, k, final_norm)
        pre = {p.layer: fn for p, fn in reads.items() if p.kind == "resid_pre"}
        post = {p.layer: fn for p, fn in reads.items() if p.kind == "resid_post"}
        dec = layout.decoder
        hidden = dec.embed_tokens(input_ids)
        masks = _masks(dec, hidden, mask, pos)
        rotary = _rotary(dec, hidden, pos)
        for i in range(k):
            if i in pre:
                pre[i](hidden)
            hidden = first_tensor(layout.blocks[i].block(
                hidden, attention_mask=masks[i], position_embeddings=rotary[i],
                position_ids=pos, past_key_values=None, use_cache=False))
            if i in post:
                post[i](hidden)
        if ahead:
            blk = layout.blocks[k]
            sharded = hasattr(blk.block, "unshard")  # FSDP2: block k's forward never runs
            if sharded:
                if torch.is_grad_enabled():
                    raise RuntimeError("q/k reads ahead of the stop on an FSDP2 model need "
                                       "no_grad (the block is resharded right after)")
                blk.block.unshard()
            try:
                x = hidden if blk.attn_norm is None else blk.attn_norm(hidden)
                q, kk = post_rope_qk(blk.attn, x, rotary[k])
                for p, fn in ahead.items():
                    fn(q if p.kind == "q" else kk)
            finally:
                if sharded:
                    blk.block.reshard()
        if final_norm and layout.final_norm is not None:
            hidden = layout.final_norm(hidden)
        return hidden
    finally:
        for h in handles:
            h.remove()


def _run_decoder(layout: DecoderLayout, input_ids: Tensor, mask: Tensor, pos: Tensor,
                 k: int, final_norm: bool) -> Tensor:
    """Fallback for layouts outside :data:`LOOP_ARCHS`: the decoder's own forward (all
    blocks run), h[k] read by a hook on block k (its input for k = 0)."""
    got: dict[str, Tensor] = {}
    if k == 0:
        handle = layout.blocks[0].block.register_forward_pre_hook(
            lambda _m, args, kw: got.__setitem__("h", hidden_arg(args, kw)), with_kwargs=True)
    else:
        handle = layout.blocks[k - 1].block.register_forward_hook(
            lambda _m, _a, out: got.__setitem__("h", first_tensor(out)))
    try:
        out = layout.decoder(input_ids=input_ids, attention_mask=mask, position_ids=pos,
                             use_cache=False)
    finally:
        handle.remove()
    if final_norm:
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return got["h"]
