"""Decision depth in the authors' convention (docs/methods.md §4.4): the earliest layer
ranges over blocks 1..L (h[1]..h[L]), never the embedding output h[0], and keeps the
h-index numbering. ``include_embedding=True`` is the earlier behaviour."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.depth import decision_depth_curve, earliest_layer

# [N=4, L+1=5] strict ranks over h[0]..h[4]; rows 0 and 2 are already rank ≤ 10 at h[0]
RANKS = torch.tensor([
    [3, 50, 8, 1, 1],
    [400, 30, 9, 2, 1],
    [1, 1, 1, 1, 1],
    [900, 800, 700, 600, 20],
])


def authors_earliest(ranks: np.ndarray, k: float) -> np.ndarray:
    """The authors' loop: block b = 0..L−1 (0-based) reads h[b+1]; first b with rank ≤ k.
    Returned as the h index b + 1 (−1 if never)."""
    out = []
    for row in ranks:
        hit = -1
        for b in range(len(row) - 1):
            if row[b + 1] <= k:
                hit = b + 1
                break
        out.append(hit)
    return np.array(out)


def test_default_skips_embedding_and_matches_authors():
    for k in (1, 2, 10, 25, 1000):
        ours = earliest_layer(RANKS, k).numpy()
        np.testing.assert_array_equal(ours, authors_earliest(RANKS.numpy(), k))
    # where the conventions differ: h[0] counts only with include_embedding
    assert earliest_layer(RANKS, 10).tolist() == [2, 2, 1, -1]
    assert earliest_layer(RANKS, 10, include_embedding=True).tolist() == [0, 2, 0, -1]
    assert earliest_layer(RANKS, 1, stays=True).tolist() == [3, 4, 1, -1]
    assert earliest_layer(RANKS, 1, stays=True, include_embedding=True).tolist() == [3, 4, 0, -1]


def test_curve_means_follow_the_convention():
    dd = decision_depth_curve(RANKS, [10.0])
    first = dd[dd.variant == "first"].iloc[0]
    assert first.mean_layer == np.mean([2, 2, 1]) and first.n_reached == 3
    old = decision_depth_curve(RANKS, [10.0], include_embedding=True)
    assert old[old.variant == "first"].iloc[0].mean_layer == np.mean([0, 2, 0])
    assert first.num_layers == 4 and first.mean_layer_rel == first.mean_layer / 4


# --- multiple-choice option flags (docs/methods.md §4.6 case study iii) ----------------------
# One prompt, L = 4, K = 4 options, the model's choice = option 0. Every flag (options
# dominate / the choice is top-1 / the choice is settled among the options) holds at h[0],
# fails at h[1] and holds from h[2] on.
_PATTERN = [True, False, True, True, True]


def _option_table() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n_cols, k = len(_PATTERN), 4
    logits = torch.zeros(1, n_cols, k)
    ranks = torch.zeros(1, n_cols, k, dtype=torch.long)
    for layer, ok in enumerate(_PATTERN):
        # the choice (0) above the others where the flag holds, below option 1 where not
        logits[0, layer] = torch.tensor([5.0, 4.0, 3.0, 2.0] if ok else [4.0, 5.0, 3.0, 2.0])
        ranks[0, layer] = torch.tensor([1, 2, 3, 4] if ok else [2, 1, 3, 4])
    dominate = torch.tensor([_PATTERN])
    return ranks, logits, dominate, torch.tensor([0])


def test_option_flags_follow_the_convention():
    from pipeline.depth.ranks import OPTION_FLAGS, option_flags

    ranks, logits, dominate, choice = _option_table()
    default = option_flags(ranks, logits, dominate, choice)
    with_emb = option_flags(ranks, logits, dominate, choice, include_embedding=True)
    for out in (default, with_emb):  # the per-layer flags themselves cover h[0]..h[L]
        assert out["choice_top1"][0].tolist() == _PATTERN
        assert out["choice_settled"][0].tolist() == _PATTERN
    for flag in OPTION_FLAGS:
        assert default[f"{flag}_layer"].tolist() == [2], flag
        assert default[f"{flag}_layer_stays"].tolist() == [2], flag
        assert with_emb[f"{flag}_layer"].tolist() == [0], flag
        assert with_emb[f"{flag}_layer_stays"].tolist() == [2], flag


def test_mcq_study_passes_the_spec_convention(monkeypatch):
    """mcq_study hands ``decision_depth.include_embedding`` to the option flags; the
    per-layer fractions (mcq_layers) do not depend on it."""
    import pipeline.data
    from pipeline.depth import case_studies
    from pipeline.depth.ranks import option_flags

    items = [{"id": str(i), "question": f"q{i}", "choices": ["a", "b", "c", "d"],
              "answer": "A"} for i in range(3)]
    monkeypatch.setattr(pipeline.data, "load_source", lambda *a, **kw: items)
    monkeypatch.setattr(case_studies, "option_token_ids", lambda tok, letters: [1, 2, 3, 4])

    def fake_predictions(model, tok, prompts, lenses, *, option_ids, include_embedding,
                         **kw):
        ranks, logits, dominate, choice = (x.repeat(len(prompts), *[1] * (x.dim() - 1))
                                           for x in _option_table())
        flags = option_flags(ranks, logits, dominate, choice,
                             include_embedding=include_embedding)
        n, cols = ranks.shape[0], ranks.shape[1]
        return {name: {"option_ranks": ranks.numpy(), "dominate": dominate.numpy(),
                       "choice": choice.numpy(), **{k: v.numpy() for k, v in flags.items()},
                       "top1": np.zeros((n, cols), int), "final": np.zeros(n, int),
                       "maxprob": np.full((n, cols), 0.5)}  # (the exit curves' reads)
                for name in lenses}

    monkeypatch.setattr(case_studies, "multi_lens_predictions", fake_predictions)

    class Tok:
        def __call__(self, text):
            return type("Enc", (), {"input_ids": list(range(len(text)))})()

    def run(emb):
        spec = {"mcq": {"shots": 0, "n_problems": 3, "max_chars": None, "seed": 0},
                "batch_size": 2, "decision_depth": {"include_embedding": emb}}
        return case_studies.mcq_study(None, Tok(), spec, {"logit": None}, cache_dir=None,
                                      progress=False)[0]

    default, with_emb = run(False), run(True)
    for flag in ("dominate", "choice_top1", "choice_settled"):
        assert (default["mcq"][f"{flag}_layer"] == 2).all()
        assert (with_emb["mcq"][f"{flag}_layer"] == 0).all()
        assert (with_emb["mcq"][f"{flag}_layer_stays"] == 2).all()
    assert default["mcq_layers"].equals(with_emb["mcq_layers"])
    assert default["mcq_layers"].frac_dominate.tolist() == [float(x) for x in _PATTERN]
