"""Decision-depth and frequency-bucket metrics on per-layer ranks / top-1 (docs/methods.md §4).

Inputs are the outputs of :func:`pipeline.depth.lens_predictions` stacked over prompts:
``ranks`` [N, L+1] (strict target rank per layer h[0]..h[L]), ``top1`` [N, L+1] (lens
top-1 per layer) and ``final`` [N] (the model's greedy token). Torch tensors or numpy
arrays are accepted; tables are tidy pandas DataFrames.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

#: Frequency buckets by corpus frequency rank (1 = most frequent); unseen tokens → last.
BUCKETS = ("Top1-10", "11-100", "101-1000", "1000+")
BUCKET_EDGES = (10, 100, 1000)


def _as_tensor(x: Tensor | np.ndarray | Sequence) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def first_true(flags: Tensor | np.ndarray, *, stays: bool = False, start: int = 0) -> Tensor:
    """First column index ≥ ``start`` where ``flags`` [N, C] is true (−1 if never), in the
    original column numbering. ``stays``: the first such column from which the flag holds
    through the last column (−1 if the last is false)."""
    flags = _as_tensor(flags).bool()[:, start:]
    if stays:
        flags = flags.flip(-1).long().cumprod(-1).flip(-1).bool()
    idx = flags.long().argmax(-1) + start
    return torch.where(flags.any(-1), idx, torch.full_like(idx, -1))


def earliest_layer(ranks: Tensor | np.ndarray, k: float, *, stays: bool = False,
                   include_embedding: bool = False) -> Tensor:
    """First layer with ``rank ≤ k`` per prompt, LongTensor [N] (−1 if never); ``stays``:
    first layer from which the rank stays ≤ k up to h[L].

    ``ranks`` is [N, L+1] over h[0]..h[L]; the result keeps that h-index numbering. By
    default the search ranges over blocks 1..L (h[1]..h[L]) as in the authors' scripts
    (their 0-based block index is this value − 1, docs/methods.md §4.4);
    ``include_embedding=True`` also lets h[0] (the embedding output) count."""
    return first_true(_as_tensor(ranks) <= k, stays=stays, start=0 if include_embedding else 1)


def log_spaced_ks(num: int = 200, k_min: float = 1.0, k_max: float = 1e4) -> np.ndarray:
    """``num`` log-spaced thresholds in [k_min, k_max] (docs/methods.md §4: ~200 in [1, 1e4])."""
    return np.logspace(np.log10(k_min), np.log10(k_max), num)


def decision_depth_curve(ranks: Tensor | np.ndarray, ks: Iterable[float] | None = None, *,
                         include_embedding: bool = False) -> pd.DataFrame:
    """Mean earliest layer at each threshold k, over the prompts that ever reach it
    (:func:`earliest_layer`: blocks 1..L unless ``include_embedding``).

    One row per (variant, k): ``variant`` "first" (docs/methods.md default) or "stays";
    ``mean_layer`` (NaN if no prompt reaches k), ``mean_layer_rel`` (= mean_layer / L, to
    compare models of different depth), ``frac_reached``, ``n_reached``, ``n_prompts``,
    ``num_layers`` (L). ``ks`` default: :func:`log_spaced_ks`.
    """
    ranks = _as_tensor(ranks)
    ks = log_spaced_ks() if ks is None else np.asarray(list(ks), dtype=float)
    n, n_layers = ranks.shape[0], ranks.shape[1] - 1
    rows = []
    for variant, stays in (("first", False), ("stays", True)):
        for k in ks:
            e = earliest_layer(ranks, float(k), stays=stays,
                               include_embedding=include_embedding)
            hit = e >= 0
            m = int(hit.sum())
            mean = float(e[hit].double().mean()) if m else float("nan")
            rows.append({"variant": variant, "k": float(k), "mean_layer": mean,
                         "mean_layer_rel": mean / n_layers if n_layers else float("nan"),
                         "frac_reached": m / n if n else float("nan"),
                         "n_reached": m, "n_prompts": n, "num_layers": n_layers})
    return pd.DataFrame(rows)


# --- frequency buckets ----------------------------------------------------------------------

def frequency_ranks(tokenizer, texts: Iterable[str], *, vocab_size: int | None = None,
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Token frequencies in a reference corpus, tokenised with the model's tokenizer.

    Returns ``(counts, freq_rank)``, int64 arrays of length ``vocab_size`` (default
    ``len(tokenizer)``; pass the model's ``lm_head`` width if it is larger). ``freq_rank``:
    1 = most frequent; equal counts are ordered by token id; tokens never seen get rank 0
    ("unranked"), which :func:`bucket_of` puts in the last bucket. Texts are encoded
    without special tokens.
    """
    size = int(vocab_size or len(tokenizer))
    counter: Counter[int] = Counter()
    batch: list[str] = []

    def flush() -> None:
        if batch:
            for ids in tokenizer(batch, add_special_tokens=False).input_ids:
                counter.update(ids)
            batch.clear()

    for t in texts:
        batch.append(t)
        if len(batch) >= batch_size:
            flush()
    flush()
    counts = np.zeros(size, dtype=np.int64)
    for tok, c in counter.items():
        if tok >= size:
            raise ValueError(f"token id {tok} >= vocab_size {size}")
        counts[tok] = c
    order = np.lexsort((np.arange(size), -counts))  # by count desc, then id asc
    rank = np.zeros(size, dtype=np.int64)
    rank[order] = np.arange(1, size + 1)
    rank[counts == 0] = 0
    return counts, rank


def bucket_index(token_ids: Tensor | np.ndarray | Sequence[int] | int,
                 freq_rank: np.ndarray | Tensor) -> np.ndarray:
    """Bucket index (0..3, into :data:`BUCKETS`) of each token id; unranked tokens and ids
    beyond ``freq_rank`` go to the last bucket."""
    freq_rank = np.asarray(freq_rank.cpu() if isinstance(freq_rank, Tensor) else freq_rank)
    ids = np.asarray(token_ids.cpu() if isinstance(token_ids, Tensor) else token_ids,
                     dtype=np.int64)
    inside = (ids >= 0) & (ids < freq_rank.shape[0])
    r = np.where(inside, freq_rank[np.clip(ids, 0, freq_rank.shape[0] - 1)], 0)
    idx = np.searchsorted(np.asarray(BUCKET_EDGES), r, side="left")
    return np.where(r <= 0, len(BUCKETS) - 1, idx)


def bucket_of(token_ids, freq_rank) -> np.ndarray | str:
    """Bucket label ("Top1-10", "11-100", "101-1000", "1000+") of each token id (same
    shape; a plain ``str`` for a scalar id)."""
    idx = bucket_index(token_ids, freq_rank)
    labels = np.asarray(BUCKETS, dtype=object)[idx]
    return str(labels) if np.ndim(labels) == 0 else labels


def _with_final(top1, final) -> np.ndarray:
    """top-1 per layer [N, L+1] with column L replaced by the model output ``final``."""
    t = np.array(top1.cpu().numpy() if isinstance(top1, Tensor) else top1, dtype=np.int64)
    f = np.asarray(final.cpu() if isinstance(final, Tensor) else final, dtype=np.int64)
    if t.ndim != 2 or f.shape != (t.shape[0],):
        raise ValueError(f"top1 must be [N, L+1] and final [N], got {t.shape}, {f.shape}")
    t[:, -1] = f
    return t


def bucket_mix(top1, final, freq_rank) -> pd.DataFrame:
    """Per layer, the share of top-1 guesses in each frequency bucket (docs/methods.md §4).

    Layers 0..L-1 are the lens's top-1 at h[l]; layer L is the model's final output.
    Columns: ``layer``, ``bucket``, ``count``, ``share`` (count / N), ``n_prompts``.
    """
    t = _with_final(top1, final)
    b = bucket_index(t, freq_rank)
    n = t.shape[0]
    rows = []
    for layer in range(t.shape[1]):
        counts = np.bincount(b[:, layer], minlength=len(BUCKETS))
        for j, name in enumerate(BUCKETS):
            rows.append({"layer": layer, "bucket": name, "count": int(counts[j]),
                         "share": counts[j] / n if n else float("nan"), "n_prompts": n})
    return pd.DataFrame(rows)


def flip_rates(top1, final, freq_rank) -> pd.DataFrame:
    """Refinement (flip) rates per frequency bucket and layer (docs/methods.md §4).

    For layer l and bucket b: ``n_in_bucket`` = prompts whose layer-l top-1 lies in b;
    ``n_flip`` = those whose top-1 also differs from the final output; ``flip_share`` =
    n_flip / N (docs/methods.md's rate); ``flip_rate`` = n_flip / n_in_bucket (conditional; NaN
    when the bucket is empty). Layer L is the final output (no flips), as in
    :func:`bucket_mix`.
    """
    t = _with_final(top1, final)
    f = t[:, -1]
    b = bucket_index(t, freq_rank)
    differs = t != f[:, None]
    n = t.shape[0]
    rows = []
    for layer in range(t.shape[1]):
        in_b = np.bincount(b[:, layer], minlength=len(BUCKETS))
        flips = np.bincount(b[:, layer], weights=differs[:, layer], minlength=len(BUCKETS))
        for j, name in enumerate(BUCKETS):
            rows.append({"layer": layer, "bucket": name, "n_in_bucket": int(in_b[j]),
                         "n_flip": int(flips[j]),
                         "flip_share": flips[j] / n if n else float("nan"),
                         "flip_rate": flips[j] / in_b[j] if in_b[j] else float("nan"),
                         "n_prompts": n})
    return pd.DataFrame(rows)
