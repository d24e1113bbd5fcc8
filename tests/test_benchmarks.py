"""Tests for pipeline.tasks.benchmarks (local fixture files; the hub is never reached)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.tasks.benchmarks import BENCHMARKS, gsm8k_answer, load_benchmark

# Rows in each benchmark's hub column layout (a subset of the real columns).
FIXTURES: dict[str, list[dict]] = {
    "math500": [
        {"problem": "What is $1+1$?", "answer": "2", "unique_id": "test/algebra/1.json"},
        {"problem": "Simplify $\\sqrt{8}$.", "answer": "2\\sqrt{2}", "unique_id": "test/x/2.json"},
    ],
    "aime24": [
        {"id": 60, "problem": "Find $N$.", "answer": "204", "solution": "..."},
        {"id": 61, "problem": "Find $M$.", "answer": "33", "solution": "..."},
    ],
    "aime25": [
        {"id": "0", "problem": "Find the sum.", "answer": "70"},
        {"id": "1", "problem": "Find the area.", "answer": "588"},
    ],
    "amc23": [
        {"id": 0, "question": "How many?", "answer": 27.0},
        {"id": 1, "question": "What ratio?", "answer": 0.5},
    ],
    "gsm8k": [
        {"question": "How much money?", "answer": "She earns 1,000 + 234\n#### 1,234"},
        {"question": "How many eggs?", "answer": "16 - 3 - 4 = 9\n#### 9"},
    ],
}
EXPECTED_ANSWERS = {
    "math500": ["2", "2\\sqrt{2}"],
    "aime24": ["204", "33"],
    "aime25": ["70", "588"],
    "amc23": ["27", "0.5"],
    "gsm8k": ["1234", "9"],
}


def _write(rows: list[dict], path: Path) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".json"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_load_local(name: str, suffix: str, tmp_path: Path) -> None:
    path = _write(FIXTURES[name], tmp_path / f"{name}{suffix}")
    rows = load_benchmark(name, path=path, cache_dir=tmp_path / "cache")
    assert [r["answer"] for r in rows] == EXPECTED_ANSWERS[name]
    problem_col = BENCHMARKS[name].problem_column
    assert [r["problem"] for r in rows] == [r[problem_col] for r in FIXTURES[name]]
    for row in rows:
        assert set(row) == {"id", "problem", "answer", "source"}
        assert all(isinstance(v, str) for v in row.values())
        assert row["source"] == name
    assert len({r["id"] for r in rows}) == len(rows)


def test_ids_and_limit(tmp_path: Path) -> None:
    path = _write(FIXTURES["math500"], tmp_path / "m.jsonl")
    rows = load_benchmark("MATH500", path=str(path), limit=1, cache_dir=str(tmp_path / "c"))
    assert rows == [
        {
            "id": "math500/test/algebra/1.json",
            "problem": "What is $1+1$?",
            "answer": "2",
            "source": "math500",
        }
    ]
    cache = tmp_path / "c"
    gsm = load_benchmark(
        "gsm8k", path=_write(FIXTURES["gsm8k"], tmp_path / "g.jsonl"), cache_dir=cache
    )
    assert [r["id"] for r in gsm] == ["gsm8k/0", "gsm8k/1"]  # no id column: row index
    aime = _write(FIXTURES["aime24"], tmp_path / "a.jsonl")
    assert [r["id"] for r in load_benchmark("aime24", path=aime, cache_dir=cache)] == [
        "aime24/60",
        "aime24/61",
    ]
    assert load_benchmark("aime24", path=aime, limit=0, cache_dir=cache) == []
    assert len(load_benchmark("aime24", path=aime, limit=10, cache_dir=cache)) == 2
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("aime24", path=aime, limit=-1)


def test_gsm8k_answer() -> None:
    assert gsm8k_answer("step\n#### 1,234") == "1234"
    assert gsm8k_answer("#### -5 ") == "-5"
    with pytest.raises(ValueError, match="####"):
        gsm8k_answer("no marker 12")


def test_registry_ids() -> None:
    assert BENCHMARKS["math500"].hub_id == "HuggingFaceH4/MATH-500"
    assert BENCHMARKS["gsm8k"].config == "main"
    assert BENCHMARKS["amc23"].problem_column == "question"
    assert all(spec.revision for spec in BENCHMARKS.values())


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="mmlu") as err:
        load_benchmark("mmlu")
    msg = str(err.value)
    assert "\n" not in msg
    assert all(name in msg for name in BENCHMARKS)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_benchmark("aime24", path=missing)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("problem,answer\n1+1,2\n")
    with pytest.raises(ValueError, match="data.csv"):
        load_benchmark("aime24", path=path)


def test_missing_column(tmp_path: Path) -> None:
    # AMC23 needs "question"; a MATH-style file has "problem" instead.
    path = _write(FIXTURES["math500"], tmp_path / "wrong.jsonl")
    with pytest.raises(ValueError, match="'question'") as err:
        load_benchmark("amc23", path=path, cache_dir=tmp_path / "cache")
    assert "wrong.jsonl" in str(err.value)


def test_offline_hub_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import datasets.config
    import huggingface_hub.constants

    # The env var is read at import time, so patch the parsed constants as well.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HuggingFaceH4/MATH-500") as err:
        load_benchmark("math500", cache_dir=tmp_path / "empty-cache")
    msg = str(err.value)
    assert "path" in msg and "\n" not in msg
    with pytest.raises(RuntimeError, match="openai/gsm8k.*'v1.0'"):
        load_benchmark("gsm8k", revision="v1.0", cache_dir=tmp_path / "empty-cache")
