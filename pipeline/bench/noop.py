"""What a no-op rerun costs (issue 25): ``snakemake`` on a finished results tree, against
``python -c 'import snakemake'`` and ``snakemake --version`` (Snakemake's own CLI
start-up, the floor), median of
``--repeat`` runs each, measured in one run; plus what the Snakefile's main process
imports (neither torch nor transformers).

``python -m pipeline.bench noop [--configfile config/config.yaml] [--repeat 3] [--dry-run]``

Run it in the checkout whose results tree is finished (``snakemake --cores all`` first);
``--dry-run`` times ``snakemake -n`` instead, which parses and plans the same DAG and also
works on an unfinished tree.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

IMPORTS = ("import sys\n"
           "import pipeline.validation, pipeline.workflow, pipeline.paths, pipeline.tracking\n"
           "import pipeline.memory_plan\n"
           "from pipeline.depth import spec\n"
           "cfg = pipeline.validation.load(sys.argv[1])\n"
           "pipeline.memory_plan.check_memory(cfg)\n"
           "print(' '.join(m for m in ('torch', 'transformers', 'mlflow', 'pandas')"
           " if m in sys.modules) or '-')\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dry-run", action="store_true", help="time `snakemake -n` instead")


def _time(cmd: list[str]) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return elapsed, res.stdout + res.stderr


def run(args: argparse.Namespace) -> int:
    if not Path("Snakefile").exists():
        raise SystemExit("error: run it in the repository root (no Snakefile here)")
    snake = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile",
             args.configfile, *(["-n"] if args.dry_run else [])]
    _, out = _time(snake)  # warm the file cache; and the tree must be finished
    if not args.dry_run and "Nothing to be done" not in out:
        raise SystemExit("error: not a no-op: the results tree is not finished "
                         "(run `snakemake --cores all` first, or pass --dry-run)")
    floor = [_time([sys.executable, "-c", "import snakemake"])[0] for _ in range(args.repeat)]
    cli = [_time([sys.executable, "-m", "snakemake", "--version"])[0]
           for _ in range(args.repeat)]
    ours = [_time(snake)[0] for _ in range(args.repeat)]
    _, loaded = _time([sys.executable, "-c", IMPORTS, args.configfile])
    f, c, o = statistics.median(floor), statistics.median(cli), statistics.median(ours)
    what = "snakemake -n" if args.dry_run else "no-op snakemake"
    print(f"{'command':<40}{'median s':>10}  (of {args.repeat})")
    print(f"{'python -c import snakemake':<40}{f:>10.2f}")
    print(f"{'python -m snakemake --version':<40}{c:>10.2f}")
    print(f"{what + ' ' + args.configfile:<40}{o:>10.2f}")
    print(f"ratio to import snakemake {o / f:.1f}x, to snakemake --version {o / c:.2f}x; "
          f"above --version {o - c:.2f} s")
    print(f"heavy modules the main process imports: {loaded.strip()}")
    return 0
