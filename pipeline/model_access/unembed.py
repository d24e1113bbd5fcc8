"""The one chunked unembedding: hidden states -> vocabulary distributions (docs/methods.md §1.2).

Every read of a hidden state through ``W_U`` in the project goes through :class:`Unembed`:
internal-policy entropies (decomposition), lens logits and ranks (depth), token log-probs
and π^k (RL), policy entropy (attention stage). The logits of one row are

    z = W_U · norm(x) + b            (norm optional: the final norm for a logit lens)
    z = c · tanh(z / c)              (Gemma-style final soft-cap c, when the config sets one)
    z = z / temperature

and rows are processed ``chunk_rows`` at a time, so nothing of shape ``[B, T, V]`` (or
``[layers, tokens, V]``) is ever held. Two weight modes:

- ``frozen=False`` (default): the live ``lm_head`` / norm modules, so gradients reach the
  model's parameters (RL). Under autograd each chunk is checkpointed (recomputed in the
  backward): only ``[chunk, V]`` lives at a time, forward or backward.
- ``frozen=True``: detached fp32 copies (views when already fp32) of the weight, bias and
  norm parameters; differentiable in ``x`` only (a tuned lens trains through it without
  touching the model or its ``.grad``).

Entropy (:meth:`Unembed.entropy`) streams rows through two reused ``[chunk, V]`` fp32
buffers: ``z = x W_Uᵀ (+ b)`` (one GEMM), ``ℓ = log_softmax(z)`` (one fused row kernel,
into the second buffer), ``p = exp(ℓ)`` (into the first), ``H = −Σ_j p_j ℓ_j`` (in-place
product, row sum). This equals ``logsumexp(z) − Σ softmax(z)·z`` but every term has the
same sign (no cancellation when logits are large), nothing underflows to ``0·log 0``, and
it makes four light passes over the chunk (``torch.special.entr`` is ~4× slower than exp
on CPU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

#: Default size of one [chunk, V] fp32 logits buffer (no-grad reads).
DEFAULT_CHUNK_BYTES = 256 * 2**20
#: Default chunk size under autograd (RL): smaller, since a chunk is recomputed.
GRAD_CHUNK_BYTES = 64 * 2**20


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


def log_probs(logits: Tensor) -> Tensor:
    """``log_softmax`` over the vocabulary (last dim) in fp32."""
    return torch.log_softmax(logits.float(), dim=-1)


def probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(logits / T)`` over the vocabulary (last dim) in fp32 (sampling)."""
    return torch.softmax(logits.float() / temperature, dim=-1)


def entropy(logits: Tensor) -> Tensor:
    """H(softmax(z)) in nats per row of ``logits`` [..., V] (fp32, allocating)."""
    lp = log_probs(logits)
    return -(lp.exp() * lp).sum(-1)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity in fp32 (docs/methods.md §1.1 diagnostics), shape [N]."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)


def softcap_of(model: nn.Module | None) -> float | None:
    """The model's final-logit soft-cap ``config.final_logit_softcapping`` (None if unset)."""
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return float(cap) if cap else None


class Unembed:
    """``x [N, d]`` -> log-probs of targets, entropies, logits or ranks over ``W_U``.

    ``lm_head``: a module with ``weight`` [V, d] (optional ``bias`` [V]). ``norm``: applied
    to each row first (the final norm for a logit lens; None = the raw residual, the BuPO
    convention). ``softcap``: ``c·tanh(z/c)``. ``temperature``: logits divided by it.
    ``chunk_rows``: rows per GEMM; None picks the largest chunk whose ``[chunk, V]`` fp32
    buffer fits in ``chunk_bytes``. ``frozen``: detached fp32 weights (see module doc).
    """

    def __init__(
        self,
        lm_head: nn.Module,
        *,
        norm: nn.Module | None = None,
        softcap: float | None = None,
        temperature: float = 1.0,
        chunk_rows: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        frozen: bool = False,
    ) -> None:
        weight = getattr(lm_head, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise ValueError("Unembed needs a module with a [vocab, hidden] weight")
        self.head = lm_head
        self.norm = norm
        self.softcap = float(softcap) if softcap else None
        self.temperature = float(temperature)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.frozen = bool(frozen)
        self.device = weight.device
        self.vocab = int(weight.shape[0])
        self.d_model = int(weight.shape[1])
        if chunk_rows is None:
            chunk_rows = max(1, int(chunk_bytes) // (4 * self.vocab))
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.chunk_rows = int(chunk_rows)
        self._fp32: tuple[Tensor, Tensor | None] | None = None
        self._norm_state: dict[str, Tensor] = {}
        if frozen and norm is not None:
            for name, p in norm.named_parameters():
                self._norm_state[name] = p.detach().to(device=self.device, dtype=torch.float32)
            for name, b in norm.named_buffers():
                self._norm_state[name] = b.detach().to(self.device)
        self._z: Tensor | None = None
        self._p: Tensor | None = None

    @property
    def weight(self) -> Tensor:
        """Detached fp32 ``W_U`` [V, d] (a view when already fp32; for a half-precision
        head a copy, made on first use only: the live trainable path never needs it)."""
        return self._fp32_params()[0]

    @property
    def bias(self) -> Tensor | None:
        """Detached fp32 bias [V] of the head, or None."""
        return self._fp32_params()[1]

    def _fp32_params(self) -> tuple[Tensor, Tensor | None]:
        if self._fp32 is None:
            bias = getattr(self.head, "bias", None)
            self._fp32 = (self.head.weight.detach().to(torch.float32),
                          None if bias is None else bias.detach().to(torch.float32))
        return self._fp32

    # ---------------------------------------------------------------- logits of one chunk
    def chunks(self, n_rows: int) -> list[slice]:
        """Row slices of at most ``chunk_rows`` rows covering ``range(n_rows)``."""
        return [slice(s, min(s + self.chunk_rows, n_rows))
                for s in range(0, n_rows, self.chunk_rows)]

    def normed(self, x: Tensor) -> Tensor:
        """``norm(x)`` (identity without a norm); frozen: fp32 with fp32 norm parameters."""
        if self.frozen:
            x = x.to(device=self.device, dtype=torch.float32)
            if self.norm is None:
                return x
            return functional_call(self.norm, self._norm_state, (x,))
        return x if self.norm is None else self.norm(x)

    def _finish(self, z: Tensor) -> Tensor:
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        if self.temperature != 1.0:
            z = z / self.temperature
        return z

    def logits(self, x: Tensor) -> Tensor:
        """fp32 logits ``[n, V]`` of ``x`` ``[n, d]`` in one GEMM (callers chunk; see
        :meth:`chunks`). Frozen: differentiable in ``x`` only."""
        if self.frozen:
            z = torch.nn.functional.linear(self.normed(x), self.weight, self.bias)
        else:
            z = self.head(self.normed(x)).float()
        return self._finish(z)

    def log_probs(self, x: Tensor) -> Tensor:
        """``log_softmax`` of :meth:`logits`: fp32 ``[n, V]`` for one chunk of rows."""
        return log_probs(self.logits(x))

    # -------------------------------------------------------------- chunked reductions
    def _gather(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.log_probs(x).gather(-1, targets[:, None]).squeeze(-1)

    def target_logprobs(self, x: Tensor, targets: Tensor, *, with_entropy: bool = False
                        ) -> tuple[Tensor, Tensor | None]:
        """``(log p(targets) [N], H [N] | None)`` for rows ``x`` [N, d] and ids [N].

        Differentiable when grad is enabled (each chunk checkpointed when there is more
        than one); the entropy is always computed without grad."""
        outs, ents = [], []
        grad = torch.is_grad_enabled() and x.requires_grad
        for s in range(0, x.shape[0], self.chunk_rows):
            xc, tc = x[s:s + self.chunk_rows], targets[s:s + self.chunk_rows]
            if grad and x.shape[0] > self.chunk_rows:
                outs.append(checkpoint(self._gather, xc, tc, use_reentrant=False))
                if with_entropy:
                    with torch.no_grad():
                        lp = self.log_probs(xc)
                        ents.append(-(lp.exp() * lp).sum(-1))
                continue
            lp = self.log_probs(xc)
            outs.append(lp.gather(-1, tc[:, None]).squeeze(-1))
            if with_entropy:
                with torch.no_grad():
                    ents.append(-(lp.detach().exp() * lp.detach()).sum(-1))
        empty = x.new_zeros(0, dtype=torch.float32)
        lp_all = torch.cat(outs) if outs else empty
        return lp_all, ((torch.cat(ents) if ents else empty) if with_entropy else None)

    def _buffers(self, n: int) -> tuple[Tensor, Tensor]:
        if self._z is None or self._z.shape[0] < n:
            rows = min(self.chunk_rows, max(n, 1))
            self._z = torch.empty(rows, self.vocab, dtype=torch.float32, device=self.device)
            self._p = torch.empty_like(self._z)
        assert self._p is not None
        return self._z[:n], self._p[:n]

    @torch.no_grad()
    def entropy(self, x: Tensor) -> Tensor:
        """H(softmax(z)) in nats per row of ``x`` [N, d] (fp32 [N]), streamed through two
        reused ``[chunk, V]`` buffers (module doc); :meth:`release` frees them."""
        x = x.to(self.device)
        n_rows = x.shape[0]
        out = torch.empty(n_rows, dtype=torch.float32, device=self.device)
        weight_t = self.weight.t()
        for start in range(0, n_rows, self.chunk_rows):
            xs = x[start:start + self.chunk_rows]
            if self.norm is not None:
                xs = self.normed(xs)
            xs = xs.to(torch.float32)
            z, work = self._buffers(xs.shape[0])
            torch.mm(xs, weight_t, out=z)
            if self.bias is not None:
                z.add_(self.bias)
            if self.softcap is not None:
                z.div_(self.softcap).tanh_().mul_(self.softcap)
            if self.temperature != 1.0:
                z.div_(self.temperature)
            entropy_of_logits_(z, work, out[start:start + xs.shape[0]])
        return out

    @torch.no_grad()
    def ranks(self, x: Tensor, targets: Tensor) -> Tensor:
        """Strict ranks ``1 + #{v : z(v) > z(target)}`` (long [N]) of ``targets`` [N]."""
        out = torch.empty(x.shape[0], dtype=torch.long, device=self.device)
        targets = targets.to(self.device)
        for rows in self.chunks(x.shape[0]):
            z = self.logits(x[rows])
            tz = z.gather(-1, targets[rows, None])
            out[rows] = 1 + (z > tz).sum(-1)
        return out

    @torch.no_grad()
    def topk(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``(values, ids)`` of the ``k`` largest logits per row (each [N, k])."""
        vals, ids = [], []
        for rows in self.chunks(x.shape[0]):
            v, i = self.logits(x[rows]).topk(k, dim=-1)
            vals.append(v)
            ids.append(i)
        return torch.cat(vals), torch.cat(ids)

    def release(self) -> None:
        """Free the entropy chunk buffers."""
        self._z = self._p = None


class UnembeddingEntropy(Unembed):
    """Callable ``x [N, d] -> H [N]`` (nats, fp32): :meth:`Unembed.entropy` with the
    signature the decomposition has always exposed (``final_norm`` applied live)."""

    def __init__(self, lm_head: nn.Module, *, final_norm: nn.Module | None = None,
                 softcap: float | None = None, chunk_tokens: int | None = None) -> None:
        super().__init__(lm_head, norm=final_norm, softcap=softcap, chunk_rows=chunk_tokens)

    @property
    def chunk_tokens(self) -> int:
        """Rows per GEMM (the decomposition's name for :attr:`chunk_rows`)."""
        return self.chunk_rows

    @property
    def final_norm(self) -> nn.Module | None:
        """The norm applied first (the decomposition's name for :attr:`norm`)."""
        return self.norm

    def __call__(self, x: Tensor) -> Tensor:
        return self.entropy(x)
