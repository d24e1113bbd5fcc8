"""Early-exit decoding that really skips blocks (docs/methods.md §4.12).

:class:`EarlyExitDecoder` is :class:`pipeline.static_decode.StaticDecoder` with an exit
head checked after chosen blocks of every one-token decode step. After block l (the
hidden state h[l], docs/methods.md §0.1) the head's distribution is formed:

- ``head="logit"``: the logit lens, ``softmax(W_U norm_f(h[l]))``;
- ``head="tuned"``: the tuned lens, ``softmax(W_U norm_f(h[l] + A_l h[l] + b_l))``
  (:class:`pipeline.depth.lens.TunedLens`).

When its largest probability is ≥ ``threshold`` (τ) in **every** row of the batch, the step
exits: the head's logits are the step's logits, and blocks l+1..L are not run. τ ≥ 1
never exits (the head is still formed, so τ = 1 costs the checks and returns exactly the
full decoder's logits). Prompts (prefill) always run every block.

**Keys and values of the skipped blocks.** Later tokens attend, in blocks above l, to
positions that exited. Their keys and values are computed as CALM does (Schuster et al.
2022, "state propagation"): the exited state h[l] is copied up to every skipped block j,
and only block j's input norm and k/v projections (with k-norm and rotary) are applied
to it — 2·kv_heads·head_dim of the block's outputs, no queries, attention or MLP. The
alternatives were rejected: recomputing the skipped blocks later (the "batched catch-up"
of Elbayad et al.) saves nothing on one sequence, and attending only to non-exited
positions changes the model's attention pattern for every later token. The raw h[l] is
propagated, not the tuned lens's translation, which is fitted to the final layer's
*predictions*, not to block j's input.

**Cost.** A check is a final norm plus one unembedding matmul ([d] × [V, d]): for SmolLM2
(V = 49,152, d = 576) as many weights as 8 of its 30 blocks. So checks are made only
after the blocks in ``exit_layers`` (1 ≤ l < L); ``python -m pipeline.bench early_exit``
measures what that buys. ``exits`` counts the steps that ended after each block (L: none).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from pipeline.static_decode import StaticDecoder, _rms

HEADS = ("logit", "tuned")


class EarlyExitDecoder(StaticDecoder):
    """The static decoder with confidence exits after the blocks ``exit_layers``.

    ``head``: ``"logit"`` or ``"tuned"`` (then ``lens`` is a tuned lens with
    ``transform_hidden(h, layer)``); ``threshold``: τ on the head's max probability."""

    def __init__(self, model: PreTrainedModel, *, exit_layers: Sequence[int], threshold: float,
                 head: str = "logit", lens=None, dtype: torch.dtype | None = None,
                 cache_dtype: torch.dtype | None = None):
        super().__init__(model, dtype=dtype, cache_dtype=cache_dtype)
        n = len(self.layers)
        layers = sorted({int(x) for x in exit_layers})
        if not layers or layers[0] < 1 or layers[-1] >= n:
            raise ValueError(f"exit_layers must be block outputs h[1]..h[{n - 1}] "
                             f"(the model has {n} blocks), got {list(exit_layers)}")
        if head not in HEADS:
            raise ValueError(f"unknown exit head {head!r}; known: {HEADS}")
        if head == "tuned" and lens is None:
            raise ValueError("head='tuned' needs a tuned lens")
        if not float(threshold) >= 0.0:
            raise ValueError(f"threshold τ must be >= 0, got {threshold}")
        self.exit_layers = layers
        self.threshold = float(threshold)
        self.lens = lens if head == "tuned" else None
        # k/v weights of each block, for the blocks an exit skips (views of the fused qkv)
        self._kv_w = []
        for lay in self.layers:
            q_rows = lay.n_q * lay.head_dim
            if len(lay.qkv) == 1:
                w, b = lay.qkv[0]
                self._kv_w.append((w[q_rows:], None if b is None else b[q_rows:]))
            else:
                (_, _), (wk, bk), (wv, bv) = lay.qkv
                self._kv_w.append((torch.cat([wk, wv]),
                                   None if bk is None else torch.cat([bk, bv])))
        self.exits: Counter[int] = Counter()

    def head_logits(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """The exit head's logits [B, V] at h[``layer``] (fp32 ``h`` [B, d])."""
        if self.lens is not None:
            h = self.lens.transform_hidden(h, layer).to(h.dtype)
        return self._logits(h)

    def confidence(self, h: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The exit head's logits [B, V] at h[``layer``] and its max probability [B]."""
        logits = self.head_logits(h, layer)
        return logits, torch.softmax(logits.float(), dim=-1).amax(-1)

    def _kv_only(self, i: int, h: torch.Tensor, rope: tuple, t: int, end: int) -> None:
        """Block ``i``'s keys and values of the exited state ``h`` [B, S, d], written to the
        cache: input norm, k/v projections, k-norm and rotary — nothing else of the block."""
        lay = self.layers[i]
        b, s, _ = h.shape
        hd, nkv = lay.head_dim, lay.n_kv
        kv = F.linear(_rms(h, *lay.ln_in).to(self.dtype), *self._kv_w[i]).float()
        self._store_kv(i, kv[..., :nkv * hd].view(b, s, nkv, hd),
                       kv[..., nkv * hd:].view(b, s, nkv, hd), rope, t, end)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`StaticDecoder.forward`; a one-token step may exit after a block of
        ``exit_layers`` (the head's logits are returned, the blocks above get k/v only)."""
        if tokens.shape[1] != 1:  # the prompt runs every block
            return super().forward(tokens, positions, attention_mask)
        x, rope, mask, t, end = self._begin(tokens, positions, attention_mask)
        n = len(self.layers)
        checks = iter(self.exit_layers)
        nxt = next(checks)
        for i in range(n):
            x = self._block(i, x, rope, mask, t, end)
            if i + 1 != nxt:
                continue
            logits, pmax = self.confidence(x[:, -1], nxt)
            nxt = next(checks, 0)
            if self.threshold < 1.0 and bool((pmax >= self.threshold).all()):
                for j in range(i + 1, n):
                    self._kv_only(j, x, rope, t, end)
                self.length = end
                self.exits[i + 1] += 1
                return logits
        self.length = end
        self.exits[n] += 1
        return self._logits(x[:, -1])

    def mean_layers(self) -> float:
        """Mean number of blocks run per decode step so far (L when none exited)."""
        total = sum(self.exits.values())
        return sum(k * c for k, c in self.exits.items()) / total if total else float("nan")
