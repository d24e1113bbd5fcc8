"""Per-layer ranks and top-1 guesses at the last prompt position (methods.md §4).

One no-grad forward reads the raw h[0]..h[L] at the last non-padding position of each
row (:func:`pipeline.depth.readout.capture_hidden`, [L+1, B, d]); the logits are then
formed one layer and ``chunk_rows`` prompts at a time ([rows, V] fp32) and reduced at once
— nothing of shape [layers, prompts, vocab] exists.

Rank (strict): ``1 + #{v : z_l(v) > z_l(y*)}`` on the lens logits ``z_l`` (softmax is
monotone, so this is the rank under p_l; ties do not count against the target). The
default target is the model's greedy token: the argmax of the final logits
``W_U norm_f(h[L])`` at that position (the model's own output; lowest id on a tie).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pipeline.decomposition.layout import find_layout
from pipeline.depth.lens import TunedLens
from pipeline.depth.metrics import first_true
from pipeline.depth.readout import Readout, capture_hidden, input_device, pad_token_ids

#: fn(layer, rows, logits [len(rows), V], final_top1 [len(rows)]), once per layer and chunk.
LayerFn = Callable[[int, slice, Tensor, Tensor], None]


@torch.no_grad()
def layer_pass(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    fn: LayerFn,
    *,
    lens: TunedLens | None = None,
    chunk_rows: int | None = None,
    on_final: Callable[[slice, Tensor], None] | None = None,
    readout: Readout | None = None,
) -> Tensor:
    """The streaming core: read h[l] at the last positions, compute the model's output
    logits (untranslated h[L]) first — greedy token, and ``on_final(rows, logits)`` if
    given — then call ``fn`` with the lens logits of each layer 0..L for each chunk of
    rows. Returns the final greedy token [B] (on the ``lm_head`` device). ``readout``: a
    :class:`Readout` of ``model`` to reuse across calls (saves the fp32 copy of a
    half-precision ``lm_head``)."""
    layout = find_layout(model)
    readout = readout or Readout(model, layout=layout, chunk_rows=chunk_rows)
    hs = capture_hidden(model, input_ids, attention_mask, layout=layout)  # [L+1, B, d]
    n_layers, n_rows = hs.shape[0] - 1, hs.shape[1]
    final = torch.empty(n_rows, dtype=torch.long, device=readout.device)
    for rows in readout.chunks(n_rows):
        z = readout.logits(hs[n_layers, rows])
        final[rows] = z.argmax(-1)
        if on_final is not None:
            on_final(rows, z)
    for layer in range(n_layers + 1):
        for rows in readout.chunks(n_rows):
            x = hs[layer, rows]
            if lens is not None:
                x = lens.transform_hidden(x, layer)
            fn(layer, rows, readout.logits(x), final[rows])
    return final


def strict_rank(z: Tensor, token: Tensor) -> Tensor:
    """``1 + #{v : z[:, v] > z[:, token]}`` per row ([n, V], [n] -> [n])."""
    tz = z.gather(1, token.reshape(-1, 1).to(z.device))
    return 1 + (z > tz).sum(-1)


def lens_predictions(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    lens: TunedLens | None = None,
    targets: Tensor | Sequence[int] | None = None,
    chunk_rows: int | None = None,
    readout: Readout | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ranks [B, L+1], top1 [B, L+1], final_top1 [B])`` (LongTensors on
    ``input_ids.device``) at the last non-padding position of each row.

    ``ranks[:, l]``: strict rank of the target under the lens at h[l]; ``top1[:, l]``: the
    lens's top-1 token there (lowest id on a tie); ``final_top1``: the model's greedy
    token. ``lens=None`` is the logit lens ``softmax(W_U norm_f(h[l]))`` (column L is then
    the model output itself); a :class:`TunedLens` applies its translators first.
    ``targets`` [B] default to ``final_top1``.
    """
    n_batch = input_ids.shape[0]
    n_layers = len(find_layout(model).blocks)
    ranks = torch.empty(n_batch, n_layers + 1, dtype=torch.long)
    top1 = torch.empty_like(ranks)
    if targets is not None:
        targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if targets.shape[0] != n_batch:
            raise ValueError(f"targets has {targets.shape[0]} entries for {n_batch} rows")

    def fn(layer: int, rows: slice, z: Tensor, final: Tensor) -> None:
        t = final if targets is None else targets[rows]
        ranks[rows, layer] = strict_rank(z, t).cpu()
        top1[rows, layer] = z.argmax(-1).cpu()

    final = layer_pass(model, input_ids, attention_mask, fn, lens=lens, chunk_rows=chunk_rows,
                       readout=readout)
    dev = input_ids.device
    return ranks.to(dev), top1.to(dev), final.to(dev)


def target_ranks(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    lens: TunedLens | None = None,
    targets: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Strict rank [B, L+1] of the target (default: the model's greedy next token) at the
    last non-padding position, per layer h[0]..h[L]; ``lens=None`` is the logit lens."""
    return lens_predictions(model, input_ids, attention_mask, lens=lens, targets=targets)[0]


def layer_top1(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    lens: TunedLens | None = None,
) -> Tensor:
    """The lens's top-1 token [B, L+1] per layer at the last non-padding position."""
    return lens_predictions(model, input_ids, attention_mask, lens=lens)[1]


# --- many prompts ---------------------------------------------------------------------------

@dataclass
class LensPredictions:
    """Per-prompt results of :func:`predict_prompts` (numpy int64, prompt order)."""

    ranks: np.ndarray  # [N, L+1]
    top1: np.ndarray  # [N, L+1]
    final_top1: np.ndarray  # [N]
    targets: np.ndarray  # [N] the targets used (= final_top1 where none was given)


def _encode(tokenizer, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = tokenizer(p).input_ids if isinstance(p, str) else [int(t) for t in p]
        if not ids:
            raise ValueError(f"prompt {p!r} encodes to no tokens")
        out.append(ids)
    return out


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (sorted, longest first) to limit padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def predict_prompts(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    *,
    targets: Sequence[int] | None = None,
    lens: TunedLens | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> LensPredictions:
    """:func:`lens_predictions` over many prompts in left-padded, length-sorted batches.

    ``prompts``: strings (encoded with ``tokenizer(p)``, i.e. its default special tokens)
    or token-id lists (used as they are, e.g. teacher-forced fact prompts).
    """
    enc = _encode(tokenizer, prompts)
    tgt = None if targets is None else np.asarray(targets, dtype=np.int64).reshape(-1)
    if tgt is not None and len(tgt) != len(enc):
        raise ValueError(f"{len(tgt)} targets for {len(enc)} prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    n_cols = len(find_layout(model).blocks) + 1
    ranks = np.zeros((len(enc), n_cols), dtype=np.int64)
    top1 = np.zeros_like(ranks)
    final = np.zeros(len(enc), dtype=np.int64)
    dev = input_device(model)
    readout = Readout(model)
    for idx in tqdm(_batches([len(e) for e in enc], batch_size), desc="lens",
                    disable=not progress):
        ids, mask = pad_token_ids([enc[i] for i in idx], pad, side="left")
        t = None if tgt is None else torch.as_tensor(tgt[idx])
        r, t1, f = lens_predictions(model, ids.to(dev), mask.to(dev), lens=lens, targets=t,
                                    readout=readout)
        ranks[idx], top1[idx], final[idx] = r.cpu().numpy(), t1.cpu().numpy(), f.cpu().numpy()
    used = final.copy() if tgt is None else tgt
    return LensPredictions(ranks, top1, final, used)


# --- multiple choice ------------------------------------------------------------------------

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
) -> dict[str, Tensor]:
    """Option tokens' ranks per layer at the last position (methods.md §4 case study iii).

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
      which it holds through h[L] (a choice "settled" by chance at h[0] and lost again
      counts only in the first variant).
    """
    opt = torch.as_tensor(list(option_ids), dtype=torch.long)
    n_batch, n_opt = input_ids.shape[0], opt.numel()
    n_cols = len(find_layout(model).blocks) + 1
    ranks = torch.empty(n_batch, n_cols, n_opt, dtype=torch.long)
    dominate = torch.empty(n_batch, n_cols, dtype=torch.bool)
    opt_logits = torch.empty(n_batch, n_cols, n_opt, dtype=torch.float32)

    final_opt = torch.empty(n_batch, n_opt, dtype=torch.float32)

    def fn(layer: int, rows: slice, z: Tensor, _final: Tensor) -> None:
        o = opt.to(z.device)
        zo = z.index_select(1, o)  # [n, K]
        ranks[rows, layer] = torch.stack([strict_rank(z, o[k].expand(z.shape[0]))
                                          for k in range(n_opt)], 1).cpu()
        rest = z.clone()
        rest[:, o] = -torch.inf
        dominate[rows, layer] = (zo.min(-1).values > rest.max(-1).values).cpu()
        opt_logits[rows, layer] = zo.cpu()

    def on_final(rows: slice, z: Tensor) -> None:  # the model's choice, not the lens's
        final_opt[rows] = z.index_select(1, opt.to(z.device)).cpu()

    layer_pass(model, input_ids, attention_mask, fn, lens=lens, chunk_rows=chunk_rows,
               on_final=on_final, readout=readout)
    choice = final_opt.argmax(-1)
    choice_rank = ranks.gather(2, choice[:, None, None].expand(-1, n_cols, 1)).squeeze(2)
    chosen = opt_logits.gather(2, choice[:, None, None].expand(-1, n_cols, 1))
    others = opt_logits.scatter(2, choice[:, None, None].expand(-1, n_cols, 1), -torch.inf)
    settled = (chosen.squeeze(2) > others.max(-1).values)
    out = {"ranks": ranks, "choice": choice, "dominate": dominate,
           "choice_top1": choice_rank == 1, "choice_settled": settled}
    for flag in ("dominate", "choice_top1", "choice_settled"):
        out[f"{flag}_layer"] = first_true(out[flag])
        out[f"{flag}_layer_stays"] = first_true(out[flag], stays=True)
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
) -> dict[str, np.ndarray]:
    """:func:`option_ranks` over many prompts (left-padded, length-sorted batches); the
    same keys, as numpy arrays in prompt order."""
    enc = _encode(tokenizer, prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        tokenizer.eos_token_id
    dev = input_device(model)
    readout = Readout(model)
    out: dict[str, np.ndarray] = {}
    for idx in tqdm(_batches([len(e) for e in enc], batch_size), desc="options",
                    disable=not progress):
        ids, mask = pad_token_ids([enc[i] for i in idx], pad, side="left")
        res = option_ranks(model, ids.to(dev), mask.to(dev), option_ids, lens=lens,
                           readout=readout)
        for k, v in res.items():
            v = v.cpu().numpy()
            if k not in out:
                out[k] = np.zeros((len(enc), *v.shape[1:]), dtype=v.dtype)
            out[k][idx] = v
    return out
