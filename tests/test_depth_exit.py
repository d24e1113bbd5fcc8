"""Simulated early exit (docs/methods.md §4.10) against naive references: the exit rules
against a per-read Python loop, and the per-layer max probability / top-1 the depth stage
reads (:func:`pipeline.depth.ranks.multi_lens_predictions`, left-padded batches) against a
full softmax over ``output_hidden_states`` of each prompt alone and of a right-padded batch,
on a Qwen3-style and a Llama-style model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_hf_model

from pipeline.depth.exit import (
    THRESHOLDS,
    best_points,
    exit_curves,
    exit_layers,
    exited_tokens,
    wilson,
)
from pipeline.depth.ranks import multi_lens_predictions


def _naive_exit(top1_row, maxprob_row, rule, thr) -> int:
    L = len(top1_row) - 1
    for layer in range(1, L):
        if rule == "confidence" and maxprob_row[layer] >= thr:
            return layer
        if rule == "stability" and layer >= thr \
                and len({int(t) for t in top1_row[layer - int(thr) + 1:layer + 1]}) == 1:
            return layer
    return L


@pytest.mark.parametrize("rule", ["confidence", "stability"])
def test_exit_layers_match_a_loop(rule) -> None:
    rng = np.random.default_rng(0)
    for L in (1, 2, 5, 12):
        top1 = rng.integers(0, 3, size=(200, L + 1))  # few tokens: long runs happen
        maxprob = rng.random((200, L + 1))
        for thr in THRESHOLDS[rule]:
            got = exit_layers(top1, maxprob, rule=rule, threshold=thr)
            want = [_naive_exit(t, p, rule, thr) for t, p in zip(top1, maxprob, strict=True)]
            assert got.tolist() == want, (L, thr)


def test_exit_emits_the_lens_token_or_the_model_token_at_L() -> None:
    top1 = np.array([[9, 1, 1, 2], [9, 4, 5, 6]])
    final = np.array([7, 6])
    exits = np.array([1, 3])
    assert exited_tokens(top1, final, exits).tolist() == [1, 6]
    with pytest.raises(ValueError, match="unknown exit rule"):
        exit_layers(top1, top1, rule="entropy", threshold=1)


def test_tau_one_never_exits_and_agrees_fully() -> None:
    """τ above every probability: every read runs the whole model (agreement 1)."""
    rng = np.random.default_rng(1)
    top1 = rng.integers(0, 50, size=(40, 7))
    reads = {"logit": {"top1": top1, "maxprob": rng.random((40, 7)) * 0.99,
                       "final": rng.integers(0, 50, size=40)}}
    curves = exit_curves(reads, {"all": np.ones(40, bool)},
                         thresholds={"confidence": (1.0,), "stability": (99,)})
    assert (curves.fraction == 1.0).all() and (curves.agreement == 1.0).all()
    assert (curves.exited == 0.0).all()


def test_wilson_interval() -> None:
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert all(np.isnan(wilson(0, 0)))


def _naive_reads(model, prompts, *, side: str):
    """Per-layer (max prob, top-1) at each prompt's last token, from a full softmax over
    ``output_hidden_states``: h[l] through the final norm and the unembedding for l < L,
    the model's own logits at L."""
    inner = model.model
    batches = [[p] for p in prompts] if side == "alone" else [prompts]
    maxprob, top1, final = [], [], []
    for batch in batches:
        width = max(map(len, batch))
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):
            ids[i, :len(p)] = torch.tensor(p)
            mask[i, :len(p)] = 1
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        L = len(out.hidden_states) - 1
        for i, p in enumerate(batch):
            last = len(p) - 1
            rows_p, rows_t = [], []
            for layer in range(L + 1):
                z = out.logits[i, last] if layer == L else model.lm_head(
                    inner.norm(out.hidden_states[layer][i, last]))
                prob = torch.softmax(z.double(), -1)
                rows_p.append(float(prob.max().detach()))
                rows_t.append(int(torch.argmax(z)))
            maxprob.append(rows_p)
            top1.append(rows_t)
            final.append(int(out.logits[i, last].argmax()))
    return np.array(maxprob), np.array(top1), np.array(final)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_stage_reads_and_curves_match_a_naive_loop(arch) -> None:
    model = make_hf_model(arch, vocab=64, layers=6, init=0.6, seed=3)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 64, (n,), generator=g).tolist() for n in (9, 4, 6, 12, 3, 7)]
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    ours = multi_lens_predictions(model, tok, prompts, {"logit": None}, batch_size=4)["logit"]
    for side in ("alone", "right"):
        mp, t1, fin = _naive_reads(model, prompts, side=side)
        np.testing.assert_allclose(ours["maxprob"], mp, atol=2e-5)
        assert (ours["top1"] == t1).all() and (ours["final"] == fin).all()
    assert 0.1 < np.median(ours["maxprob"]) < 0.99  # exits happen at some thresholds, not all
    reads = {"logit": {k: ours[k] for k in ("top1", "maxprob", "final")}}
    classes = {"all": np.ones(len(prompts), bool), "long": np.array([len(p) > 5 for p in prompts])}
    curves = exit_curves(reads, classes)
    for row in curves.itertuples():
        exits = [_naive_exit(t, p, row.rule, row.threshold)
                 for t, p in zip(t1, mp, strict=True)]
        emitted = [t[e] if e < 6 else f for t, e, f in zip(t1, exits, fin, strict=True)]
        m = classes[row.token_class]
        assert row.n == m.sum()
        assert row.layers_used == pytest.approx(np.mean(np.array(exits)[m]))
        assert row.agreement == pytest.approx(np.mean((np.array(emitted) == fin)[m]))
    assert set(curves.rule) == {"confidence", "stability"}
    best = best_points(curves, min_agreement=0.0)
    assert len(best) == 2 and (best.fraction == best.fraction.min()).any()
