"""Claims: every paper claim as a measured verdict with an interval (docs/methods.md §9).

- :mod:`.record`: :class:`ClaimRecord`, the table's columns and its atomic writer;
- :mod:`.stats`: bootstrap and t intervals, and :func:`n_needed`;
- :mod:`.verdict`: criteria (:class:`Greater`, :class:`Less`, :class:`Between`) and
  :func:`make_record`.
"""

from pipeline.claims.record import (
    CI_KINDS,
    COLUMNS,
    VERDICTS,
    ClaimRecord,
    read_claims,
    records_frame,
    run_id,
    write_claims,
)
from pipeline.claims.stats import (
    CONF,
    N_BOOT,
    Interval,
    bootstrap_ci,
    bootstrap_mean_ci,
    half_width,
    n_needed,
    paired_bootstrap_diff_ci,
    resample_indices,
    t_interval,
    t_quantile,
)
from pipeline.claims.verdict import Between, Criterion, Greater, Less, make_record, measure

__all__ = [
    "CI_KINDS", "COLUMNS", "CONF", "N_BOOT", "VERDICTS", "Between", "ClaimRecord", "Criterion",
    "Greater", "Interval", "Less", "bootstrap_ci", "bootstrap_mean_ci", "half_width",
    "make_record", "measure", "n_needed", "paired_bootstrap_diff_ci", "read_claims",
    "records_frame", "resample_indices", "run_id", "t_interval", "t_quantile", "write_claims",
]
