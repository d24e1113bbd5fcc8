"""``python -m pipeline <stage> …`` — the one entry point the Snakemake rules call.

Each stage takes its slice of the validated config as canonical JSON (``--spec``), its
inputs and outputs as paths, and the MLflow job description (``--job``). The same
commands run without Snakemake. Errors end the process with one line naming the problem.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.commands import STAGES  # the subcommands, one module per stage family

__all__ = ["STAGES", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, fn in STAGES.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0])
        for names, kw in fn.cli_args:  # type: ignore[attr-defined]
            p.add_argument(*names, **kw)
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> None:
    ns = build_parser().parse_args(argv)
    try:
        ns.func(ns)
    except (ValueError, OSError, RuntimeError, FloatingPointError) as exc:
        if os.environ.get("PIPELINE_DEBUG"):
            raise
        print(f"error: {ns.stage}: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
