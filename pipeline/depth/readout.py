"""Raw residual-stream reads at chosen positions and the lens read-out (docs/methods.md §4).

:func:`capture_hidden` runs one no-grad forward through the model-access runner
(:func:`pipeline.model_access.run`, reading ``resid_pre[0]`` and every ``resid_post[l]``)
and keeps h[l] only at
the selected positions: h[0] is the input of block 1 (the embedding output, after any
embedding scaling), h[l] (1 ≤ l ≤ L) the raw output of block l, *before* the final norm
(HF's ``output_hidden_states[-1]`` is post-norm and is never used). The result is
[L+1, n, d] fp32 for the n selected positions — never anything of vocabulary width.

:class:`Readout` maps a hidden state to logits the way the model does at its output,
``W_U norm_f(x) (+ b)`` (plus a Gemma-style final soft-cap), in fp32 with detached
(frozen) weights: a frozen :class:`pipeline.model_access.Unembed` with the final norm,
differentiable with respect to ``x`` only, so a tuned lens can be trained through it
without touching the model's parameters or their ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pipeline.model_access import (
    DecoderLayout,
    Point,
    Unembed,
    eval_mode,
    find_layout,
    run,
    softcap_of,
)


def last_positions(mask: Tensor) -> Tensor:
    """Index of the last non-padding position of each row of a [B, T] mask (left or right
    padding, or none); ``ValueError`` if a row has no real token."""
    mask = mask.bool()
    if not bool(mask.any(-1).all()):
        raise ValueError("a row of attention_mask has no non-padding position")
    n_tok = mask.shape[-1]
    return n_tok - 1 - mask.flip(-1).long().argmax(-1)


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the input embedding's device."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return emb.weight.device if emb is not None else next(model.parameters()).device


def pad_token_ids(
    seqs: Sequence[Sequence[int]], pad_id: int, *, side: str = "left"
) -> tuple[Tensor, Tensor]:
    """Pad token-id lists into ``(input_ids, attention_mask)`` [B, T_max] (LongTensors)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_token_ids needs a non-empty list of non-empty sequences")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        row = torch.as_tensor(list(s), dtype=torch.long)
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl] = row
        mask[i, sl] = 1
    return ids, mask


@torch.no_grad()
def capture_hidden(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    positions: Tensor | None = None,
    layout: DecoderLayout | None = None,
    out_device: torch.device | str | None = None,
) -> Tensor:
    """Raw h[0]..h[L] at the selected positions: float32 [L+1, n, d].

    ``positions``: bool [B, T]; the n selected positions come in row-major order (row by
    row, left to right). Default: the last non-padding position of every row (n = B, in
    batch order). Position ids are computed from the mask, so left padding is exact.
    ``out_device``: where the result lives (default: the ``lm_head`` weight's device).
    """
    layout = layout or find_layout(model)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mask = attention_mask.to(input_ids.device).bool()
    if positions is None:
        positions = torch.zeros_like(mask)
        positions[torch.arange(mask.shape[0], device=mask.device), last_positions(mask)] = True
    positions = positions.to(mask.device).bool()
    if positions.shape != mask.shape:
        raise ValueError(f"positions {tuple(positions.shape)} must match input_ids "
                         f"{tuple(mask.shape)}")
    flat_idx = positions.reshape(-1).nonzero().squeeze(1)
    n_layers = len(layout.blocks)
    dev = torch.device(out_device) if out_device is not None else layout.lm_head.weight.device
    out: list[Tensor | None] = [None] * (n_layers + 1)
    idx_cache: dict[torch.device, Tensor] = {}

    def gather(h: Tensor) -> Tensor:
        if h.device not in idx_cache:
            idx_cache[h.device] = flat_idx.to(h.device)
        return h.reshape(-1, h.shape[-1]).index_select(0, idx_cache[h.device]).to(
            device=dev, dtype=torch.float32)

    def put(i: int) -> Callable[[Tensor], None]:
        return lambda h: out.__setitem__(i, gather(h))

    reads = {Point("resid_pre", 0): put(0)}
    reads.update({Point("resid_post", i): put(i + 1) for i in range(n_layers)})
    with eval_mode(model):
        run(model, input_ids, mask, read=reads, layout=layout)
    if any(o is None for o in out):
        missing = [i for i, o in enumerate(out) if o is None]
        raise RuntimeError(f"reads did not fire for h{missing} (unusual decoder?)")
    return torch.stack(out)  # type: ignore[arg-type]


class Readout(Unembed):
    """``x [n, d] -> logits [n, V]`` = ``W_U norm_f(x) + b`` (fp32, soft-capped if the
    config says so): a frozen :class:`pipeline.model_access.Unembed` over the model's final
    norm and unembedding. A model without a final norm reads ``W_U x``.

    ``chunk_rows`` (default: rows whose [rows, V] fp32 block fits in 256 MiB) is what
    callers use to bound their [rows, V] blocks; :meth:`logits` itself does one GEMM.
    """

    def __init__(self, model: nn.Module, *, layout: DecoderLayout | None = None,
                 chunk_rows: int | None = None) -> None:
        layout = layout or find_layout(model)
        super().__init__(layout.lm_head, norm=layout.final_norm, softcap=softcap_of(model),
                         chunk_rows=chunk_rows, frozen=True)
        self.num_layers = len(layout.blocks)
