"""Small I/O helpers: atomic writes, so a killed job never leaves a file that looks
finished."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd


def _atomic(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return _atomic(path, lambda p: p.write_text(text))


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    return _atomic(path, lambda p: p.write_text(text))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_table(path: str | Path, df: pd.DataFrame) -> Path:
    """Parquet or CSV by suffix."""
    path = Path(path)
    if path.suffix == ".csv":
        return _atomic(path, lambda p: df.to_csv(p, index=False))
    return _atomic(path, lambda p: df.to_parquet(p, index=False))
