"""Micro-benchmarks: ``python -m pipeline.bench <name> [options]``.

:data:`BENCHMARKS` maps a name to its module (imported only when selected); see
``pipeline/bench/__main__.py`` for the two module interfaces accepted.
"""

from __future__ import annotations

BENCHMARKS: dict[str, str] = {
    "decomposition": "pipeline.bench.decomposition",
    "generation": "pipeline.bench.generation",
    "attention": "pipeline.bench.attention",
    "depth": "pipeline.bench.depth",
    "rl": "pipeline.bench.rl",
    "fsdp": "pipeline.bench.fsdp",
    "gpu_check": "pipeline.bench.gpu_check",
    "claims_diff": "pipeline.bench.claims_diff",
    "noop": "pipeline.bench.noop",
    "early_exit": "pipeline.bench.early_exit",
}
