"""Internal layer and module policies' entropies (docs/methods.md §1.1, §1.2).

One no-grad forward through the model-access runner (:func:`pipeline.model_access.run`)
reading every block's residual input/output and its attention/MLP inputs and residual
contributions. Each read is gathered at the non-padding positions and reduced to
entropies at once (:meth:`pipeline.model_access.Unembed.entropy`), so padding costs
nothing and no [layers, tokens, vocab] tensor exists. A plain forward before it keeps the
gathered rows of the raw h[L] ([tokens, d]) for ``cos(h[l], h[L])``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from pipeline.model_access import (
    Point,
    UnembeddingEntropy,
    cosine,
    eval_mode,
    find_layout,
    position_ids,
    run,
    softcap_of,
)

#: Keys of :func:`internal_entropies` with one entry per block, shape [B, L, T].
MODULE_KEYS = ("attn", "ffn", "attn_in", "ffn_in", "cos_attn", "cos_ffn")


#: Positions counted over real tokens only (the public name kept for
#: :func:`pipeline.model_access.position_ids`).
position_ids_from_mask = position_ids


@torch.no_grad()
def internal_entropies(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    apply_final_norm: bool = False,
    chunk_tokens: int | None = None,
    token_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Entropies (nats) of the internal layer and module policies, docs/methods.md §1.1.

    Returns float32 tensors on ``input_ids.device``, NaN at padding positions:

    - ``"layer"`` [B, L+1, T]: H(softmax(W_U h[l])) for h[0] (input of block 1) … h[L]
      (raw output of block L, before the final norm);
    - ``"attn"``, ``"ffn"`` [B, L, T]: H of the residual contributions A^l (attention output
      after ``o_proj``) and F^l (MLP output); sandwich-norm blocks (Gemma 2/3, OLMo 2):
      the post-attention / post-feedforward norm outputs, i.e. what is added to the residual;
    - ``"attn_in"``, ``"ffn_in"`` [B, L, T]: H of the modules' actual (normed) inputs,
      input_layernorm(h[l−1]) and post_attention_layernorm(h[l−1] + A^l);
    - ``"cos_attn"`` = cos(A^l, h[l−1]), ``"cos_ffn"`` = cos(F^l, h[l−1] + A^l) [B, L, T];
    - ``"cos_final"`` [B, L+1, T]: cos(h[l], h[L]) for l = 0..L with the raw h[L] (before
      the final norm, so column L is 1; BuPO Fig. 5 "feature refinement"); it does not
      depend on ``apply_final_norm``. Costs one extra plain forward (no unembedding).

    ``apply_final_norm=True`` projects every quantity as softmax(W_U norm_f(x)) (logit
    lens). The ``lm_head`` bias and a ``config.final_logit_softcapping`` are included.
    ``chunk_tokens``: rows per unembedding GEMM (docs/methods.md §1.2); None = auto (≈256 MiB
    of logits per buffer). Position ids are computed from the mask, so left padding works.
    ``token_mask`` [B, T] (optional): project only these positions (e.g. the response
    tokens; the forward still sees the whole sequence); the others are NaN like padding.
    """
    layout = find_layout(model, need_final_norm=apply_final_norm)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    n_batch, n_tok = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mask = attention_mask.to(input_ids.device).bool()
    project = UnembeddingEntropy(
        layout.lm_head,
        final_norm=layout.final_norm if apply_final_norm else None,
        softcap=softcap_of(model),
        chunk_tokens=chunk_tokens,
    )
    n_layers = len(layout.blocks)
    keep = mask if token_mask is None else mask & token_mask.to(mask.device).bool()
    flat_idx = keep.reshape(-1).nonzero().squeeze(1)
    n_real = flat_idx.numel()
    dev = project.device
    vals = {key: torch.full((n_layers + 1, n_real), torch.nan, device=dev)
            for key in ("layer", "cos_final")}
    vals.update({k: torch.full((n_layers, n_real), torch.nan, device=dev) for k in MODULE_KEYS})
    filled: set[tuple[str, int]] = set()
    state: dict[str, Tensor] = {}
    idx_cache: dict[torch.device, Tensor] = {}

    def gather(h: Tensor) -> Tensor:
        if h.device not in idx_cache:
            idx_cache[h.device] = flat_idx.to(h.device)
        return h.reshape(-1, h.shape[-1]).index_select(0, idx_cache[h.device])

    def put(key: str, row: int, value: Tensor) -> None:
        vals[key][row] = value.to(dev)
        filled.add((key, row))

    def keep_top(h: Tensor) -> None:  # the raw h[L], gathered rows only [n_real, d]
        state["h_top"] = gather(h)

    def cos_top(row: int, x: Tensor) -> None:
        put("cos_final", row, cosine(x, state["h_top"].to(x.device)))

    def resid_pre(i: int) -> Callable[[Tensor], None]:
        def read(h: Tensor) -> None:
            state["h_in"] = gather(h)
            if i == 0:
                put("layer", 0, project(state["h_in"]))
                cos_top(0, state["h_in"])
        return read

    def resid_post(i: int) -> Callable[[Tensor], None]:
        def read(h: Tensor) -> None:
            x = gather(h)
            put("layer", i + 1, project(x))
            cos_top(i + 1, x)
            state.pop("h_in", None)
            state.pop("mid", None)
        return read

    def module_in(key: str, i: int) -> Callable[[Tensor], None]:
        return lambda x: put(key, i, project(gather(x)))

    def attn_out(i: int) -> Callable[[Tensor], None]:
        def read(out: Tensor) -> None:
            a = gather(out)
            put("attn", i, project(a))
            h_in = state["h_in"].to(a.device)
            put("cos_attn", i, cosine(a, h_in))
            state["mid"] = h_in.float() + a.float()
        return read

    def ffn_out(i: int) -> Callable[[Tensor], None]:
        def read(out: Tensor) -> None:
            f = gather(out)
            put("ffn", i, project(f))
            put("cos_ffn", i, cosine(f, state["mid"].to(f.device)))
        return read

    reads: dict[Point, Callable[[Tensor], None]] = {}
    for i in range(n_layers):
        reads[Point("resid_pre", i)] = resid_pre(i)
        reads[Point("attn_in", i)] = module_in("attn_in", i)
        reads[Point("attn_out", i)] = attn_out(i)
        reads[Point("ffn_in", i)] = module_in("ffn_in", i)
        reads[Point("ffn_out", i)] = ffn_out(i)
        reads[Point("resid_post", i)] = resid_post(i)
    try:
        with eval_mode(model):
            run(model, input_ids, mask, read={Point("resid_post", n_layers - 1): keep_top},
                layout=layout)
            run(model, input_ids, mask, read=reads, layout=layout)
    finally:
        project.release()
    expected = {(k, r) for k in ("layer", "cos_final") for r in range(n_layers + 1)}
    expected |= {(k, r) for k in MODULE_KEYS for r in range(n_layers)}
    if missing := sorted(expected - filled):
        raise RuntimeError(f"hooks did not fire for {missing[:5]} (unusual decoder layout?)")
    out = {}
    for key, v in vals.items():
        full = torch.full((v.shape[0], n_batch, n_tok), torch.nan, device=input_ids.device)
        full[:, keep] = v.to(input_ids.device)
        out[key] = full.permute(1, 0, 2).contiguous()
    return out
