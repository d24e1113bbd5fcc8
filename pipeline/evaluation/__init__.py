"""Benchmark evaluation: metrics (docs/methods.md §5)."""

from pipeline.evaluation.metrics import avg_at_k, mean_ci, pass_at_k

__all__ = ["pass_at_k", "avg_at_k", "mean_ci"]
