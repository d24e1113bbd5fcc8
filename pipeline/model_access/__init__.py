"""The model-access layer: the only code that finds a decoder's modules, runs its forward
with read points and an early stop, and reads hidden states through the unembedding.

    find_layout(model) -> DecoderLayout          # decoder, blocks, final norm, lm_head
    run(model, input_ids, attention_mask, *, read={point: fn}, stop_after=k,
        final_norm=False) -> Tensor              # explicit loop embed -> blocks[:k] (-> norm)
    Point / "kind[l]"                            # resid_pre, resid_post, attn_in, attn_out,
                                                 # ffn_in, ffn_out, q, k  (l 0-based)
    Unembed(lm_head, *, norm=None, softcap=None, temperature=1.0, chunk_rows=None,
            frozen=False)                        # chunked: target log-probs, entropy, ranks
    position_ids(attention_mask) -> LongTensor   # counted over real tokens
"""

from pipeline.model_access.layout import (
    BlockModules,
    DecoderLayout,
    find_decoder,
    find_layout,
    head_dim_of,
    post_rope_qk,
    sliding_window_of,
)
from pipeline.model_access.points import KINDS, Point, resid_post, resid_pre
from pipeline.model_access.runner import (
    LOOP_ARCHS,
    eval_mode,
    first_tensor,
    hidden_arg,
    loop_supported,
    position_ids,
    run,
)
from pipeline.model_access.unembed import (
    DEFAULT_CHUNK_BYTES,
    GRAD_CHUNK_BYTES,
    Unembed,
    UnembeddingEntropy,
    cosine,
    entropy,
    log_probs,
    probs,
    softcap_of,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "GRAD_CHUNK_BYTES",
    "KINDS",
    "LOOP_ARCHS",
    "BlockModules",
    "DecoderLayout",
    "Point",
    "Unembed",
    "UnembeddingEntropy",
    "cosine",
    "entropy",
    "eval_mode",
    "find_decoder",
    "find_layout",
    "first_tensor",
    "head_dim_of",
    "hidden_arg",
    "log_probs",
    "loop_supported",
    "position_ids",
    "post_rope_qk",
    "probs",
    "resid_post",
    "resid_pre",
    "run",
    "sliding_window_of",
    "softcap_of",
]
