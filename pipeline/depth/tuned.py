"""Training and evaluating tuned-lens translators (docs/methods.md §4).

Objective (as the ``tuned-lens`` library): for every translated layer l, the mean over
token positions of ``KL(p_final ‖ p_lens,l)`` at the *same* position, summed over layers;
``p_final = softmax(W_U norm_f(h[L]))`` is the model's output. The model is frozen: each
micro-batch's raw h[0..L] at all positions are read under ``no_grad``
(:func:`pipeline.depth.readout.capture_hidden`), then for each chunk of ``chunk_tokens``
positions the final log-probs are formed once and each layer's lens logits ([chunk, V],
through detached ``norm_f``/``W_U``) are reduced to a KL and back-propagated into the
translators only — never a [layers, tokens, vocab] tensor.

Recipe (paper, docs/methods.md §4): ~65M tokens = 250 steps × 2^18 tokens, SGD with Nesterov
momentum 0.9, weight decay 1e-3, gradient-norm clip 1.0, linear decay (no warmup). The
library's SGD learning rate is ``lr_scale · (1 − momentum)`` = 0.1, our default ``lr``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pipeline.depth.lens import TunedLens
from pipeline.depth.readout import Readout, capture_hidden, input_device
from pipeline.model_access import find_layout


def pack_texts(tokenizer, texts: Sequence[str], seq_len: int) -> Tensor:
    """Texts encoded without special tokens, each followed by EOS (if the tokenizer has
    one), concatenated and cut into windows: LongTensor [n_windows, seq_len] (the
    remainder is dropped). ``ValueError`` when there is not one full window."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False).input_ids:
        stream.extend(ids)
        if eos is not None:
            stream.append(int(eos))
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"texts give {len(stream)} tokens, fewer than one window of "
                         f"seq_len={seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _windows(model, tokenizer, texts, seq_len) -> Tensor:
    if isinstance(texts, Tensor):
        if texts.dim() != 2:
            raise ValueError("token windows must be a [n, seq_len] LongTensor")
        return texts.long()
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to encode texts")
    return pack_texts(tokenizer, texts, seq_len)


def _layer_kl_terms(readout: Readout, lens: TunedLens | None, hs: Tensor, layers: list[int],
                    rows: slice, *, backward_scale: float | None) -> dict[int, float]:
    """Σ over the chunk's positions of KL(p_final ‖ p_lens,l) for each layer; with
    ``backward_scale`` each layer's sum × scale is back-propagated (translators only)."""
    n_layers = hs.shape[0] - 1
    with torch.no_grad():
        logp = readout.log_probs(hs[n_layers, rows])
        p = logp.exp()
    out = {}
    for layer in layers:
        grad = backward_scale is not None and lens is not None and \
            lens.translator_index(layer) is not None
        with torch.set_grad_enabled(grad):
            x = hs[layer, rows]
            if lens is not None:
                x = lens.transform_hidden(x, layer)
            logq = readout.log_probs(x)
            kl = (p * (logp - logq)).sum()
            if grad:
                (kl * backward_scale).backward()
        out[layer] = float(kl.detach())
    return out


def train_tuned_lens(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str] | Tensor,
    *,
    steps: int = 250,
    tokens_per_step: int = 2**18,
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 1e-3,
    grad_clip: float | None = 1.0,
    warmup_steps: int = 0,
    seq_len: int = 2048,
    micro_batch_size: int | None = None,
    chunk_tokens: int | None = None,
    alignment: str = "input",
    bias: bool = True,
    lens: TunedLens | None = None,
    seed: int = 0,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
) -> tuple[TunedLens, pd.DataFrame]:
    """Fit a :class:`TunedLens` to ``model`` (frozen) on ``texts``; ``(lens, history)``.

    ``texts``: strings (packed with :func:`pack_texts` into ``seq_len`` windows) or a
    LongTensor [n, seq_len] of windows. Each step uses ``tokens_per_step // seq_len``
    windows (≥ 1), drawn without replacement from a seeded shuffle (reshuffled at each
    pass over the data), run ``micro_batch_size`` windows per forward (default: ≈4096
    tokens). Loss per step: Σ_l mean-over-positions KL(p_final ‖ p_lens,l) over the
    translated layers (:meth:`TunedLens.trained_layers`). Optimiser: SGD (Nesterov
    momentum), weight decay, grad-norm clip, learning rate warmed up linearly over
    ``warmup_steps`` then decayed linearly to 0 at ``steps``. ``lens``: continue training
    an existing lens (its alignment wins). ``history``: one row per step (``step``, ``lr``,
    ``loss``, ``grad_norm``, ``tokens``, ``epoch``, ``seconds``, ``kl_<l>`` per layer);
    ``on_log(row)`` is called with each row.
    """
    if steps < 1 or tokens_per_step < 1:
        raise ValueError("steps and tokens_per_step must be >= 1")
    windows = _windows(model, tokenizer, texts, seq_len)
    seq_len = windows.shape[1]
    per_step = max(1, tokens_per_step // seq_len)
    micro = micro_batch_size or max(1, 4096 // seq_len)
    layout = find_layout(model)
    readout = Readout(model, layout=layout, chunk_rows=chunk_tokens)
    if lens is None:
        lens = TunedLens.from_model(model, alignment=alignment, bias=bias)
    lens = lens.to(readout.device).train()
    layers = lens.trained_layers()
    params = [p for p in lens.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                          weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (steps - step) / max(1, steps - warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed)
    order, cursor, epoch = torch.randperm(len(windows), generator=gen), 0, 0
    in_dev = input_device(model)
    history = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="tuned lens", disable=not progress)
    for step in bar:
        picks, need = [], per_step
        while need > 0:
            if cursor == len(order):
                order, cursor, epoch = torch.randperm(len(windows), generator=gen), 0, epoch + 1
            take = min(need, len(order) - cursor)
            picks.append(order[cursor:cursor + take])
            cursor, need = cursor + take, need - take
        idx = torch.cat(picks)
        n_tokens = len(idx) * seq_len
        sums = dict.fromkeys(layers, 0.0)
        opt.zero_grad(set_to_none=False)
        for s in range(0, len(idx), micro):
            ids = windows[idx[s:s + micro]].to(in_dev)
            hs = capture_hidden(model, ids, None, positions=torch.ones_like(ids, dtype=bool),
                                layout=layout)
            for rows in readout.chunks(hs.shape[1]):
                kl = _layer_kl_terms(readout, lens, hs, layers, rows,
                                     backward_scale=1.0 / n_tokens)
                for layer, v in kl.items():
                    sums[layer] += v
            del hs
        grad_norm = float("nan")
        if grad_clip is not None and params:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        row = {"step": step, "lr": opt.param_groups[0]["lr"]}
        opt.step()
        sched.step()
        kls = {layer: v / n_tokens for layer, v in sums.items()}
        row.update({"loss": sum(kls.values()), "grad_norm": grad_norm, "tokens": n_tokens,
                    "epoch": epoch, "seconds": time.perf_counter() - t0})
        row.update({f"kl_{layer}": v for layer, v in kls.items()})
        history.append(row)
        if on_log is not None:
            on_log(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
    lens.eval()
    lens.meta.update({"trained_steps": int(lens.meta.get("trained_steps", 0)) + steps,
                      "tokens_per_step": per_step * seq_len, "seq_len": seq_len,
                      "lr": lr, "seed": seed})
    return lens, pd.DataFrame(history)


@torch.no_grad()
def per_layer_kl(
    model: nn.Module,
    lens: TunedLens | None,
    texts: Sequence[str] | Tensor,
    *,
    tokenizer=None,
    seq_len: int = 512,
    max_windows: int | None = None,
    batch_size: int = 4,
    chunk_tokens: int | None = None,
    progress: bool = False,
) -> Tensor:
    """Mean KL(p_final ‖ p_layer) in nats over all positions of held-out ``texts``, per
    layer h[0]..h[L]: float32 [L+1] (lens=None: the logit lens, whose h[L] entry is 0).
    ``texts``: strings (``tokenizer`` needed; packed into ``seq_len`` windows) or a
    LongTensor [n, seq_len]; ``max_windows`` caps the windows used."""
    windows = _windows(model, tokenizer, texts, seq_len)
    if max_windows is not None:
        windows = windows[:max_windows]
    layout = find_layout(model)
    readout = Readout(model, layout=layout, chunk_rows=chunk_tokens)
    n_layers = len(layout.blocks)
    sums = torch.zeros(n_layers + 1, dtype=torch.float64)
    in_dev = input_device(model)
    was = None if lens is None else lens.training
    if lens is not None:
        lens.eval()
    for s in tqdm(range(0, len(windows), batch_size), desc="kl", disable=not progress):
        ids = windows[s:s + batch_size].to(in_dev)
        hs = capture_hidden(model, ids, None, positions=torch.ones_like(ids, dtype=bool),
                            layout=layout)
        for rows in readout.chunks(hs.shape[1]):
            kl = _layer_kl_terms(readout, lens, hs, list(range(n_layers + 1)), rows,
                                 backward_scale=None)
            for layer, v in kl.items():
                sums[layer] += v
    if lens is not None and was:
        lens.train()
    n_tok = windows.numel()
    return (sums / max(1, n_tok)).float() if n_tok else torch.full((n_layers + 1,), math.nan)
