"""Guess-then-refine depth analysis (docs/methods.md §4): logit and tuned lens at the last
prompt position, decision depth, frequency buckets, fact / MCQ / POS prompt sets.

Public API::

    target_ranks(model, input_ids, attention_mask=None, *, lens=None, targets=None)
        -> LongTensor [B, L+1]   # strict rank of the target (default: greedy next token)
                                 # at the last non-padding position, per h[0]..h[L]
    lens_predictions(model, input_ids, attention_mask=None, *, lens=None, targets=None)
        -> (ranks [B, L+1], top1 [B, L+1], final_top1 [B])
    layer_top1(model, input_ids, attention_mask=None, *, lens=None) -> [B, L+1]
    option_ranks(model, input_ids, attention_mask, option_ids, *, lens=None) -> dict
    predict_prompts / predict_options(model, tokenizer, prompts, ...)   # many prompts
    TunedLens(d_model, num_layers, *, alignment="input"|"output"); .from_model(model),
        .save(dir), TunedLens.load(dir, model), TunedLens.load_library(dir, model)
    train_tuned_lens(model, tokenizer, texts, *, steps, tokens_per_step, lr, ...)
        -> (lens, history DataFrame)
    per_layer_kl(model, lens_or_None, texts, *, tokenizer, ...) -> [L+1] nats
    earliest_layer(ranks, k, *, stays=False, include_embedding=False) -> [N] (h[1]..h[L]);
    decision_depth_curve(ranks, ks, *, include_embedding=False)
    frequency_ranks(tokenizer, texts) -> (counts, freq_rank);  bucket_of(ids, freq_rank)
    bucket_mix(top1, final, freq_rank);  flip_rates(top1, final, freq_rank)
    prompts: cut_passages, teacher_forced_fact_prompts, mcq_prompts, pos_prompts;
    POS with spaCy: upos_tag(texts) -> [(start, end, UPOS)] per text, first_tagged_words,
    pos_token_prompts(tokenizer, passage, pos_prompts(...)), passage_order
"""

# Lazy (PEP 562): importing pipeline.depth, or a light submodule such as
# pipeline.depth.spec (what pipeline.validation and the workflow import while Snakemake parses
# the DAG), does not import torch; each public name loads its module on first use.
from pipeline.lazy import lazy_exports

_MODULES: dict[str, tuple[str, ...]] = {
    "lens": ("ALIGNMENTS", "TunedLens"),
    "metrics": (
        "BUCKETS", "bucket_index", "bucket_mix", "bucket_of", "decision_depth_curve",
        "earliest_layer", "first_true", "flip_rates", "frequency_ranks", "log_spaced_ks",
    ),
    "prompts": (
        "CONTENT_TAGS", "FUNCTION_TAGS", "SPACY_MODEL", "cut_passages", "first_tagged_words",
        "first_word_with_tag", "mcq_prompts", "passage_order", "pos_prompts",
        "pos_token_prompts", "split_continuation", "teacher_forced_fact_prompts", "upos_tag",
    ),
    "options": ("option_ranks", "option_token_ids", "predict_options"),
    "ranks": (
        "LensPredictions", "layer_pass", "layer_top1", "lens_predictions", "predict_prompts",
        "strict_rank", "target_ranks",
    ),
    "readout": ("Readout", "capture_hidden", "last_positions", "pad_token_ids"),
    "tuned": ("pack_texts", "per_layer_kl", "train_tuned_lens"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _MODULES)
