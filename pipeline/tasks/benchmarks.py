"""Math benchmark loaders (MATH500, AIME24, AIME25, AMC23, GSM8K) via ``datasets``.

Every loader returns ``[{"id", "problem", "answer", "source"}]`` with string values; the
answers are what :func:`pipeline.tasks.math.verify` takes as gold (docs/methods.md §5). Data
come from the hub at a pinned revision or from a local jsonl/json/parquet file with the
same columns (docs/architecture.md §5.4).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BenchmarkSpec", "BENCHMARKS", "load_benchmark", "gsm8k_answer", "plain_answer"]

# Columns used as the problem id when present (first found wins); else the row index.
_ID_COLUMNS = ("unique_id", "id", "problem_id")


def plain_answer(value: Any) -> str:
    """Answer cell as a string; integral floats lose their ``.0`` (AMC23 stores ``27.0``)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def gsm8k_answer(value: Any) -> str:
    """GSM8K gold: the text after the last ``####``, thousands commas removed."""
    text = str(value)
    if "####" not in text:
        raise ValueError(f"GSM8K answer has no '####' marker: {text[-80:]!r}")
    return text.rsplit("####", 1)[1].strip().replace(",", "")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives on the hub and how to read it."""

    hub_id: str
    split: str
    problem_column: str
    answer_column: str
    config: str | None = None
    revision: str = "main"
    answer_fn: Callable[[Any], str] = field(default=plain_answer)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "math500": BenchmarkSpec("HuggingFaceH4/MATH-500", "test", "problem", "answer"),
    "aime24": BenchmarkSpec("HuggingFaceH4/aime_2024", "train", "problem", "answer"),
    "aime25": BenchmarkSpec("yentinglin/aime_2025", "train", "problem", "answer"),
    "amc23": BenchmarkSpec("math-ai/amc23", "test", "question", "answer"),
    "gsm8k": BenchmarkSpec(
        "openai/gsm8k", "test", "question", "answer", config="main", answer_fn=gsm8k_answer
    ),
}


def _spec(name: str) -> tuple[str, BenchmarkSpec]:
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return key, BENCHMARKS[key]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _load_local(path: str, cache_dir: str | None):
    import datasets

    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark file not found: {path}")
    lower = path.lower()
    if lower.endswith((".jsonl", ".json")):
        builder = "json"
    elif lower.endswith(".parquet"):
        builder = "parquet"
    else:
        raise ValueError(f"unsupported benchmark file type (want .jsonl/.json/.parquet): {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"benchmark file {path} is empty (no records)")
    try:
        ds = datasets.load_dataset(builder, data_files=path, split="train", cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - datasets' own errors become one line
        raise ValueError(f"benchmark file {path} cannot be read as {builder} "
                         f"({_one_line(exc)})") from None
    if len(ds) == 0:
        raise ValueError(f"benchmark file {path} has no records")
    return ds


def _load_hub(spec: BenchmarkSpec, revision: str, cache_dir: str | None):
    import datasets

    try:
        return datasets.load_dataset(
            spec.hub_id, spec.config, split=spec.split, revision=revision, cache_dir=cache_dir
        )
    except Exception as exc:  # offline, missing revision, auth, ...
        raise RuntimeError(
            f"could not load dataset {spec.hub_id!r} (config={spec.config!r}, "
            f"split={spec.split!r}, revision={revision!r}) from the Hugging Face hub "
            f"({_one_line(exc)}); offline? pass a local .jsonl/.json/.parquet file "
            "as load_benchmark(..., path=...)"
        ) from exc


def load_benchmark(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, str]]:
    """Load benchmark ``name`` as ``[{"id", "problem", "answer", "source"}]`` (docs/methods.md §5).

    ``path``: a local .jsonl/.json/.parquet file with the benchmark's hub columns (see
    :data:`BENCHMARKS`); otherwise the hub dataset at ``revision`` (default: the registry's
    pinned one). ``limit`` keeps the first rows. Errors: unknown name -> ValueError; missing
    file -> FileNotFoundError; missing column -> ValueError; hub failure -> RuntimeError.
    """
    key, spec = _spec(name)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    if path is not None:
        where = os.fspath(path)
        ds = _load_local(where, cache)
    else:
        rev = revision if revision is not None else spec.revision
        where = f"{spec.hub_id}@{rev}"
        ds = _load_hub(spec, rev, cache)

    columns = set(ds.column_names)
    for col in (spec.problem_column, spec.answer_column):
        if col not in columns:
            raise ValueError(
                f"benchmark {key}: column {col!r} missing in {where} (columns: {sorted(columns)})"
            )
    id_col = next((c for c in _ID_COLUMNS if c in columns), None)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))

    rows = []
    for i, row in enumerate(ds):
        raw_id = row[id_col] if id_col is not None and row[id_col] is not None else i
        rows.append(
            {
                "id": f"{key}/{raw_id}",
                "problem": str(row[spec.problem_column]),
                "answer": spec.answer_fn(row[spec.answer_column]),
                "source": key,
            }
        )
    return rows
