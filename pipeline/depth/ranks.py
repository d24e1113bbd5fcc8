"""Per-layer ranks and top-1 guesses at the last prompt position (docs/methods.md §4).

One no-grad forward reads the raw h[0]..h[L] at the last non-padding position of each
row (:func:`pipeline.depth.readout.capture_hidden`, [L+1, B, d]); the logits are then
formed one layer and ``chunk_rows`` prompts at a time ([rows, V] fp32) and reduced at once
— nothing of shape [layers, prompts, vocab] exists.

Rank (strict): ``1 + #{v : z_l(v) > z_l(y*)}`` on the lens logits ``z_l`` (softmax is
monotone, so this is the rank under p_l; ties do not count against the target). The
default target is the model's greedy token: the argmax of the final logits
``W_U norm_f(h[L])`` at that position (the model's own output; lowest id on a tie).

The read-out of a captured tensor is one set of functions that every entry point shares:
:func:`output_top1` (the model's own output), :func:`lens_logits` (a lens's logits per
layer), :func:`read_lenses` (ranks, top-1, max probability and option reads of several
lenses from one captured tensor) and :func:`option_flags`. :func:`lens_predictions` /
:func:`pipeline.depth.options.option_ranks`
read one batch; :func:`multi_lens_predictions` reads many prompts for several lenses from
one forward per batch (and at several positions per prompt), and :func:`predict_prompts`
(and :func:`pipeline.depth.options.predict_options`) are its one-lens views.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pipeline.depth.lens import TunedLens
from pipeline.depth.metrics import first_true
from pipeline.depth.readout import Readout, capture_hidden, input_device, pad_token_ids
from pipeline.model_access import find_layout

#: fn(layer, rows, logits [len(rows), V], final_top1 [len(rows)]), once per layer and chunk.
LayerFn = Callable[[int, slice, Tensor, Tensor], None]
OPTION_FLAGS = ("dominate", "choice_top1", "choice_settled")


# --- the read-out of captured hidden states ---------------------------------------------------

def strict_rank(z: Tensor, token: Tensor) -> Tensor:
    """``1 + #{v : z[:, v] > z[:, token]}`` per row ([n, V], [n] -> [n])."""
    tz = z.gather(1, token.reshape(-1, 1).to(z.device))
    return 1 + (z > tz).sum(-1)


@torch.no_grad()
def output_top1(hs: Tensor, readout: Readout,
                on_final: Callable[[slice, Tensor], None] | None = None) -> Tensor:
    """The model's greedy token [n] (on ``readout.device``) from the untranslated h[L] of
    captured ``hs`` [L+1, n, d], ``readout.chunks`` rows at a time; ``on_final(rows,
    logits)`` sees each chunk's output logits."""
    n_layers, n_rows = hs.shape[0] - 1, hs.shape[1]
    final = torch.empty(n_rows, dtype=torch.long, device=readout.device)
    for rows in readout.chunks(n_rows):
        z = readout.logits(hs[n_layers, rows])
        final[rows] = z.argmax(-1)
        if on_final is not None:
            on_final(rows, z)
    return final


def lens_logits(hs: Tensor, lens: TunedLens | None, readout: Readout, rows: slice
                ) -> Iterator[tuple[int, Tensor]]:
    """``(layer, logits [rows, V])`` for h[0]..h[L] of captured ``hs`` [L+1, n, d]:
    ``lens=None`` is the logit lens ``W_U norm_f(h[l])``; a :class:`TunedLens` applies its
    translator first."""
    for layer in range(hs.shape[0]):
        x = hs[layer, rows]
        if lens is not None:
            x = lens.transform_hidden(x, layer)
        yield layer, readout.logits(x)


@torch.no_grad()
def read_lenses(
    hs: Tensor,
    lenses: Mapping[Any, TunedLens | None],
    readout: Readout,
    *,
    targets: Tensor | None = None,
    option_ids: Sequence[int] | Tensor | None = None,
) -> dict[Any, dict[str, Tensor]]:
    """Read several lenses from one captured ``hs`` [L+1, n, d]: ``{lens name: {"top1"
    [n, L+1], "maxprob" [n, L+1] (the lens distribution's largest probability, fp32),
    "ranks" [n, L+1] (strict rank of ``targets`` [n]; only with targets)}}``, and
    with ``option_ids`` (K tokens) ``"option_ranks"`` [n, L+1, K] (strict full-vocabulary
    ranks), ``"dominate"`` [n, L+1] (every option logit above every other logit) and
    ``"option_logits"`` [n, L+1, K] (fp32). CPU tensors; ``readout.chunks`` rows at a time."""
    n_cols, n_rows = hs.shape[0], hs.shape[1]
    opt = None if option_ids is None else torch.as_tensor(list(option_ids), dtype=torch.long)
    out: dict[Any, dict[str, Tensor]] = {}
    for name in lenses:
        r = {"top1": torch.empty(n_rows, n_cols, dtype=torch.long),
             "maxprob": torch.empty(n_rows, n_cols, dtype=torch.float32)}
        if targets is not None:
            r["ranks"] = torch.empty(n_rows, n_cols, dtype=torch.long)
        if opt is not None:
            r["option_ranks"] = torch.empty(n_rows, n_cols, opt.numel(), dtype=torch.long)
            r["dominate"] = torch.empty(n_rows, n_cols, dtype=torch.bool)
            r["option_logits"] = torch.empty(n_rows, n_cols, opt.numel(), dtype=torch.float32)
        out[name] = r
    for rows in readout.chunks(n_rows):
        t = None if targets is None else targets[rows]
        for name, lens in lenses.items():
            r = out[name]
            for layer, z in lens_logits(hs, lens, readout, rows):
                if t is not None:
                    r["ranks"][rows, layer] = strict_rank(z, t).cpu()
                top = z.max(-1)
                r["top1"][rows, layer] = top.indices.cpu()
                r["maxprob"][rows, layer] = (top.values.float()
                                             - torch.logsumexp(z.float(), -1)).exp().cpu()
                if opt is not None:
                    o = opt.to(z.device)
                    zo = z.index_select(1, o)  # [n, K]
                    r["option_ranks"][rows, layer] = torch.stack(
                        [strict_rank(z, o[k].expand(z.shape[0])) for k in range(o.numel())],
                        1).cpu()
                    rest = z.clone()
                    rest[:, o] = -torch.inf
                    r["dominate"][rows, layer] = (zo.min(-1).values
                                                  > rest.max(-1).values).cpu()
                    r["option_logits"][rows, layer] = zo.cpu()
    return out


def option_flags(option_ranks: Tensor, option_logits: Tensor, dominate: Tensor,
                 choice: Tensor, *, include_embedding: bool = False) -> dict[str, Tensor]:
    """From :func:`read_lenses`'s option reads [N, L+1, K] and the model's ``choice`` [N]
    (option index): ``"choice_top1"`` [N, L+1] (the chosen option is the lens's top-1),
    ``"choice_settled"`` [N, L+1] (it is strictly above the other options) and, for each
    flag of :data:`OPTION_FLAGS`, ``"<flag>_layer"`` / ``"<flag>_layer_stays"`` [N] (first
    layer where it holds / from which it holds through h[L]; −1 if never). As
    :func:`pipeline.depth.metrics.earliest_layer` (docs/methods.md §4.4), the first layers
    range over h[1]..h[L] unless ``include_embedding`` (then h[0]..h[L]); the per-layer
    flags always cover h[0]..h[L]."""
    start = 0 if include_embedding else 1
    n_cols = option_ranks.shape[1]
    at = choice[:, None, None].expand(-1, n_cols, 1)
    chosen = option_logits.gather(2, at).squeeze(2)
    others = option_logits.scatter(2, at, -torch.inf)
    out = {"choice_top1": option_ranks.gather(2, at).squeeze(2) == 1,
           "choice_settled": chosen > others.max(-1).values}
    flags = {"dominate": dominate, **out}
    for flag in OPTION_FLAGS:
        out[f"{flag}_layer"] = first_true(flags[flag], start=start)
        out[f"{flag}_layer_stays"] = first_true(flags[flag], stays=True, start=start)
    return out


# --- one batch --------------------------------------------------------------------------------

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
    readout, hs = _capture(model, input_ids, attention_mask, chunk_rows, readout)
    final = output_top1(hs, readout, on_final)
    for rows in readout.chunks(hs.shape[1]):
        for layer, z in lens_logits(hs, lens, readout, rows):
            fn(layer, rows, z, final[rows])
    return final


def _capture(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
             chunk_rows: int | None, readout: Readout | None) -> tuple[Readout, Tensor]:
    layout = find_layout(model)
    readout = readout or Readout(model, layout=layout, chunk_rows=chunk_rows)
    return readout, capture_hidden(model, input_ids, attention_mask, layout=layout)


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
    if targets is not None:
        targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if targets.shape[0] != n_batch:
            raise ValueError(f"targets has {targets.shape[0]} entries for {n_batch} rows")
    readout, hs = _capture(model, input_ids, attention_mask, chunk_rows, readout)
    final = output_top1(hs, readout)
    r = read_lenses(hs, {"lens": lens}, readout,
                    targets=final if targets is None else targets)["lens"]
    dev = input_ids.device
    return r["ranks"].to(dev), r["top1"].to(dev), final.to(dev)


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


# --- many prompts -----------------------------------------------------------------------------

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


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def _reads(enc: list[list[int]], positions: Sequence[Sequence[int]] | None
           ) -> list[list[int]]:
    """Token indices to read per prompt (default: its last token), validated."""
    if positions is None:
        return [[len(ids) - 1] for ids in enc]
    if len(positions) != len(enc):
        raise ValueError(f"{len(positions)} position lists for {len(enc)} prompts")
    reads = [[int(j) for j in pos] for pos in positions]
    for ids, pos in zip(enc, reads, strict=True):
        if not pos or len(set(pos)) != len(pos) or min(pos) < 0 or max(pos) >= len(ids):
            raise ValueError(f"positions {pos} must be distinct token indices in "
                             f"[0, {len(ids)})")
    return reads


@torch.no_grad()
def multi_lens_predictions(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str | Sequence[int]],
    lenses: Mapping[str, TunedLens | None],
    *,
    targets: Sequence[int] | None = None,
    option_ids: Sequence[int] | None = None,
    positions: Sequence[Sequence[int]] | None = None,
    correct_only: bool = False,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "lens",
    include_embedding: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`predict_prompts` (and, with ``option_ids``, :func:`predict_options`) for
    several lenses from *one* forward per batch (same left-padded, length-sorted batches).
    Returns ``{lens name: {"ranks" [N, L+1], "top1" [N, L+1], "maxprob" [N, L+1], "final" [N],
    "targets" [N]}}``
    (+ with options: ``"option_ranks"`` [N, L+1, K], ``"choice"``, ``"dominate"``,
    ``"choice_top1"``, ``"choice_settled"`` and their ``_layer`` / ``_layer_stays`` first
    layers, as :func:`option_ranks`; ``include_embedding`` as in :func:`option_flags`).

    ``prompts``: strings (encoded with ``tokenizer(p)``, i.e. its default special tokens)
    or token-id lists (used as they are, e.g. teacher-forced fact prompts).
    ``positions``: per prompt, the 0-based token indices at which to read (index j reads
    the prediction of token j+1, i.e. the prompt ``ids[:j+1]``; default: the last token
    only). The N result rows are then the reads, prompt by prompt in the given order, and
    ``"prompt"`` / ``"position"`` [N] say where each was read; ``targets`` are per read.
    ``correct_only`` (needs ``targets``; not with options): the lens read-outs run only for
    reads where the model's greedy token equals the target — the others keep ``final``
    but have rank and top-1 −1 in every layer; ``"evaluated"`` [N] marks the kept reads.
    """
    enc = _encode(tokenizer, prompts)
    reads = _reads(enc, positions)
    start = np.cumsum([0] + [len(r) for r in reads])  # read rows of prompt i: start[i]..
    n = int(start[-1])
    tgt = None if targets is None else np.asarray(targets, dtype=np.int64).reshape(-1)
    if tgt is not None and len(tgt) != n:
        raise ValueError(f"{len(tgt)} targets for {n} "
                         f"{'prompts' if positions is None else 'reads'}")
    if correct_only and (tgt is None or option_ids is not None):
        raise ValueError("correct_only needs targets and no option_ids")
    layout = find_layout(model)
    readout = Readout(model, layout=layout)
    n_layers = len(layout.blocks)
    dev = input_device(model)
    pad = _pad_id(tokenizer)
    final = np.zeros(n, dtype=np.int64)
    evaluated = np.zeros(n, dtype=bool)
    res: dict[str, dict[str, np.ndarray]] = {
        name: {"ranks": np.full((n, n_layers + 1), -1, dtype=np.int64),
               "top1": np.full((n, n_layers + 1), -1, dtype=np.int64),
               "maxprob": np.full((n, n_layers + 1), np.nan, dtype=np.float32)}
        for name in lenses}
    opt = None if option_ids is None else torch.as_tensor(list(option_ids), dtype=torch.long)
    if opt is not None:
        k = opt.numel()
        final_opt = np.zeros((n, k), dtype=np.float32)
        for r in res.values():
            r["option_ranks"] = np.zeros((n, n_layers + 1, k), dtype=np.int64)
            r["dominate"] = np.zeros((n, n_layers + 1), dtype=bool)
            r["option_logits"] = np.zeros((n, n_layers + 1, k), dtype=np.float32)
    for idx in tqdm(_batches([len(e) for e in enc], batch_size), desc=desc,
                    disable=not progress):
        ids, mask = pad_token_ids([enc[i] for i in idx], pad, side="left")
        width = ids.shape[1]
        where = torch.zeros_like(mask, dtype=torch.bool)
        sel_all = []  # read row of each selected position, in capture (row-major) order
        for b, i in enumerate(idx):
            shift = width - len(enc[i])
            for j, row in sorted(zip(reads[i], range(start[i], start[i + 1]), strict=True)):
                where[b, shift + j] = True
                sel_all.append(row)
        sel_all = np.asarray(sel_all, dtype=np.int64)
        hs = capture_hidden(model, ids.to(dev), mask.to(dev), positions=where.to(dev),
                            layout=layout)

        def on_final(rows: slice, z: Tensor, sel: np.ndarray = sel_all) -> None:
            if opt is not None:
                final_opt[sel[rows]] = z.index_select(1, opt.to(z.device)).cpu().numpy()

        final[sel_all] = output_top1(hs, readout, on_final).cpu().numpy()
        if correct_only:
            keep = np.nonzero(final[sel_all] == tgt[sel_all])[0]
            hs, sel_all = hs[:, torch.as_tensor(keep, device=hs.device)], sel_all[keep]
        evaluated[sel_all] = True
        t = torch.as_tensor(final[sel_all] if tgt is None else tgt[sel_all])
        for name, part in read_lenses(hs, lenses, readout, targets=t, option_ids=opt).items():
            for key, v in part.items():
                res[name][key][sel_all] = v.numpy()
        del hs
    used = final.copy() if tgt is None else tgt
    prompt_of = np.repeat(np.arange(len(enc)), [len(r) for r in reads])
    position = np.asarray([j for r in reads for j in r], dtype=np.int64)
    for r in res.values():
        r["final"] = final.copy()
        r["targets"] = used.copy()
        if positions is not None:
            r["prompt"], r["position"] = prompt_of.copy(), position.copy()
        if correct_only:
            r["evaluated"] = evaluated.copy()
        if opt is not None:
            choice = torch.from_numpy(final_opt).argmax(-1)
            flags = option_flags(torch.from_numpy(r["option_ranks"]),
                                 torch.from_numpy(r.pop("option_logits")),
                                 torch.from_numpy(r["dominate"]), choice,
                                 include_embedding=include_embedding)
            r["choice"] = choice.numpy()
            r.update({key: v.numpy() for key, v in flags.items()})
    return res


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
    """:func:`lens_predictions` over many prompts in left-padded, length-sorted batches
    (:func:`multi_lens_predictions` with one lens).

    ``prompts``: strings (encoded with ``tokenizer(p)``, i.e. its default special tokens)
    or token-id lists (used as they are, e.g. teacher-forced fact prompts).
    """
    r = multi_lens_predictions(model, tokenizer, prompts, {"lens": lens}, targets=targets,
                               batch_size=batch_size, progress=progress, desc="lens")["lens"]
    return LensPredictions(r["ranks"], r["top1"], r["final"], r["targets"])
