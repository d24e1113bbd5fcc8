"""One claim record: a paper's claim measured on one model, run and split, with a value, a
95 % interval, n, the criterion and a verdict (docs/methods.md §9)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

VERDICTS = ("holds", "fails", "inconclusive", "not measurable", "descriptive")
SOURCES = ("paper", "extension")
FAMILIES = ("", "qwen", "llama", "other")
CI_KINDS = ("bootstrap", "t")
KEY = ("claim_id", "model", "run", "split")  # one record per claim, model, run and split


@dataclass(frozen=True)
class ClaimRecord:
    """One row of ``claims.csv`` (docs/methods.md §9.1). ``run`` is the base model's name
    or a trained run id ``<model>/<method>/seed<s>`` (:func:`run_id`); ``ci_kind`` says
    whether the interval is a percentile bootstrap over units or a t-interval over seeds;
    ``n_needed`` is set for ``inconclusive`` records only (§9.4)."""

    claim_id: str
    paper: str
    claim: str
    model: str
    run: str
    split: str
    metric: str
    value: float
    ci_low: float
    ci_high: float
    ci_kind: str
    n: int
    criterion: str
    verdict: str
    reason: str = ""
    n_needed: int | None = None
    figure: str | None = None
    boundary: float = math.nan  # the criterion's boundary nearest the value (for figures)
    paper_ref: str = ""  # where the paper states it: figure, table or section
    paper_value: str = ""  # the paper's own number for it, as text ("" when none)
    source: str = "paper"  # "paper": the paper's statistic; "extension": the project's
    family: str = ""  # model family the claim was tested under (internal policies)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.ci_kind not in CI_KINDS:
            raise ValueError(f"ci_kind must be one of {CI_KINDS}, got {self.ci_kind!r}")
        if not self.claim_id or any(c.isspace() for c in self.claim_id):
            raise ValueError(f"claim_id must be a non-empty token, got {self.claim_id!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.n < 0:
            raise ValueError(f"n must be ≥ 0, got {self.n}")
        if self.n_needed is not None and self.verdict != "inconclusive":
            raise ValueError("n_needed is only set for inconclusive records")

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict, keys in :data:`COLUMNS` order."""
        return asdict(self)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ClaimRecord))


def run_id(model: str, method: str | None = None, seed: int | None = None) -> str:
    """``model`` for a base model (no method), else ``<model>/<method>/seed<s>``."""
    if method is None:
        return model
    if seed is None:
        raise ValueError("a trained run needs its seed")
    return f"{model}/{method}/seed{int(seed)}"


def records_frame(records: Iterable[ClaimRecord]) -> pd.DataFrame:
    """The records as a DataFrame with the columns of :data:`COLUMNS`, in that order
    (``n`` int64, ``n_needed`` nullable Int64, floats for value and interval)."""
    rows = [r.to_dict() for r in records]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("value", "ci_low", "ci_high"):
        df[col] = df[col].astype("float64")
    df["n"] = df["n"].astype("int64")
    df["n_needed"] = df["n_needed"].astype("Int64")
    df["figure"] = df["figure"].astype("object").where(df["figure"].notna(), None)
    return df


def _check_unique(df: pd.DataFrame) -> None:
    dup = df.duplicated(list(KEY), keep=False)
    if dup.any():
        keys = df.loc[dup, list(KEY)].drop_duplicates().to_dict("records")
        raise ValueError(f"duplicate claim records for {keys}")


def write_claims(records: Sequence[ClaimRecord], out_csv: str | Path,
                 out_parquet: str | Path | None = None) -> list[Path]:
    """Write the table as CSV (and parquet). Both are first written to temporary files
    beside their targets and renamed only when every write succeeded, so a failure leaves
    the old files (or none) and never a partial one (docs/methods.md §9.1). Records must be
    unique by (claim_id, model, run, split)."""
    df = records_frame(records)
    _check_unique(df)
    targets = [Path(out_csv)] + ([Path(out_parquet)] if out_parquet is not None else [])
    temps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            os.close(fd)
            temps.append(Path(tmp))
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a result is shared
            if target.suffix == ".csv":
                df.to_csv(tmp, index=False)
            else:
                df.to_parquet(tmp, index=False)
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()
    return targets


_TEXT = ("claim_id", "paper", "claim", "model", "run", "split", "metric", "ci_kind",
         "criterion", "verdict", "reason", "figure", "paper_ref", "paper_value", "source",
         "family")


def read_claims(path: str | Path) -> list[ClaimRecord]:
    """Records back from a CSV or parquet table written by :func:`write_claims`."""
    path = Path(path)
    if path.suffix == ".csv":
        df = pd.read_csv(path, dtype={c: str for c in _TEXT}, keep_default_na=False,
                         na_values={c: [""] for c in ("value", "ci_low", "ci_high",
                                                      "n_needed", "figure", "boundary")})
    else:
        df = pd.read_parquet(path)
    out = []
    for row in df.to_dict("records"):
        out.append(ClaimRecord(**{
            **row,
            "value": float(row["value"]), "ci_low": float(row["ci_low"]),
            "ci_high": float(row["ci_high"]), "n": int(row["n"]),
            "reason": "" if _missing(row["reason"]) else str(row["reason"]),
            "n_needed": None if _missing(row["n_needed"]) else int(row["n_needed"]),
            "figure": None if _missing(row["figure"]) else str(row["figure"]),
            "boundary": float(row.get("boundary", math.nan)),
            **{k: "" if _missing(row.get(k)) else str(row[k])
               for k in ("paper_ref", "paper_value", "family")},
            "source": "paper" if _missing(row.get("source")) else str(row["source"]),
        }))
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _missing(x: Any) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))
