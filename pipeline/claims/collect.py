"""Every stage claim of one experiment (docs/methods.md §9.5): the claim functions of
:mod:`.internal`, :mod:`.rhythm` and :mod:`.depth` over every model and trained run whose
stage outputs exist. Reads the stage outputs only; nothing runs a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline import paths
from pipeline.claims.depth import depth_claims
from pipeline.claims.internal import cross_model_claims, decomposition_claims, family
from pipeline.claims.record import FAMILIES, ClaimRecord
from pipeline.claims.rhythm import attention_claims


def discover(results_root: str | Path) -> tuple[list[str], list[str]]:
    """``(models, trained runs)`` that have a decomposition, attention or depth output
    (``<kind>/<model>/`` and ``<kind>/<model>/<method>/seed<s>/``)."""
    root = Path(results_root)
    models: set[str] = set()
    runs: set[str] = set()
    for kind in ("decomposition", "attention", "depth"):
        base = root / kind
        if not base.is_dir():
            continue
        for d in base.iterdir():
            if not d.is_dir():
                continue
            models.add(d.name)
            for seed_dir in d.glob("*/seed*"):
                if seed_dir.is_dir():
                    _, method, seed = paths.parse_run(str(seed_dir.relative_to(base)))
                    if method is not None:
                        runs.add(paths.run(d.name, method, seed))
    return sorted(models), sorted(runs)


def parse_families(items: Sequence[str]) -> dict[str, str]:
    """``["model=llama", …]`` (``-`` = none) → ``{model: family}``; one line on a bad item."""
    out = {}
    for item in items:
        if item == "-":
            continue
        model, sep, fam = item.partition("=")
        if not sep or fam not in FAMILIES or not fam:
            raise ValueError(f"claims: --families item {item!r} is not model=qwen|llama|other")
        out[model] = fam
    return out


def collect(results_root: str | Path, *, models: Sequence[str] | None = None,
            runs: Sequence[str] | None = None,
            families: Mapping[str, str] | None = None) -> list[ClaimRecord]:
    """The records of every claim on every base model in ``models`` (decomposition,
    attention, depth, and the cross-model internal-policy claims) and every trained run in
    ``runs`` (decomposition and attention, with the WAAD/FAI shift against its base
    model). ``None`` → :func:`discover`. Missing stage outputs are skipped. ``families``
    overrides a model's claims family (default: its architecture, §9.6)."""
    found_models, found_runs = discover(results_root)
    models = found_models if models is None else list(models)
    runs = found_runs if runs is None else list(runs)
    fams = {m: (families or {}).get(m) or family(results_root, m)
            for m in {*models, *(paths.parse_run(r)[0] for r in runs)}}
    out: list[ClaimRecord] = []
    for m in models:
        out += decomposition_claims(results_root, m, fams[m])
        out += attention_claims(results_root, m)
        out += depth_claims(results_root, m)
    out += cross_model_claims(results_root, models, fams)
    for r in runs:
        out += decomposition_claims(results_root, r, fams[paths.parse_run(r)[0]])
        out += attention_claims(results_root, r)
    return out
