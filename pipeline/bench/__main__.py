"""``python -m pipeline.bench <name> [options]``: dispatch to a benchmark in ``BENCHMARKS``.

A benchmark module either defines ``add_arguments(parser)`` + ``run(args) -> int`` (its
options are parsed here) or ``main(argv)`` (it parses the remaining arguments itself).
Only the selected module is imported.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.bench import BENCHMARKS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=list(BENCHMARKS))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's options")
    ns = parser.parse_args(argv)
    module = importlib.import_module(BENCHMARKS[ns.benchmark])
    if hasattr(module, "add_arguments"):
        sub = argparse.ArgumentParser(prog=f"{parser.prog} {ns.benchmark}",
                                      description=module.__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        return int(module.run(sub.parse_args(ns.options)) or 0)
    return int(module.main(ns.options) or 0)


if __name__ == "__main__":
    sys.exit(main())
