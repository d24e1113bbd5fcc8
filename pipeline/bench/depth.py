"""Cost of the depth read-out (docs/methods.md §4.8 Performance) on SmolLM2-135M-Instruct.

Per-layer strict ranks of the model's greedy token and the per-layer top-1 at the last
prompt position of N natural-text prompts (Wikipedia passages cut at a random word, the
stage's BASELINE set), logit lens, computed two ways on the same left-padded,
length-sorted batches, in one process:

  ours   :func:`pipeline.depth.predict_prompts`: one forward of the base decoder with hooks
         that keep h[0]..h[L] at the last position only ([L+1, B, d]); logits are formed
         one layer and one row chunk at a time and reduced at once — nothing of shape
         [layers, prompts, vocab] exists.
  naive  ``model(..., output_hidden_states=True)`` (HF's last entry is post-norm, so it is
         projected without the final norm), the last position of every layer stacked,
         the full logits [L+1, B, V] materialised, a full softmax over them, then rank =
         1 + #{v : p(v) > p(target)} and top-1 = argmax p. The HF forward keeps only the
         last position's output logits (``logits_to_keep=1``), so the naive baseline is
         not charged for a [B, T, V] output it does not need.

Printed: prompts/s (wall; CPU seconds too, robust to other processes on the cores),
extra peak memory of each (the process's peak resident set — ``VmHWM`` reset through
``/proc/self/clear_refs`` after ``malloc_trim`` — minus the resident set before the call,
as ``pipeline.bench.attention`` measures it) and whether both give identical ranks,
top-1 tokens and greedy tokens. The fp32 softmax is not always able to rank: where
p(target) underflows to 0 or to a subnormal number (on SmolLM2 at h[0], whose logit-lens
logits span more than ~85 nats) or where another token's logit is within the rounding of
``z − max z`` of the target's, tokens with a larger logit get an *equal* p and are not
counted. So the naive pass also counts the strict rank on its own logits (a compare, no
extra [L+1, B, V] float tensor): entries where the two naive ranks differ are softmax
artefacts, and ours is checked against the logit rank everywhere. Each method runs once
unmeasured on the first batch, then ``--repeats`` times measured (min kept).

Usage: ``python -m pipeline.bench depth [--model-dir DIR] [--n-prompts 128]
[--batch-size 32] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import time

import numpy as np
import torch

from pipeline.bench.attention import peak_memory

DEFAULT_MODEL = "results/default/models/smollm2-135m-instruct/model"
_WORD = re.compile(r"\S+")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default=DEFAULT_MODEL,
                   help="an HF model directory (default: the default DAG's SmolLM2)")
    p.add_argument("--n-prompts", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward (both)")
    p.add_argument("--max-words", type=int, default=48,
                   help="passages truncated to this many words before the cut (as the stage)")
    p.add_argument("--repeats", type=int, default=1, help="measured runs per method (min kept)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=os.environ.get("PIPELINE_CACHE"),
                   help="data-source cache (pipeline.data.load_source)")


def _prompts(n: int, max_words: int, seed: int, cache_dir) -> list[str]:
    from pipeline.data import load_source
    from pipeline.depth import cut_passages

    texts = []
    for r in load_source("wikipedia", cache_dir=cache_dir):
        spans = [m.span() for m in _WORD.finditer(r["text"])]
        texts.append(r["text"] if len(spans) <= max_words else
                     r["text"][:spans[max_words - 1][1]])
    return [r["prompt"] for r in cut_passages(texts, n, seed=seed, min_words=16)]


def _batches(tok, prompts: list[str], batch_size: int) -> list[tuple[list[int], list[list[int]]]]:
    """(prompt indices, token ids) per batch, length-sorted as predict_prompts does."""
    from pipeline.depth.ranks import _batches as order_batches

    enc = [tok(p).input_ids for p in prompts]
    return [(idx, [enc[i] for i in idx])
            for idx in order_batches([len(e) for e in enc], batch_size)]


@torch.no_grad()
def naive_predictions(model, batches, pad_id: int, n: int) -> tuple[np.ndarray, ...]:
    """ranks [N, L+1] (on the softmax), top1 [N, L+1], final [N] the naive way (module
    docstring), the strict rank on the same logits [N, L+1] (the exact reference) and
    where p(target) underflowed to 0 or a subnormal number [N, L+1]."""
    from pipeline.decomposition import position_ids_from_mask
    from pipeline.depth import pad_token_ids
    from pipeline.model_access import find_layout

    layout = find_layout(model)
    norm, head = layout.final_norm, layout.lm_head
    n_cols = len(layout.blocks) + 1
    ranks = np.zeros((n, n_cols), dtype=np.int64)
    top1 = np.zeros_like(ranks)
    final = np.zeros(n, dtype=np.int64)
    exact = np.zeros_like(ranks)
    tiny = np.zeros((n, n_cols), dtype=bool)
    for idx, seqs in batches:
        ids, mask = pad_token_ids(seqs, pad_id, side="left")  # last column = last token
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                    output_hidden_states=True, use_cache=False, logits_to_keep=1)
        hs = out.hidden_states  # L+1 tensors [B, T, d]; the last one is post-norm
        logits = torch.stack([head(norm(h[:, -1])) for h in hs[:-1]] + [head(hs[-1][:, -1])])
        probs = torch.softmax(logits.float(), dim=-1)  # [L+1, B, V]
        f = out.logits[:, -1].argmax(-1)
        p_t = probs.gather(-1, f[None, :, None].expand(n_cols, -1, 1))
        ranks[idx] = (1 + (probs > p_t).sum(-1)).T.numpy()
        top1[idx] = probs.argmax(-1).T.numpy()
        final[idx] = f.numpy()
        z_t = logits.gather(-1, f[None, :, None].expand(n_cols, -1, 1))
        exact[idx] = (1 + (logits > z_t).sum(-1)).T.numpy()
        tiny[idx] = (p_t[..., 0] < torch.finfo(torch.float32).tiny).T.numpy()
    return ranks, top1, final, exact, tiny


def ours_predictions(model, batches, pad_id: int, n: int) -> tuple[np.ndarray, ...]:
    """The same through :func:`pipeline.depth.lens_predictions` (what predict_prompts and
    the stage run), reusing one :class:`~pipeline.depth.Readout`."""
    from pipeline.depth import Readout, lens_predictions, pad_token_ids

    readout = Readout(model)
    n_cols = readout.num_layers + 1
    ranks = np.zeros((n, n_cols), dtype=np.int64)
    top1 = np.zeros_like(ranks)
    final = np.zeros(n, dtype=np.int64)
    for idx, seqs in batches:
        ids, mask = pad_token_ids(seqs, pad_id, side="left")
        r, t1, f = lens_predictions(model, ids, mask, readout=readout)
        ranks[idx], top1[idx], final[idx] = r.numpy(), t1.numpy(), f.numpy()
    return ranks, top1, final


def _measure(fn, repeats: int) -> tuple[tuple[np.ndarray, ...], float, float, float]:
    best = (math.inf, math.inf, math.inf)
    result = None
    for _ in range(repeats):
        with peak_memory("cpu") as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            result = fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        best = (min(best[0], wall), min(best[1], cpu), min(best[2], mem["bytes"]))
    return result, *best  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    from pipeline.models import load

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load(args.model_dir, dtype="float32")
    model.eval()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = _prompts(args.n_prompts, args.max_words, args.seed, args.cache_dir)
    n = len(prompts)
    batches = _batches(tok, prompts, args.batch_size)
    n_tok = [len(s) for _, seqs in batches for s in seqs]
    cfg = model.config
    n_layers, vocab = cfg.num_hidden_layers, model.get_output_embeddings().weight.shape[0]
    print(f"depth benchmark: {args.model_dir} ({n_layers} blocks, d={cfg.hidden_size}, "
          f"V={vocab}), {n} Wikipedia prompts ({np.mean(n_tok):.1f} tokens on average, "
          f"max {max(n_tok)}), batch {args.batch_size} ({len(batches)} batches), "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    methods = {"ours": ours_predictions, "naive": naive_predictions}
    for fn in methods.values():  # warm-up: first batch, unmeasured
        fn(model, batches[:1], pad_id, n)
    res = {}
    for name, fn in methods.items():
        res[name] = _measure(lambda fn=fn: fn(model, batches, pad_id, n), args.repeats)
        (_, wall, cpu, peak) = res[name]
        print(f"  [{name}: {wall:.1f} s]", flush=True)

    print(f"\n{'':6} {'prompts/s':>10} {'wall s':>8} {'cpu s':>8} {'peak rise MiB':>14}")
    for name, (_, wall, cpu, peak) in res.items():
        print(f"{name:6} {n / wall:10.2f} {wall:8.2f} {cpu:8.2f} {peak / 2**20:14.1f}")
    (ro, to, fo), w_o, c_o, m_o = res["ours"]
    (rn, tn, fn_, exact, tiny), w_n, c_n, m_n = res["naive"]
    print(f"speed ours/naive = {w_n / w_o:.2f}x wall, {c_n / c_o:.2f}x cpu; "
          f"peak memory naive/ours = {m_n / max(m_o, 1.0):.1f}x")
    held = 2 * (n_layers + 1) * args.batch_size * vocab * 4
    print(f"(naive holds logits + probs [L+1, B, V] fp32 = {held / 2**20:.0f} MiB per batch; "
          f"ours one [rows, V] block per layer and chunk)")
    differ, artefact = ro != rn, rn != exact
    print(f"check: ranks identical in {int((~differ).sum())} of {ro.size} (prompt, layer) "
          f"entries ({int((~differ).all(1).sum())}/{n} prompts); top-1 identical "
          f"{int((to == tn).all(1).sum())}/{n} prompts; greedy tokens identical "
          f"{int((fo == fn_).sum())}/{n}")
    if artefact.any():
        layers = sorted({int(x) for x in np.nonzero(artefact)[1]})
        print(f"  the naive softmax rank differs from the strict rank on its own logits in "
              f"{int(artefact.sum())} entries (layers {layers}; p(target) 0 or subnormal "
              f"in {int((artefact & tiny).sum())} of them, by up to "
              f"{int(np.abs(rn - exact).max())} ranks): fp32 softmax artefacts")
    same = ro == exact
    print(f"  ours = the strict rank on the naive logits in {int(same.sum())} of {ro.size} "
          f"entries ({'identical' if same.all() else 'NOT identical'}); of the "
          f"{int(differ.sum())} entries where ours and the naive softmax rank differ, "
          f"{int((differ & artefact).sum())} are softmax artefacts")
    good = same.all() and (to == tn).all() and (fo == fn_).all()
    return 0 if good else 1
