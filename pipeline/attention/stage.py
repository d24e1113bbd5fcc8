"""The attention-rhythm stage (docs/methods.md §3): WAAD, FAI, preplan/anchor tokens and head
groups of a model's own sampled responses, the policy entropy at those tokens, and figures.

Tables (one model per call of :func:`analyse_responses`):

- ``tokens_df``, one row per response token: model, sample (0-based row of the responses
  table), position (0-based index within the response), token_id, token (decoded text),
  waad, fai, fai_receiver (FAI of the receiver heads, docs/methods.md §3.13), delta,
  preplan, anchor, dominated, intro, intro_of (response position of the introductory
  token of a dominated anchor, −1 elsewhere), entropy, entropy_next.
- ``heads_df``, one row per (sample, chosen layer, query head): model, sample, layer
  (0-based block), head, distance (``d^(l,h)`` of that response), group (``local``,
  ``global``, ``middle``; ``both`` only when the groups overlap, i.e. < 2 heads per group),
  receiver (bool: a receiver head of that response, §3.13; independent of ``group``).

Alignment: every metric of token ``t`` is that of attention row ``t`` (the row whose
*input* is the token, the literal reading of docs/methods.md §3, as :class:`Rhythm`).
``entropy`` is the entropy of the next-token distribution that *produced* token ``t``
(logits at ``t−1``); ``entropy_next`` that of the distribution computed *at* row ``t``
(logits at ``t``, which produces token ``t+1``), for the one-position-shift question.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pipeline.attention.capture import (  # noqa: E402
    capture_qk,
    find_attention_modules,
    sliding_window_of,
)
from pipeline.attention.head_stats import attention_rows  # noqa: E402
from pipeline.attention.metrics import Rhythm, rhythm  # noqa: E402
from pipeline.config import schema_defaults  # noqa: E402
from pipeline.model_access import Unembed, find_layout, run, softcap_of  # noqa: E402
from pipeline.responses import batch_from_table  # noqa: E402

DEFAULT_SPEC: dict[str, Any] = {**schema_defaults("analysis", "attention"), "chunk_size": None}
"""Stage settings: the defaults of ``analysis.attention`` in
``workflow/schemas/config.schema.yaml``, where each key is described (docs/methods.md §3; the
DAG passes the validated section), plus ``chunk_size`` (query rows per chunk of
:func:`pipeline.attention.head_stats.head_stats`, None = sized by memory; an argument of
direct calls, not a config key)."""

RHYTHM_KEYS = ("window", "h_lo", "h_hi", "head_frac", "top_frac", "group_scope", "k",
               "fai_empty", "tau_waad", "tau_delta", "chunk_size")
GROUP_COLORS = {"local": "tab:blue", "global": "tab:red", "middle": "0.6", "both": "tab:purple"}
ENTROPY_CHUNK_BYTES = 256 * 2**20


def rhythm_kwargs(model: nn.Module, spec: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`rhythm` from a stage spec (missing keys: DEFAULT_SPEC);
    ``layers: "all"`` is resolved to every decoder block of ``model``."""
    full = {**DEFAULT_SPEC, **spec}
    layers = full["layers"]
    if layers == "all":
        layers = sorted(find_attention_modules(model))
    elif layers is not None:
        layers = [int(x) for x in layers]
    kw = {key: full[key] for key in RHYTHM_KEYS}
    kw["fai_empty"] = float(kw["fai_empty"])
    return {"layers": layers, **kw}


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def token_entropies(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Policy entropies (nats, fp32, full vocabulary) from one plain forward:
    ``(entropy, entropy_next)``, both ``[B, T]`` on the CPU, NaN outside the response.
    ``entropy[b, t]`` is ``H(softmax(logits[b, t−1]))`` (NaN at ``t = 0``),
    ``entropy_next[b, t]`` is ``H(softmax(logits[b, t]))``. Only the logits from the first
    needed position on are unembedded (:class:`pipeline.model_access.Unembed`, chunked)."""
    b, t = input_ids.shape
    rm = response_mask.bool().cpu()
    ent = torch.full((b, t), math.nan)
    ent_next = torch.full((b, t), math.nan)
    cols = rm.any(0).nonzero().flatten()
    if cols.numel() == 0:
        return ent, ent_next
    first = max(int(cols[0]) - 1, 0)
    keep = t - first
    with torch.no_grad():
        layout = find_layout(model)
        hidden = run(model, input_ids, attention_mask, final_norm=True, layout=layout)
        rows = hidden[:, first:].reshape(-1, hidden.shape[-1])
        unembed = Unembed(layout.lm_head, softcap=softcap_of(model),
                          chunk_bytes=ENTROPY_CHUNK_BYTES)
        h = unembed.entropy(rows).reshape(b, keep).cpu()  # [B, keep]: position first + j
    ent_next[:, first:] = h
    ent[:, first + 1:] = h[:, :-1]
    nan = torch.full_like(ent, math.nan)
    return torch.where(rm, ent, nan), torch.where(rm, ent_next, nan)


def _group_labels(r: Rhythm, b: int) -> np.ndarray:
    loc, glob = r.local_heads[b].cpu().numpy(), r.global_heads[b].cpu().numpy()
    out = np.full(loc.shape, "middle", dtype=object)
    out[loc & ~glob] = "local"
    out[glob & ~loc] = "global"
    out[loc & glob] = "both"
    return out


def analyse_responses(
    model: nn.Module,
    tokenizer: Any,
    table: pd.DataFrame,
    spec: dict[str, Any],
    *,
    model_name: str,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Attention rhythm of every response of ``table`` (docs/methods.md §3): ``(tokens_df,
    heads_df, summary)``; see the module docstring for the tables and :func:`summarize`
    for the summary. Responses are batched by length (``spec["batch_size"]``, right
    padding); each batch gets one early-stopped :func:`rhythm` pass and one plain forward
    for the entropies, all under ``torch.no_grad``. Head groups, token sets and the
    dominated-anchor thresholds are per response, so batching does not change any value.
    Empty responses are skipped (counted in ``summary["num_empty_responses"]``)."""
    full = {**DEFAULT_SPEC, **spec}
    kw = rhythm_kwargs(model, full)
    table = table.reset_index(drop=True)
    pad_id = _pad_id(tokenizer)
    device = next(model.parameters()).device
    n_resp = np.array([len(r) for r in table["response_ids"]])
    lengths = np.array([len(p) for p in table["prompt_ids"]]) + n_resp
    keep = np.nonzero(n_resp > 0)[0]
    order = keep[np.argsort(lengths[keep], kind="stable")]
    bs = int(full["batch_size"])
    batches = [order[i:i + bs] for i in range(0, len(order), bs)]
    decoded: dict[int, str] = {}

    def text(tid: int) -> str:
        if tid not in decoded:
            decoded[tid] = tokenizer.decode([tid], skip_special_tokens=False)
        return decoded[tid]

    tok_parts: list[pd.DataFrame] = []
    head_parts: list[pd.DataFrame] = []
    layers: tuple[int, ...] = ()
    for idx in tqdm(batches, desc=f"attention {model_name}", disable=not progress):
        sub = table.iloc[idx]
        batch = batch_from_table(sub, pad_id, padding_side="right")
        ids, am, rm = (batch[k].to(device) for k in
                       ("input_ids", "attention_mask", "response_mask"))
        with torch.no_grad():
            r = rhythm(model, ids, rm, am, **kw)
            ent, ent_next = token_entropies(model, ids, am, rm)
        layers = r.layers
        fields = {name: getattr(r, name).cpu() for name in
                  ("waad", "fai", "fai_receiver", "delta", "preplan", "anchor", "dominated",
                   "intro", "intro_of", "receiver_heads")}
        dist = r.head_distance.cpu().numpy()
        n_l, n_h = dist.shape[1:]
        for bi, sample in enumerate(idx):
            p, n = len(sub["prompt_ids"].iloc[bi]), int(n_resp[sample])
            sl = slice(p, p + n)
            resp_ids = [int(x) for x in sub["response_ids"].iloc[bi]]
            intro_of = fields["intro_of"][bi, sl].numpy()
            cols: dict[str, Any] = {
                "model": model_name, "sample": int(sample), "position": np.arange(n),
                "token_id": resp_ids, "token": [text(x) for x in resp_ids]}
            for name in ("waad", "fai", "fai_receiver", "delta"):
                cols[name] = fields[name][bi, sl].double().numpy()
            for name in ("preplan", "anchor", "dominated", "intro"):
                cols[name] = fields[name][bi, sl].numpy().astype(bool)
            cols["intro_of"] = np.where(intro_of >= 0, intro_of - p, -1)
            cols["entropy"] = ent[bi, sl].double().numpy()
            cols["entropy_next"] = ent_next[bi, sl].double().numpy()
            tok_parts.append(pd.DataFrame(cols))
            head_parts.append(pd.DataFrame({
                "model": model_name, "sample": int(sample),
                "layer": np.repeat(np.array(layers), n_h), "head": np.tile(np.arange(n_h), n_l),
                "distance": dist[bi].reshape(-1).astype(float),
                "group": _group_labels(r, bi).reshape(-1),
                "receiver": fields["receiver_heads"][bi].reshape(-1).numpy().astype(bool)}))
    tokens_df = (pd.concat(tok_parts, ignore_index=True) if tok_parts else
                 pd.DataFrame(columns=["model", "sample", "position"]))
    heads_df = (pd.concat(head_parts, ignore_index=True) if head_parts else
                pd.DataFrame(columns=["model", "sample", "layer", "head"]))
    tokens_df = tokens_df.sort_values(["sample", "position"], ignore_index=True)
    heads_df = heads_df.sort_values(["sample", "layer", "head"], ignore_index=True)
    summary = summarize(tokens_df, k=int(full["k"]))
    summary.update({
        "model": model_name,
        "num_empty_responses": int((n_resp == 0).sum()),
        "layers": [int(x) for x in layers],
        "params": {key: full[key] for key in RHYTHM_KEYS},
    })
    return tokens_df, heads_df, summary


# --------------------------------------------------------------------------- statistics


def follows_window(flags: np.ndarray, k: int) -> np.ndarray:
    """``hit[t] = any(flags[t−j] for j in 1..k, t−j ≥ 0)`` over one response's positions."""
    flags = np.asarray(flags, dtype=bool)
    hit = np.zeros_like(flags)
    for j in range(1, min(k, len(flags) - 1) + 1):
        hit[j:] |= flags[:-j]
    return hit


def _log_comb(n: int, r: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(r + 1) - math.lgamma(n - r + 1)


def _hypergeom_pmf(n: int, hits: int, draws: int) -> np.ndarray:
    """P(X = x), x = 0..draws, X = hit positions among ``draws`` of ``n`` positions."""
    out = np.zeros(draws + 1)
    for x in range(max(0, draws - (n - hits)), min(draws, hits) + 1):
        out[x] = math.exp(_log_comb(hits, x) + _log_comb(n - hits, draws - x)
                          - _log_comb(n, draws))
    return out


def follow_statistics(tokens_df: pd.DataFrame, k: int) -> dict[str, float]:
    """How often FAI peaks follow WAAD peaks (docs/methods.md §3, paper's observation).

    An anchor token ``t`` *follows* a WAAD peak if a preplan token of the same response
    lies at a position ``u ∈ [t−k, t−1]``. ``anchor_follows_preplan`` = followed anchors /
    all anchors, pooled over responses. Null model (a permutation test, computed
    exactly): within each response the anchor set is replaced by a uniformly random set of
    the same size among its positions, preplan tokens fixed; then the number of followed
    anchors in response ``r`` is hypergeometric (``n_r`` positions, ``h_r`` of them with a
    preplan token in the window, ``m_r`` draws), independently over responses.
    ``..._random`` = its expected fraction ``Σ m_r·h_r/n_r / Σ m_r``; ``..._lift`` = the
    ratio observed / random; ``..._pvalue`` = one-sided ``P(X ≥ observed)`` of the exact
    null distribution of the pooled count ``X`` (convolution of the hypergeometrics)."""
    observed = expected = 0.0
    n_anchor = 0
    dist = np.ones(1)
    for _, g in tokens_df.sort_values(["model", "sample", "position"]).groupby(
            ["model", "sample"], sort=False):
        hit = follows_window(g["preplan"].to_numpy(), k)
        anc = g["anchor"].to_numpy(dtype=bool)
        m, n, h = int(anc.sum()), len(anc), int(hit.sum())
        if m == 0:
            continue
        observed += int((hit & anc).sum())
        expected += m * h / n
        n_anchor += m
        dist = np.convolve(dist, _hypergeom_pmf(n, h, m))
    if n_anchor == 0:
        nan = math.nan
        return {"anchor_follows_preplan": nan, "anchor_follows_preplan_random": nan,
                "anchor_follows_preplan_lift": nan, "anchor_follows_preplan_pvalue": nan}
    frac, rand = observed / n_anchor, expected / n_anchor
    return {
        "anchor_follows_preplan": frac,
        "anchor_follows_preplan_random": rand,
        "anchor_follows_preplan_lift": frac / rand if rand > 0 else math.nan,
        "anchor_follows_preplan_pvalue": float(min(1.0, dist[int(observed):].sum())),
    }


def summarize(tokens_df: pd.DataFrame, *, k: int = 3) -> dict[str, Any]:
    """Summary of a ``tokens_df`` (docs/methods.md §3), every mean pooled over response tokens:

    - ``num_responses``, ``num_tokens``; ``mean_waad``, ``mean_fai`` (NaNs ignored);
    - ``frac_preplan``, ``frac_anchor``, ``frac_dominated``, ``frac_intro``: fractions of
      all response tokens;
    - ``entropy_all``, ``entropy_preplan``, ``entropy_anchor``, ``entropy_dominated``:
      mean policy entropy (``entropy`` column: the step that produced the token) over all
      / preplan (WAAD peaks) / anchor (FAI peaks) / dominated-anchor tokens, and
      ``entropy_preplan_ratio`` / ``entropy_anchor_ratio`` = those means / ``entropy_all``;
      the same with the ``entropy_next`` column as ``entropy_next_*``;
    - :func:`follow_statistics` with window ``k``.
    """
    out: dict[str, Any] = {
        "num_responses": int(tokens_df.groupby(["model", "sample"]).ngroups)
        if len(tokens_df) else 0,
        "num_tokens": len(tokens_df),
    }
    if not len(tokens_df):
        return out

    def mean(x: pd.Series) -> float:
        x = x.to_numpy(dtype=float)
        x = x[~np.isnan(x)]
        return float(x.mean()) if len(x) else math.nan

    out["mean_waad"] = mean(tokens_df["waad"])
    out["mean_fai"] = mean(tokens_df["fai"])
    for name in ("preplan", "anchor", "dominated", "intro"):
        out[f"frac_{name}"] = float(tokens_df[name].mean())
    for col in ("entropy", "entropy_next"):
        if col not in tokens_df:
            continue
        allm = mean(tokens_df[col])
        out[f"{col}_all"] = allm
        for name in ("preplan", "anchor", "dominated"):
            out[f"{col}_{name}"] = mean(tokens_df.loc[tokens_df[name].astype(bool), col])
        for name in ("preplan", "anchor"):
            out[f"{col}_{name}_ratio"] = out[f"{col}_{name}"] / allm if allm > 0 else math.nan
    out.update(follow_statistics(tokens_df, k))
    return out


# ------------------------------------------------------------------------------ figures


def attention_map(
    model: nn.Module,
    input_ids: Tensor,
    layer: int,
    head: int,
    *,
    rows: tuple[int, int] | None = None,
) -> np.ndarray:
    """Full causal attention ``A[t, s]`` of one query head of one sequence
    (``input_ids [T]`` or ``[1, T]``, no padding) for query rows ``[t0, t1)`` over keys
    ``[0, t1)``: fp32 ``[t1−t0, t1]``, recomputed from the captured post-RoPE q/k."""
    ids = input_ids.reshape(1, -1).to(next(model.parameters()).device)
    t0, t1 = rows if rows is not None else (0, ids.shape[1])
    q, k = capture_qk(model, ids, None, [layer])[layer]
    module = find_attention_modules(model)[layer]
    a = attention_rows(q, k, torch.ones_like(ids, dtype=torch.bool), t0, t1,
                       scaling=float(module.scaling), sliding_window=sliding_window_of(module))
    return a[0, head].cpu().numpy()


def heatmap_figure(
    model: nn.Module,
    tokenizer: Any,
    table_row: pd.Series,
    rhythm_params: dict[str, Any],
    *,
    max_tokens: int = 400,
    include_prompt: bool = False,
    model_name: str = "",
    vmin: float = 1e-3,
):
    """Attention maps of one response (docs/methods.md §3): the most local head of its local
    group and the most global head of its global group (groups from :func:`rhythm` on
    this response with ``rhythm_params``, a stage spec), side by side, over the response
    rows (the first ``max_tokens``) and response keys (all keys with ``include_prompt``),
    log colour scale from ``vmin``. Local heads show the sawtooth of chunked reading."""
    prompt = [int(x) for x in table_row["prompt_ids"]]
    resp = [int(x) for x in table_row["response_ids"]]
    if not resp:
        raise ValueError("the response is empty")
    ids = torch.tensor([prompt + resp])
    rm = torch.zeros_like(ids, dtype=torch.bool)
    rm[0, len(prompt):] = True
    device = next(model.parameters()).device
    with torch.no_grad():
        r = rhythm(model, ids.to(device), rm.to(device), **rhythm_kwargs(model, rhythm_params))
    d = r.head_distance[0].cpu()
    inf = torch.full_like(d, math.inf)
    chosen = []
    for flat in (torch.where(r.local_heads[0].cpu(), d, inf).argmin(),
                 torch.where(r.global_heads[0].cpu(), d, -inf).argmax()):
        li, h = divmod(int(flat), d.shape[1])
        chosen.append((r.layers[li], h, float(d[li, h])))
    p, n = len(prompt), min(len(resp), max_tokens)
    k0 = 0 if include_prompt else p
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    for ax, (layer, head, dist), kind in zip(axes, chosen, ("local", "global"), strict=True):
        with torch.no_grad():
            a = attention_map(model, ids[0], layer, head, rows=(p, p + n))[:, k0:]
        t_idx = np.arange(p, p + n)[:, None]
        s_idx = np.arange(k0, p + n)[None, :]
        a = np.ma.masked_where((s_idx > t_idx) | (a < vmin), a)
        cmap = plt.get_cmap("viridis").with_extremes(bad="white")
        im = ax.imshow(a, cmap=cmap, norm=LogNorm(vmin=vmin, vmax=1.0), aspect="auto",
                       interpolation="nearest", extent=(k0 - p - 0.5, n - 0.5, n - 0.5, -0.5))
        ax.set(xlabel="key position (response; <0 = prompt)" if include_prompt else
               "key position (response)", ylabel="query position (response)",
               title=f"{kind}-focused: layer {layer} head {head} (d = {dist:.1f})")
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention")
    trunc = f", first {n} of {len(resp)} tokens" if n < len(resp) else ""
    row = f" of sample {table_row.name}" if isinstance(table_row.name, int | np.integer) else ""
    fig.suptitle(f"{model_name + ': ' if model_name else ''}attention maps{row}{trunc}")
    return fig


def _label(tok: str) -> str:
    return tok.replace("\n", "⏎").replace(" ", "␣").replace("\t", "⇥").replace("$", r"\$")


def trace_figure(tokens_df: pd.DataFrame, sample: int, *, max_tokens: int = 120,
                 model: str | None = None):
    """WAAD and FAI along one response (docs/methods.md §3), two stacked axes: preplan tokens
    (top-Δ, marked on WAAD), anchors (top-FAI) and dominated anchors (marked on FAI), intro
    tokens; the tokens along the x axis. Only the first ``max_tokens`` tokens are drawn
    (said in the title). ``model`` selects one model of a multi-model table."""
    df = tokens_df[tokens_df["sample"] == sample]
    if model is not None:
        df = df[df["model"] == model]
    if df["model"].nunique() > 1:
        raise ValueError("tokens_df holds several models; pass model=")
    df = df.sort_values("position")
    if not len(df):
        raise ValueError(f"no tokens for sample {sample}")
    total = len(df)
    df = df.iloc[:max_tokens]
    x = df["position"].to_numpy()
    waad, fai = df["waad"].to_numpy(dtype=float), df["fai"].to_numpy(dtype=float)
    pre, intro, anc, dom = (df[c].to_numpy(dtype=bool) for c in
                            ("preplan", "intro", "anchor", "dominated"))
    width = min(24.0, max(8.0, 0.13 * len(df)))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(width, 5.5), sharex=True)
    a1.plot(x, waad, color="tab:blue", lw=1, label="WAAD")
    a1.scatter(x[pre], waad[pre], marker="^", color="tab:red", s=18, zorder=3,
               label="preplan (top Δ)")
    a1.scatter(x[intro], waad[intro], marker="o", facecolor="none", color="tab:green",
               s=40, zorder=4, label="intro of dominated")
    a1.set_ylabel("WAAD")
    a1.legend(fontsize=7, loc="upper right")
    a2.plot(x, fai, color="tab:orange", lw=1, label="FAI")
    a2.scatter(x[anc], fai[anc], marker="*", color="tab:red", s=30, zorder=3,
               label="anchor (top FAI)")
    a2.scatter(x[dom], fai[dom], marker="s", facecolor="none", color="black", s=40,
               zorder=4, label="locally dominated")
    a2.set_ylabel("FAI")
    a2.legend(fontsize=7, loc="upper right")
    a2.set_xticks(x)
    a2.set_xticklabels([_label(t) for t in df["token"]], rotation=90, fontsize=6)
    a2.set_xlim(x[0] - 0.5, x[-1] + 0.5)
    a2.set_xlabel("response token")
    name = df["model"].iloc[0]
    trunc = f" (first {len(df)} of {total} tokens)" if len(df) < total else ""
    a1.set_title(f"{name}: sample {sample}, WAAD and FAI{trunc}")
    fig.tight_layout()
    return fig


def head_distance_figure(heads_df: pd.DataFrame, *, seed: int = 0):
    """Head distances ``d^(l,h)`` per chosen layer (docs/methods.md §3): a box per layer over all
    (response, head) pairs, and every pair as a jittered point coloured by its group in
    that response; one panel per model."""
    models = list(dict.fromkeys(heads_df["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(max(5.0, 4.5 * len(models)), 3.8),
                             squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, name in zip(axes[0], models, strict=True):
        df = heads_df[heads_df["model"] == name]
        layers: Sequence[int] = sorted(df["layer"].unique())
        ax.boxplot([df.loc[df["layer"] == li, "distance"] for li in layers],
                   positions=range(len(layers)), widths=0.6, showfliers=False,
                   medianprops={"color": "black"})
        pos = {li: i for i, li in enumerate(layers)}
        xs = df["layer"].map(pos).to_numpy(dtype=float) + rng.uniform(-0.25, 0.25, len(df))
        for group, color in GROUP_COLORS.items():
            sel = (df["group"] == group).to_numpy()
            if sel.any():
                ax.scatter(xs[sel], df["distance"].to_numpy()[sel], s=8, alpha=0.6,
                           color=color, label=group, zorder=3)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([str(li) for li in layers])
        ax.set(xlabel="layer (0-based block)", ylabel="head distance d (tokens)",
               title=f"{name}: head distances")
        ax.legend(fontsize=7, title="group", title_fontsize=7)
    fig.tight_layout()
    return fig
