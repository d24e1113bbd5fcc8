"""The registry of ``python -m pipeline`` subcommands and what they share: the
:func:`stage` decorator, the common arguments, the MLflow job description and the torch
thread count."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any

from pipeline.config import CACHE_ENV

STAGES: dict[str, Callable[[argparse.Namespace], None]] = {}

Arg = tuple[tuple[str, ...], dict[str, Any]]


def stage(name: str, *args: Arg):
    """Register a stage function with its arguments."""

    def deco(fn: Callable[[argparse.Namespace], None]):
        fn.cli_args = args  # type: ignore[attr-defined]
        STAGES[name] = fn
        return fn

    return deco


def arg(*names: str, **kw: Any) -> Arg:
    return names, kw


JOB = arg("--job", type=json.loads, default=None, help="MLflow job description (JSON)")
SPEC = arg("--spec", type=json.loads, required=True, help="config slice (JSON)")
THREADS = arg("--threads", type=int, default=None, help="torch CPU threads")
NAME = arg("--name", required=True, help="model name")
MODEL_DIR = arg("--model-dir", required=True)
RESPONSES = arg("--responses", required=True, help="responses table (parquet)")
SOURCE = arg("--source", required=True, help="model source (selects the prompt style)")
CACHE_DIR = arg("--cache-dir", default=os.environ.get(CACHE_ENV),
                help=f"download cache for registry wheels and data (default ${CACHE_ENV})")


def job_of(ns: argparse.Namespace) -> dict | None:
    """``--job`` completed from the environment the Snakefile exports; tracking is off
    when neither names a tracking URI (e.g. a stage run by hand)."""
    from pipeline.tracking import TRACKING_URI_ENV
    from pipeline.workflow import CONFIG_HASH_ENV, EXPERIMENT_ENV

    if ns.job is None:
        return None
    job = dict(ns.job)
    job.setdefault("tracking_uri", os.environ.get(TRACKING_URI_ENV))
    job.setdefault("experiment", os.environ.get(EXPERIMENT_ENV))
    job.setdefault("config_hash", os.environ.get(CONFIG_HASH_ENV, ""))
    return job


def set_threads(ns: argparse.Namespace) -> None:
    """``--threads`` as the torch CPU thread count (unset: torch's default)."""
    import torch

    if getattr(ns, "threads", None):
        torch.set_num_threads(ns.threads)
