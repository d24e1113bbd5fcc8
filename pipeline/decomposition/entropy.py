"""Streaming entropy of unembedded activations, H(softmax(W_U x + b)) (methods.md §1.1, §1.2).

Rows are pushed through the unembedding ``chunk_tokens`` at a time into two reused
[chunk, V] fp32 buffers and reduced to one entropy per row at once, so nothing of shape
[layers, tokens, vocab] (or even [tokens, vocab]) is ever held. Per chunk:
``z = x W_Uᵀ (+ b)`` (one GEMM), ``ℓ = log_softmax(z)`` (one fused row kernel, into the
second buffer), ``p = exp(ℓ)`` (into the first), ``H = −Σ_j p_j ℓ_j`` (in-place product,
row sum). This equals ``logsumexp(z) − Σ softmax(z)·z`` but every term has the same sign
(no cancellation between two large numbers when logits are large), nothing underflows
to ``0·log 0``, and it makes four light passes over the chunk (``torch.special.entr`` is
~4× slower than exp on CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Default size of one [chunk, V] fp32 logits buffer when ``chunk_tokens`` is None.
DEFAULT_CHUNK_BYTES = 256 * 2**20


def _log_softmax_into(z: Tensor, out: Tensor) -> Tensor:
    """Fused row log-softmax of ``z`` written into ``out`` (else an allocating call)."""
    try:
        return torch._log_softmax(z, -1, False, out=out)
    except (AttributeError, RuntimeError, TypeError):  # pragma: no cover - private op moved
        return out.copy_(torch.log_softmax(z, dim=-1))


def entropy_of_logits_(z: Tensor, work: Tensor, out: Tensor) -> Tensor:
    """H(softmax(z)) per row into ``out`` [n]; ``z`` [n, V] fp32 is overwritten, ``work``
    is a same-shape scratch buffer."""
    logp = _log_softmax_into(z, work)
    p = torch.exp(logp, out=z)
    p.mul_(logp)
    torch.sum(p, dim=-1, out=out)
    return out.neg_()


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity in fp32 (methods.md §1.1 diagnostics), shape [N]."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)


class UnembeddingEntropy:
    """Callable ``x [N, d] -> H [N]`` (nats, fp32) through the model's unembedding.

    ``lm_head``: any module with a ``weight`` [V, d] (and optional ``bias`` [V]), used in
    fp32 (a temporary fp32 copy for bf16/fp16 models). ``final_norm``: applied to each chunk
    first (logit-lens style, ``apply_final_norm=True``). ``softcap``: Gemma-style final logit
    soft-capping ``c·tanh(z/c)``. ``chunk_tokens``: rows per GEMM; None picks the largest
    chunk whose [chunk, V] fp32 buffer fits in :data:`DEFAULT_CHUNK_BYTES` (two such
    buffers are held).
    """

    def __init__(
        self,
        lm_head: nn.Module,
        *,
        final_norm: nn.Module | None = None,
        softcap: float | None = None,
        chunk_tokens: int | None = None,
    ) -> None:
        weight = lm_head.weight.detach()
        self.device = weight.device
        self.weight_t = weight.to(torch.float32).t()  # [d, V] view, column-major
        bias = getattr(lm_head, "bias", None)
        self.bias = None if bias is None else bias.detach().to(torch.float32)
        self.vocab = weight.shape[0]
        self.final_norm = final_norm
        self.softcap = float(softcap) if softcap else None
        if chunk_tokens is None:
            chunk_tokens = max(1, DEFAULT_CHUNK_BYTES // (4 * self.vocab))
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self.chunk_tokens = int(chunk_tokens)
        self._z: Tensor | None = None
        self._p: Tensor | None = None

    def _buffers(self, n: int) -> tuple[Tensor, Tensor]:
        if self._z is None or self._z.shape[0] < n:
            rows = min(self.chunk_tokens, max(n, 1))
            self._z = torch.empty(rows, self.vocab, dtype=torch.float32, device=self.device)
            self._p = torch.empty_like(self._z)
        assert self._p is not None
        return self._z[:n], self._p[:n]

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(self.device)
        n_rows = x.shape[0]
        out = torch.empty(n_rows, dtype=torch.float32, device=self.device)
        for start in range(0, n_rows, self.chunk_tokens):
            xs = x[start:start + self.chunk_tokens]
            if self.final_norm is not None:
                xs = self.final_norm(xs)
            xs = xs.to(torch.float32)
            z, work = self._buffers(xs.shape[0])
            torch.mm(xs, self.weight_t, out=z)
            if self.bias is not None:
                z.add_(self.bias)
            if self.softcap is not None:
                z.div_(self.softcap).tanh_().mul_(self.softcap)
            entropy_of_logits_(z, work, out[start:start + xs.shape[0]])
        return out

    def release(self) -> None:
        """Free the chunk buffers."""
        self._z = self._p = None
