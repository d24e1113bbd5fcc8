"""Config tools: ``check-config`` (every check the Snakefile makes before a job, on config
files) and ``plan``, the GPU memory planner (:mod:`pipeline.memory_plan`) on a config file.

    reasoning-inside check-config config/smoke.yaml

prints ``ok`` per file, or one ``error:`` line naming the file, line and column of a YAML
error, a duplicate key with both lines, or the key path of a bad value (exit 1).

    reasoning-inside plan --configfile config/paper-qwen3-8b.yaml --gpus 8 --gpu-mem 80

prints one row per GPU job (the terms of its peak memory per GPU in GiB, the total and
whether it fits) and exits 1 with one line naming the first job that does not fit.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.commands.common import arg, stage


@stage(
    "check-config",
    arg("configfiles", nargs="+", metavar="CONFIGFILE", help="experiment config (YAML)"),
)
def check_config(ns: argparse.Namespace) -> None:
    """Validate config files as the Snakefile does before any job (syntax, keys, values)."""
    from pipeline.config import check_writable, read_yaml
    from pipeline.memory_plan import check_memory
    from pipeline.settings import Config
    from pipeline.validation import validate

    for path in ns.configfiles:
        config = validate(read_yaml(path) or {})
        check_writable(Config.of(config).results_dir)
        check_memory(config)
        print(f"ok {path}")


@stage(
    "plan",
    arg("--configfile", required=True, help="experiment config (YAML)"),
    arg("--gpus", type=int, required=True,
        help="GPUs one job may use (caps resources.train.gpu, the train processes)"),
    arg("--gpu-mem", type=float, required=True,
        help="memory of one GPU as sold, in GB (treated as GiB: 80 for an 80 GB H100)"),
    arg("--prompt-tokens", type=int, default=None,
        help="assumed prompt length in tokens (default: planner.prompt_tokens or 512)"),
    arg("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override a config key before validation (dotted path, YAML value; '*' "
             "matches every key), e.g. evaluation.benchmarks.*.batch_size=8; repeatable"),
)
def plan(ns: argparse.Namespace) -> None:
    """Estimate the peak GPU memory of every GPU job of a config (exit 1 if one does not fit)."""
    from pipeline.config import read_yaml
    from pipeline.memory_plan import PlanError, check, format_table, override
    from pipeline.memory_plan import plan as make_plan
    from pipeline.validation import validate

    if ns.gpus < 1 or ns.gpu_mem <= 0:
        raise ValueError("plan: --gpus must be >= 1 and --gpu-mem > 0")
    config = read_yaml(ns.configfile) or {}
    for item in ns.overrides:
        override(config, item)
    validate(config)
    estimates = make_plan(config, gpus=ns.gpus, gpu_mem_gb=ns.gpu_mem,
                          prompt_tokens=ns.prompt_tokens)
    print(format_table(estimates))
    try:
        check(estimates)
    except PlanError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
