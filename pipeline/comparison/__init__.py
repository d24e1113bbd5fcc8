"""Comparison over models × methods × seeds (issue #7): one tidy table of every
evaluation, mean ± 95 % CI over seeds, each method's difference to the baseline (GRPO),
training curves, and the analyses before/after RL.

:mod:`~pipeline.comparison.stats` (intervals, aggregation over seeds, paired
differences; its docstring states the statistics), :mod:`~pipeline.comparison.tables`
(reading the DAG's files into tidy tables, the HTML tables),
:mod:`~pipeline.comparison.figures`, and :mod:`~pipeline.comparison.stage`:
:func:`run_comparison` reads the files :func:`manifest` lists, writes the tables and
figures and returns a summary.
"""

from pipeline.comparison.figures import (
    accuracy_figure,
    attention_figure,
    entropy_layer_figure,
    pass_at_k_figure,
    training_figure,
)
from pipeline.comparison.stage import OUTPUTS, manifest, manifest_paths, run_comparison
from pipeline.comparison.stats import (
    BASE,
    CONF,
    RUN,
    SHARED_SEED,
    over_seeds,
    run_stats,
    t_interval,
    vs_baseline,
    welch_interval,
)
from pipeline.comparison.tables import (
    ANALYSIS_FILES,
    ATTENTION_METRICS,
    DECOMPOSITION_METRICS,
    HEADLINE_ORDER,
    TRAINING_METRICS,
    _check_summary,
    analysis_units,
    before_after_table,
    eval_units,
    headline_metric,
    headline_metrics,
    load_analyses,
    load_evaluations,
    load_histories,
    tables_html,
)

__all__ = [
    "BASE",
    "CONF",
    "manifest",
    "manifest_paths",
    "t_interval",
    "welch_interval",
    "eval_units",
    "run_stats",
    "over_seeds",
    "vs_baseline",
    "run_comparison",
    # also importable from here, as from the former single module
    "OUTPUTS",
    "RUN",
    "SHARED_SEED",
    "ANALYSIS_FILES",
    "ATTENTION_METRICS",
    "DECOMPOSITION_METRICS",
    "HEADLINE_ORDER",
    "TRAINING_METRICS",
    "_check_summary",
    "analysis_units",
    "before_after_table",
    "headline_metric",
    "headline_metrics",
    "load_analyses",
    "load_evaluations",
    "load_histories",
    "tables_html",
    "accuracy_figure",
    "attention_figure",
    "entropy_layer_figure",
    "pass_at_k_figure",
    "training_figure",
]
