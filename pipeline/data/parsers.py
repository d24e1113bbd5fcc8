"""Parsers of the registry members (openai/evals files), the reasoning-gym generators and
the normalisation of local / hub rows into the common record format of each kind (see
:mod:`pipeline.data.sources`)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.data.sources import FIELDS, LETTERS, SOURCES, DataError, Source, _one_line


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line is a DataError."""
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got "
                                    f"{type(obj).__name__}")
                yield lineno, obj
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc


def parse_schelling_passages(path: Path, name: str) -> list[dict[str, Any]]:
    """evals ``schelling_point`` items: key ``"0"`` is the passage, ``"1"``..``"10"`` are
    sentence-shuffled copies of it (not natural text, dropped)."""
    rows = []
    for lineno, obj in _jsonl(path):
        text = obj.get("0")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: no passage under key '0' (keys: "
                            f"{sorted(obj)[:5]})")
        rows.append({"id": f"{name}/{len(rows)}", "text": text.strip(), "source": name})
    return rows


_MCQ = re.compile(
    r"^(?P<q>.*\S)\s*\n\s*A[.)][ \t]*(?P<a>.*?)\s*\n\s*B[.)][ \t]*(?P<b>.*?)\s*\n"
    r"\s*C[.)][ \t]*(?P<c>.*?)\s*\n\s*D[.)][ \t]*(?P<d>.*?)\s*(?:\n\s*Answer\s*:\s*)?$",
    re.S,
)


def parse_mcq_prompt(text: str) -> tuple[str, list[str]]:
    """Split "question\\nA. …\\nB. …\\nC. …\\nD. …\\nAnswer:" into (question, 4 choices).

    The last A–D block wins (a question may itself contain lines starting with "A.");
    choices may span lines. Raises ValueError when there is no such block.
    """
    match = _MCQ.match(text.strip())
    if not match:
        raise ValueError("no 'A. … B. … C. … D. …' option block")
    return match["q"].strip(), [match[k].strip() for k in "abcd"]


def parse_sandbagging_mmlu(path: Path, name: str) -> list[dict[str, Any]]:
    """evals ``sandbagging`` items: ``{"question": "<q>\\nA. …\\nD. …\\nAnswer:",
    "answer": "B"}``."""
    rows = []
    for lineno, obj in _jsonl(path):
        prompt, letter = obj.get("question"), str(obj.get("answer", "")).strip().upper()
        if not isinstance(prompt, str):
            raise DataError(f"{path}:{lineno}: no 'question' string")
        if letter not in LETTERS:
            raise DataError(f"{path}:{lineno}: answer {obj.get('answer')!r} is not A-D")
        try:
            question, choices = parse_mcq_prompt(prompt)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from exc
        rows.append({"id": f"{name}/{len(rows)}", "question": question, "choices": choices,
                     "answer": letter, "source": name})
    return rows


def _int_answer(value: Any) -> str:
    """An answer as a string; integers lose leading zeros ("079" -> "79")."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return str(int(text)) if re.fullmatch(r"[+-]?\d+", text) else text


def parse_evals_chat_math(path: Path, name: str) -> list[dict[str, Any]]:
    """evals chat samples: ``{"input": [{"role": "system", …}, {"role": "user",
    "content": problem}], "ideal": "079"}``; the system instruction is dropped."""
    rows = []
    for lineno, obj in _jsonl(path):
        messages = obj.get("input")
        ideal = obj.get("ideal")
        if isinstance(ideal, list) and ideal:
            ideal = ideal[0]
        users = [m.get("content") for m in messages or [] if isinstance(m, dict)
                 and m.get("role") == "user"] if isinstance(messages, list) else []
        if not users or not isinstance(users[-1], str) or not users[-1].strip():
            raise DataError(f"{path}:{lineno}: no user message under 'input'")
        if ideal is None or not str(ideal).strip():
            raise DataError(f"{path}:{lineno}: no 'ideal' answer")
        rows.append({"id": f"{name}/{len(rows)}", "problem": users[-1].strip(),
                     "answer": _int_answer(ideal), "source": name})
    return rows


PARSERS: dict[str, Callable[[Path, str], list[dict[str, Any]]]] = {
    "wikipedia": parse_schelling_passages,
    "openwebtext": parse_schelling_passages,
    "mmlu": parse_sandbagging_mmlu,
    "aime": parse_evals_chat_math,
}

_RG_SUFFIX = "Give the result as your final answer. Do not include units."


#: Sources generated by reasoning-gym: source name -> (dataset name, dataset config).
RG_GENERATED: dict[str, tuple[str, dict[str, Any]]] = {
    "gsm_symbolic": ("gsm_symbolic", {}),
    "addition_1digit": ("basic_arithmetic", {
        "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
        "allow_parentheses": False, "allow_negation": False, "whitespace": "single"}),
    "addition_2digit": ("basic_arithmetic", {
        "min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2, "operators": ["+"],
        "allow_parentheses": False, "allow_negation": False, "whitespace": "single"}),
}


def generate_reasoning_gym(name: str, size: int, seed: int) -> list[dict[str, Any]]:
    """``size`` problems of the generated source ``name`` (:data:`RG_GENERATED`) from
    reasoning-gym; its fixed answer instruction is cut off the problem text."""
    try:
        import reasoning_gym
    except ImportError as exc:
        raise DataError(f"source {name} needs {SOURCES[name].package} "
                        f"(pip install it): {_one_line(exc)}") from exc
    dataset, options = RG_GENERATED[name]
    data = reasoning_gym.create_dataset(dataset, size=size, seed=seed, **options)
    rows = []
    for i, item in enumerate(data):
        problem = str(item["question"]).strip()
        if problem.endswith(_RG_SUFFIX):
            problem = problem[: -len(_RG_SUFFIX)].rstrip()
        rows.append({"id": f"{name}/s{seed}/{i}", "problem": problem,
                     "answer": _int_answer(item["answer"]), "source": name})
    return rows


# --- normalisation of local / hub rows ------------------------------------------------------

def _normalize_row(src: Source, row: Mapping[str, Any], i: int, where: str) -> dict | None:
    """A common-format record from a row of a local file or hub dataset (None: skip)."""
    def need(field: str) -> Any:
        value = row.get(field)
        if value is None:
            raise DataError(f"{where}: row {i} has no {field!r} (columns: {sorted(row)}); "
                            "pass columns={field: column} to map one")
        return value

    rid = row.get("id")
    out: dict[str, Any] = {"id": f"{src.name}/{i}" if rid is None else str(rid)}
    if src.kind == "text":
        text = str(need("text")).strip()
        if not text:
            return None  # blank lines / empty passages (wikitext has many)
        out["text"] = text
    elif src.kind == "mcq":
        choices, answer = need("choices"), need("answer")
        if not isinstance(choices, list | tuple) or len(choices) != 4:
            raise DataError(f"{where}: row {i}: 'choices' must be a list of 4 strings")
        if isinstance(answer, int | float) and not isinstance(answer, bool) \
                and int(answer) == answer and 0 <= answer < 4:
            letter = LETTERS[int(answer)]
        else:
            letter = str(answer).strip().upper()
            letter = LETTERS[int(letter)] if letter in {"0", "1", "2", "3"} else letter
        if letter not in LETTERS:
            raise DataError(f"{where}: row {i}: answer {answer!r} is not A-D or 0-3")
        out.update(question=str(need("question")).strip(),
                   choices=[str(c).strip() for c in choices], answer=letter)
    elif src.kind == "math":
        out.update(problem=str(need("problem")).strip(), answer=_int_answer(need("answer")))
    else:
        out.update({f: str(need(f)).strip() for f in ("subject", "relation", "prompt",
                                                     "answer")})
    out["source"] = str(row.get("source") or src.name)
    return {f: out[f] for f in FIELDS[src.kind]}


def normalize(src: Source, rows: Iterable[Mapping[str, Any]], where: str,
              columns: Mapping[str, str] | None, limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` common-format records of ``rows`` (``columns`` maps a common field
    to a row column); ``where`` names the file or dataset in errors."""
    mapping = dict(columns or {})
    out: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if limit is not None and len(out) >= limit:
            break
        if mapping:
            missing = [c for c in mapping.values() if c not in row]
            if missing:
                raise DataError(f"{where}: column(s) {missing} not found (columns: "
                                f"{sorted(row)})")
            row = {**row, **{field: row[col] for field, col in mapping.items()}}
        rec = _normalize_row(src, row, i, where)
        if rec is not None:
            out.append(rec)
    return out
