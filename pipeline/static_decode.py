"""Decode steps of Llama-family decoders over a KV cache written in place.

``model.forward`` spends most of a one-token step on CPU outside the matmuls (mask
construction, cache bookkeeping, module dispatch; ``python -m pipeline.bench generation``
prints the split). :class:`StaticDecoder` computes the transformers eager forward of
``llama``, ``mistral``, ``qwen2`` and ``qwen3`` models (RMSNorm, rotary embeddings from the
model's own ``rotary_emb``, grouped-query attention, SiLU-gated MLP) with fused QKV and
gate/up projections, a ``[B, kv_heads, T, head_dim]`` cache written in place (allocated
once per batch at its full length) and no per-step mask building. The prompt is
prefilled by the same code (``sdpa`` with a causal + padding mask). Activations, the
residual stream and the softmax are fp32; only the matmul inputs are cast to the
weights' dtype, and the cache is held in that dtype too (bf16 sampling: 2 bytes per
element), each layer's keys and values read back as fp32 for the attention math. In fp32
it equals the transformers forward up to float rounding.

Weights are taken from the model when the dtype is the model's own (projections are
fused only when ``fuse=True``, which copies them), or cast into fused copies when
``dtype`` differs — so a bf16 sampling copy costs the fused weights, not a model copy.
Models outside the supported set (other architectures, sliding-window attention,
non-SiLU MLPs) are reported by :func:`unsupported_reason`; the sampler then falls back to
the transformers forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """None when :class:`StaticDecoder` reproduces ``model``'s forward, else why not."""
    cfg = model.config
    if cfg.model_type not in SUPPORTED:
        return f"model_type {cfg.model_type!r} not in {SUPPORTED}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    types = getattr(cfg, "layer_types", None) or []
    if any(t != "full_attention" for t in types):
        return "sliding-window layers"
    if cfg.model_type == "mistral" and getattr(cfg, "sliding_window", None):
        return "sliding-window attention"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    return None


def _norm(module) -> tuple[torch.Tensor, float]:
    return module.weight.detach().float(), module.variance_epsilon


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of fp32 ``x`` (bitwise the transformers formula ``w * x * rsqrt(mean x² + ε)``
    in fp32)."""
    return torch.rms_norm(x, (x.shape[-1],), weight=weight, eps=eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary position embedding of ``x`` [B, H, S, hd] with ``rope`` = (cos, sin)."""
    cos, sin = rope
    return x * cos + _rotate_half(x) * sin


class _Layer:
    def __init__(self, block, dtype: torch.dtype, fuse: bool):
        attn, mlp = block.self_attn, block.mlp

        def cast(t):
            return None if t is None else t.detach().to(dtype)

        def group(*mods):
            if fuse:
                w = torch.cat([m.weight.detach() for m in mods]).to(dtype)
                bs = [m.bias for m in mods]
                b = None if bs[0] is None else torch.cat([x.detach() for x in bs]).to(dtype)
                return [(w, b)]
            return [(cast(m.weight), cast(m.bias)) for m in mods]

        self.qkv = group(attn.q_proj, attn.k_proj, attn.v_proj)
        self.gate_up = group(mlp.gate_proj, mlp.up_proj)
        self.o = (cast(attn.o_proj.weight), cast(attn.o_proj.bias))
        self.down = (cast(mlp.down_proj.weight), cast(mlp.down_proj.bias))
        self.ln_in = _norm(block.input_layernorm)
        self.ln_post = _norm(block.post_attention_layernorm)
        qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.q_norm = None if qn is None else _norm(qn)
        self.k_norm = None if kn is None else _norm(kn)
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.n_q = attn.q_proj.out_features // attn.head_dim
        self.n_kv = attn.k_proj.out_features // attn.head_dim


def _project(h: torch.Tensor, parts: list) -> torch.Tensor:
    outs = [F.linear(h, w, b) for w, b in parts]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


class StaticDecoder:
    """Prefill, then one-token steps, on a KV cache written in place.

    ``reset(batch, max_len, device)`` allocates an empty cache; ``forward(tokens [B, S],
    positions [B, S], attention_mask)`` appends S tokens per row (the prompt, then one
    sampled token per step) and returns the last position's logits ``[B, V]`` in the
    compute dtype; ``select(keep)`` keeps the rows ``keep``. The cache (``k``, ``v``: one
    ``[B, kv_heads, max_len, head_dim]`` tensor per layer) is in ``cache_dtype``: by default
    the compute dtype on an accelerator and fp32 on CPU.
    """

    def __init__(self, model: PreTrainedModel, *, dtype: torch.dtype | None = None,
                 fuse: bool | None = None, cache_dtype: torch.dtype | None = None):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"StaticDecoder does not support this model: {reason}")
        own = next(model.parameters()).dtype
        self.dtype = dtype or own
        fuse = (self.dtype != own) if fuse is None else fuse
        base = model.model
        self.embed = base.embed_tokens.weight.detach()  # looked up, then cast per step
        self.layers = [_Layer(b, self.dtype, fuse) for b in base.layers]
        self.norm = _norm(base.norm)
        head = model.get_output_embeddings()
        self.head = (head.weight.detach().to(self.dtype),
                     None if head.bias is None else head.bias.detach().to(self.dtype))
        self.rotary = base.rotary_emb
        self.max_len = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._fp32: tuple[torch.Tensor, torch.Tensor] | None = None  # one layer's k, v read back
        # None: the compute dtype on an accelerator; fp32 on CPU, which has no native bf16
        # arithmetic (reading a bf16 cache back cost +9 % / +20 % per SmolLM2 decode step at
        # 256 / 1024 positions there) and no GPU memory to save
        self._cache_dtype = cache_dtype
        self.cache_dtype = cache_dtype or self.dtype
        self.length = 0
        self.valid: torch.Tensor | None = None  # [B, max_len] bool, attended positions

    @torch.inference_mode()
    def reset(self, batch: int, max_len: int, device: torch.device | str) -> None:
        """An empty cache for ``batch`` rows and ``max_len`` positions (the prompt's width +
        the new tokens), allocated once at that length in ``cache_dtype`` (default: the
        decoder's dtype on an accelerator, fp32 on CPU): no growth, so no copy of the cache
        beside itself. A half-precision cache also gets one layer's
        keys and values in fp32, the buffer decode steps read each layer back into."""
        self.max_len = max_len
        self.k, self.v = [], []
        cpu = torch.device(device).type == "cpu"
        self.cache_dtype = self._cache_dtype or (torch.float32 if cpu else self.dtype)
        for lay in self.layers:
            shape = (batch, lay.n_kv, max_len, lay.head_dim)
            self.k.append(torch.zeros(shape, dtype=self.cache_dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=self.cache_dtype, device=device))
        self._fp32 = None
        if self.cache_dtype != torch.float32 and self.layers:
            widest = max(self.layers, key=lambda lay: lay.n_kv * lay.head_dim)
            n = batch * widest.n_kv * max_len * widest.head_dim
            self._fp32 = (torch.empty(n, device=device), torch.empty(n, device=device))
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0

    @torch.inference_mode()
    def select(self, keep: torch.Tensor) -> None:
        """Keep only the batch rows ``keep`` (finished rows dropped): the kept rows are
        moved to the front of the same buffers, one layer at a time (a transient of one
        layer's kept rows, not a second cache), and the cache becomes a view of them."""
        n, t = len(keep), self.length
        for bufs in (self.k, self.v):
            for i, buf in enumerate(bufs):
                buf[:n, :, :t] = buf[:, :, :t].index_select(0, keep)
                bufs[i] = buf[:n]
        self.valid = self.valid.index_select(0, keep)

    def _read(self, i: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s keys and values at positions ``< end`` in fp32: views of an fp32
        cache, or a copy of a half-precision one into the preallocated buffer."""
        k, v = self.k[i][:, :, :end], self.v[i][:, :, :end]
        if self._fp32 is None:
            return k, v
        n = k.numel()
        return (self._fp32[0][:n].view(k.shape).copy_(k),
                self._fp32[1][:n].view(v.shape).copy_(v))

    def _begin(self, tokens: torch.Tensor, positions: torch.Tensor,
               attention_mask: torch.Tensor | None) -> tuple:
        """The residual stream ``x`` [B, S, d] (fp32) of ``tokens``, the rotary ``(cos, sin)``,
        the attention mask of this call (a decode step's additive bias, or prefill's boolean
        causal + padding mask) and the cache span ``t:end`` the tokens are written to."""
        b, s = tokens.shape
        t = self.length
        if t + s > self.max_len:
            raise ValueError(f"static cache full: {t} + {s} > {self.max_len} positions")
        x = F.embedding(tokens, self.embed).float()  # residual stream [B, S, d], fp32
        cos, sin = self.rotary(x, positions)  # [B, S, hd] fp32
        self.valid[:, t:t + s] = True if attention_mask is None else attention_mask.bool()
        end = t + s
        if s == 1:  # decode: additive bias over the cached keys
            mask = torch.zeros(b, 1, 1, end, device=x.device)
            mask.masked_fill_(~self.valid[:, None, None, :end], float("-inf"))
        else:  # prefill: causal + padding; a query always sees itself (no empty rows)
            q_pos = torch.arange(t, end, device=x.device)[:, None]
            k_pos = torch.arange(end, device=x.device)[None, :]
            allowed = (k_pos <= q_pos) & self.valid[:, None, :end]  # [B, S, end]
            allowed |= k_pos == q_pos
            mask = allowed[:, None]  # [B, 1, S, end]
        return x, (cos[:, None], sin[:, None]), mask, t, end

    def _store_kv(self, i: int, k: torch.Tensor, v: torch.Tensor, rope: tuple, t: int,
                  end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``i``'s projected keys and values [B, S, kv_heads, hd]: the k-norm (Qwen3)
        and rotary on the keys, both written to the cache at ``t:end`` (rounded to its
        dtype) and returned as [B, kv_heads, S, hd] in fp32."""
        lay = self.layers[i]
        if lay.k_norm is not None:
            k = _rms(k, *lay.k_norm)
        k, v = _rotary(k.transpose(1, 2), rope), v.transpose(1, 2)
        self.k[i][:, :, t:end] = k
        self.v[i][:, :, t:end] = v
        return k, v

    def _block(self, i: int, x: torch.Tensor, rope: tuple, mask: torch.Tensor, t: int,
               end: int) -> torch.Tensor:
        """Block ``i`` on the residual stream ``x`` [B, S, d]: its keys and values written to
        the cache at ``t:end``, the stream after the block returned."""
        lay, dt = self.layers[i], self.dtype
        b, s, _ = x.shape
        hd, nq, nkv = lay.head_dim, lay.n_q, lay.n_kv
        qkv = _project(_rms(x, *lay.ln_in).to(dt), lay.qkv).float()
        q = qkv[..., :nq * hd].view(b, s, nq, hd)
        k = qkv[..., nq * hd:(nq + nkv) * hd].view(b, s, nkv, hd)
        v = qkv[..., (nq + nkv) * hd:].view(b, s, nkv, hd)
        if lay.q_norm is not None:
            q = _rms(q, *lay.q_norm)
        q = _rotary(q.transpose(1, 2), rope)  # [B, H, S, hd]
        k, v = self._store_kv(i, k, v, rope, t, end)
        if t == 0:  # nothing cached before: attend to the fp32 keys just computed
            keys, vals = k, v
        else:
            keys, vals = self._read(i, end)
        if s == 1:
            qg = q.reshape(b, nkv, nq // nkv, hd)  # query heads grouped by KV head
            w = torch.softmax(torch.matmul(qg, keys.transpose(2, 3)) * lay.scaling + mask,
                              dim=-1)
            a = torch.matmul(w, vals).reshape(b, 1, nq * hd)
        else:
            a = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask,
                                               scale=lay.scaling, enable_gqa=nq != nkv)
            a = a.transpose(1, 2).reshape(b, s, nq * hd)
        x = x + F.linear(a.to(dt), *lay.o)
        g, u = _project(_rms(x, *lay.ln_post).to(dt), lay.gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(g) * u, *lay.down)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """The output head on hidden states ``h`` [..., d] (fp32): final norm, unembedding."""
        return F.linear(_rms(h, *self.norm).to(self.dtype), *self.head)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``tokens`` [B, S] at ``positions`` [B, S] (``attention_mask`` [B, S]:
        0 = padding, never attended) and return the last position's logits [B, V]."""
        x, rope, mask, t, end = self._begin(tokens, positions, attention_mask)
        for i in range(len(self.layers)):
            x = self._block(i, x, rope, mask, t, end)
        self.length = end
        return self._logits(x[:, -1])
