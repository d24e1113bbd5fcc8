"""Multiple-choice reads (docs/methods.md §4.6 case study iii): the option letters'
token ids, their ranks and flags per layer (:func:`option_ranks` for one batch,
:func:`predict_options` for many prompts), from :mod:`pipeline.depth.ranks`' read-out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.depth.lens import TunedLens
from pipeline.depth.ranks import (
    OPTION_FLAGS,
    _capture,
    multi_lens_predictions,
    option_flags,
    output_top1,
    read_lenses,
)
from pipeline.depth.readout import Readout


def option_token_ids(tokenizer, letters: Sequence[str] = ("A", "B", "C", "D"), *,
                     prefix: str = " ") -> list[int]:
    """Token id of each option letter as it follows ``"Answer:"`` (the last token of
    ``prefix + letter``, as :mod:`pipeline.evaluation` scores MMLU); must be distinct."""
    ids = [tokenizer(f"{prefix}{L}", add_special_tokens=False).input_ids[-1] for L in letters]
    if len(set(ids)) != len(ids):
        raise ValueError(f"option letters {list(letters)} do not map to distinct tokens")
    return ids


def option_ranks(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    option_ids: Sequence[int],
    *,
    lens: TunedLens | None = None,
    chunk_rows: int | None = None,
    readout: Readout | None = None,
    include_embedding: bool = False,
) -> dict[str, Tensor]:
    """Option tokens' ranks per layer at the last position (docs/methods.md §4 case study iii).

    Returns (Long/bool tensors on ``input_ids.device``; K = len(option_ids)):

    - ``"ranks"`` [B, L+1, K]: strict full-vocabulary rank of each option token;
    - ``"choice"`` [B]: the model's final choice, argmax of the K option logits at the
      output (as MMLU is scored; lowest option on a tie);
    - ``"dominate"`` [B, L+1]: the options occupy the top K, i.e. every option logit is
      strictly greater than every non-option logit (``min option > max non-option``);
    - ``"choice_top1"`` [B, L+1]: the chosen option is the lens's top-1 (strict rank 1);
    - ``"choice_settled"`` [B, L+1]: the chosen option is strictly above the other
      options (the choice among them is made, whatever the non-option tokens do);
    - ``"dominate_layer"``, ``"choice_top1_layer"``, ``"choice_settled_layer"`` [B]: first
      layer where the flag holds (−1 if never); ``"<flag>_layer_stays"``: first layer from
      which it holds through h[L] (a choice "settled" by chance at h[1] and lost again
      counts only in the first variant). Both search h[1]..h[L] (the decision-depth
      convention, docs/methods.md §4.4) unless ``include_embedding`` (h[0]..h[L]).
    """
    opt = torch.as_tensor(list(option_ids), dtype=torch.long)
    readout, hs = _capture(model, input_ids, attention_mask, chunk_rows, readout)
    final_opt = torch.empty(hs.shape[1], opt.numel(), dtype=torch.float32)

    def on_final(rows: slice, z: Tensor) -> None:  # the model's choice, not the lens's
        final_opt[rows] = z.index_select(1, opt.to(z.device)).cpu()

    output_top1(hs, readout, on_final)
    r = read_lenses(hs, {"lens": lens}, readout, option_ids=opt)["lens"]
    choice = final_opt.argmax(-1)
    flags = option_flags(r["option_ranks"], r["option_logits"], r["dominate"], choice,
                         include_embedding=include_embedding)
    out = {"ranks": r["option_ranks"], "choice": choice, "dominate": r["dominate"], **flags}
    return {k: v.to(input_ids.device) for k, v in out.items()}


def predict_options(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    option_ids: Sequence[int],
    *,
    lens: TunedLens | None = None,
    batch_size: int = 8,
    progress: bool = False,
    include_embedding: bool = False,
) -> dict[str, np.ndarray]:
    """:func:`option_ranks` over many prompts (left-padded, length-sorted batches;
    :func:`multi_lens_predictions` with one lens); the same keys, as numpy arrays in prompt
    order."""
    if not prompts:
        return {}
    r = multi_lens_predictions(model, tokenizer, prompts, {"lens": lens},
                               option_ids=option_ids, batch_size=batch_size,
                               progress=progress, desc="options",
                               include_embedding=include_embedding)["lens"]
    keys = ["choice", "dominate", "choice_top1", "choice_settled",
            *[f"{flag}_layer{v}" for flag in OPTION_FLAGS for v in ("", "_stays")]]
    return {"ranks": r["option_ranks"], **{k: r[k] for k in keys}}
