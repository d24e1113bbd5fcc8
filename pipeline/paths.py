"""The results layout: every path under ``<results_dir>/<experiment>/`` is spelled here and
only here. The rules (workflow/rules/*.smk, through :mod:`pipeline.workflow`), the
comparison and the tests build their paths with these functions.

Each function takes the experiment's root (:func:`root`) and the parts of one path; a part
left at its default is the Snakemake wildcard of that name, so the same function gives a
rule its template and the code a concrete path::

    evaluation(R)                       R/eval/{run}/{benchmark}/seed{seed}/summary.json
    evaluation(R, "table", "a/grpo/seed1", "countdown", 1)
                                        R/eval/a/grpo/seed1/countdown/seed1/samples.parquet

A *run* is what the evaluation and analysis stages look at: a base model (``<model>``,
weights in ``models/<model>/model``) or a trained checkpoint
(``<model>/<method>/seed<seed>``, weights in ``rl/<model>/<method>/seed<seed>/model``).
Its outputs sit under ``eval/<run>/``, ``decomposition/<run>/`` and ``attention/<run>/``.

Imports nothing heavy: the Snakefile imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- files
# The files of one stage directory, by role (the rules' output names).
EVALUATION = {"table": "samples.parquet", "summary": "summary.json"}
DECOMPOSITION = {"table": "entropies.parquet", "summary": "summary.json",
                 "per_layer": "per_layer.csv", "boundary": "boundary.json",
                 "figures": "figures"}
ATTENTION = {"tokens": "tokens.parquet", "heads": "heads.parquet",
             "summary": "summary.json", "figures": "figures"}
ANALYSES = {"decomposition": DECOMPOSITION, "attention": ATTENTION}
RL = {"model": "model", "history": "history.json"}
# compare/: what `pipeline compare` writes (relative to its directory); the order and the
# names are also its summary's "outputs"
COMPARE = {
    "evaluations": "evaluations.csv",
    "comparison": "comparison.csv",
    "differences": "differences.csv",
    "pass_at_k": "pass_at_k.csv",
    "training": "training.csv",
    "before_after": "before_after.csv",
    "tables": "tables.html",
    "accuracy_fig": "figures/accuracy.png",
    "pass_at_k_fig": "figures/pass_at_k.png",
    "training_fig": "figures/training_curves.png",
    "entropy_fig": "figures/entropy_per_layer.png",
    "attention_fig": "figures/attention_before_after.png",
    "summary": "summary.json",
}
SUMMARY = {"csv": "evaluation.csv", "figure": "evaluation.png"}
CLAIMS = {"csv": "claims.csv", "parquet": "claims.parquet", "figure": "claims.png",
          "html": "claims.html"}


def root(config: Any) -> str:
    """``<results_dir>/<experiment>``: every output of an experiment lives below it
    (``config``: the validated mapping or :class:`pipeline.settings.Config`)."""
    if isinstance(config, Mapping):
        return str(Path(config["results_dir"]) / config["experiment"])
    return str(Path(config.results_dir) / config.experiment)


# --------------------------------------------------------------------------- runs
_TRAINED = re.compile(r"(?P<model>.+)/(?P<method>[^/]+)/seed(?P<seed>\d+)")


def run(model: str, method: str | None = None, seed: int | str | None = None) -> str:
    """The run id of a base model (no method) or of a trained checkpoint."""
    return model if method is None else f"{model}/{method}/seed{seed}"


def parse_run(run_id: str) -> tuple[str, str | None, int | None]:
    """``(model, method, seed)`` of a run id; method and seed are None for a base model."""
    m = _TRAINED.fullmatch(run_id)
    if m is None:
        return run_id, None, None
    return m["model"], m["method"], int(m["seed"])


def is_trained(run_id: str) -> bool:
    return parse_run(run_id)[1] is not None


def run_name(run_id: str) -> str:
    """The name a run's outputs carry: ``<model>`` or ``<model>+<method>``."""
    model, method, _ = parse_run(run_id)
    return model if method is None else f"{model}+{method}"


def run_constraint(models: str, methods: str) -> str:
    """Wildcard constraint of ``{run}`` from those of ``{model}`` and ``{method}``."""
    return rf"(?:{models})(?:/(?:{methods})/seed\d+)?"


def run_model_dir(root_dir: str, run_id: str) -> str:
    """The weights a run loads: the provisioned model or the trained checkpoint."""
    model, method, seed = parse_run(run_id)
    if method is None:
        return model_dir(root_dir, model)
    return rl(root_dir, "model", model, method, seed)


# --------------------------------------------------------------------------- stages
def countdown_data(root_dir: str, split: str = "{split}") -> str:
    return f"{root_dir}/data/countdown/{split}.jsonl"


def model_dir(root_dir: str, model: str = "{model}") -> str:
    return f"{root_dir}/models/{model}/model"


def provision_summary(root_dir: str, model: str = "{model}") -> str:
    return f"{root_dir}/models/{model}/provision.json"


def responses(root_dir: str, model: str = "{model}") -> str:
    return f"{root_dir}/responses/{model}/responses.parquet"


def evaluation_dir(root_dir: str, run_id: str = "{run}", benchmark: str = "{benchmark}",
                   seed: int | str = "{seed}") -> str:
    return f"{root_dir}/eval/{run_id}/{benchmark}/seed{seed}"


def evaluation(root_dir: str, what: str = "summary", run_id: str = "{run}",
               benchmark: str = "{benchmark}", seed: int | str = "{seed}") -> str:
    return f"{evaluation_dir(root_dir, run_id, benchmark, seed)}/{EVALUATION[what]}"


def analysis_dir(root_dir: str, kind: str, run_id: str = "{run}") -> str:
    """``decomposition/<run>`` or ``attention/<run>``."""
    if kind not in ANALYSES:
        raise ValueError(f"unknown analysis {kind!r} (known: {sorted(ANALYSES)})")
    return f"{root_dir}/{kind}/{run_id}"


def analysis(root_dir: str, kind: str, what: str = "summary", run_id: str = "{run}") -> str:
    return f"{analysis_dir(root_dir, kind, run_id)}/{ANALYSES[kind][what]}"


def decomposition_compare(root_dir: str) -> str:
    return f"{root_dir}/decomposition/compare_models.png"


def depth(root_dir: str, model: str = "{model}") -> str:
    """The depth stage's summary; its other files sit next to it."""
    return f"{root_dir}/depth/{model}/summary.json"


def rl(root_dir: str, what: str, model: str = "{model}", method: str = "{method}",
       seed: int | str = "{seed}") -> str:
    """A file of one RL run: ``model`` (the checkpoint) or ``history``."""
    return f"{root_dir}/rl/{model}/{method}/seed{seed}/{RL[what]}"


def compare_dir(root_dir: str) -> str:
    return f"{root_dir}/compare"


def compare(root_dir: str, what: str) -> str:
    return f"{compare_dir(root_dir)}/{COMPARE[what]}"


def compare_dirs(summary_path: str) -> tuple[str, str]:
    """``(root, compare directory)`` of the path of compare's summary (the inverse of
    ``compare(root, "summary")``, for a rule's params)."""
    up = Path(summary_path).parents
    depth = len(Path(COMPARE["summary"]).parts)
    return str(up[depth]), str(up[depth - 1])


def summary(root_dir: str, what: str) -> str:
    return f"{root_dir}/summary/{SUMMARY[what]}"


def log(root_dir: str, rule: str, *parts: str) -> str:
    """``logs/<rule>.log``, or ``logs/<rule>/<part>-<part>….log`` for a rule with wildcards."""
    if not parts:
        return f"{root_dir}/logs/{rule}.log"
    return f"{root_dir}/logs/{rule}/{'-'.join(parts)}.log"


def claims(root_dir: str, what: str) -> str:
    """``claims/claims.{csv,parquet,png,html}`` (docs/methods.md §9)."""
    return f"{root_dir}/claims/{CLAIMS[what]}"


def claims_root(claims_path: str) -> str:
    """The experiment root of a ``claims(root, …)`` path (its inverse, for a rule's params)."""
    return str(Path(claims_path).parent.parent)
