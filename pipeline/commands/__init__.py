"""The subcommands of ``python -m pipeline`` (:mod:`pipeline.cli`), one module per stage
family: :mod:`.data` (countdown-data, provision), :mod:`.sampling` (evaluate, responses),
:mod:`.analysis` (decomposition, decomposition-compare, attention), :mod:`.train`,
:mod:`.depth`, :mod:`.report` (summarize, compare), :mod:`.plan` (the GPU memory
planner); :mod:`.common` holds the registry and the shared arguments. Importing this
package registers every stage in :data:`STAGES`, family by family in the order of
:data:`FAMILIES` (the order ``--help`` lists them)."""

import importlib

from pipeline.commands.common import STAGES

FAMILIES = ("data", "sampling", "analysis", "train", "depth", "report", "plan")

for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")

__all__ = ["FAMILIES", "STAGES"]
