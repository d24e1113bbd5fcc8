"""Data sources in one place: named, versioned, cached, with their licence.

Every source loads through ``datasets`` into one record format per kind:

- ``text``: ``{"id", "text", "source"}``
- ``mcq``:  ``{"id", "question", "choices" (4 strings), "answer" ("A".."D"), "source"}``
- ``math``: ``{"id", "problem", "answer" (string), "source"}``
- ``fact``: ``{"id", "subject", "relation", "prompt", "answer", "source"}``; the sentence
  is ``prompt + " " + answer`` (``source`` names the record's provenance).

By default a source comes from a pinned package-registry wheel (the member is fetched with
:func:`pipeline.models.gguf.fetch_registry_file` and its sha256 verified), is generated
(reasoning-gym), or ships with the package (``pipeline/data/files``). The same loader takes
a local json/jsonl/parquet file in the common format (``path``, optionally with a column
mapping) or a hub dataset (``hub_id``) for users with network access.

Cache (``cache_dir``; default ``$PIPELINE_DATA_CACHE`` or ``~/.cache/reasoning-inside``):
``wheels/`` and ``files/`` (fetched wheels and extracted members), ``parquet/`` (converted
records, keyed by the member's sha256 and the parser version) and ``datasets/`` (the
``datasets`` arrow cache). A second load reads the parquet file and needs no network.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DataError",
    "Source",
    "SOURCES",
    "FIELDS",
    "FACT_RELATIONS",
    "load_source",
    "default_cache_dir",
    "describe_sources",
    "parse_mcq_prompt",
]

PARSER_VERSION = 1  # bump when a parser's output changes: invalidates cached parquet files
FILES_DIR = Path(__file__).resolve().parent / "files"
FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("id", "text", "source"),
    "mcq": ("id", "question", "choices", "answer", "source"),
    "math": ("id", "problem", "answer", "source"),
    "fact": ("id", "subject", "relation", "prompt", "answer", "source"),
}
LETTERS = ("A", "B", "C", "D")
FACT_RELATIONS = {"capital": "capitals.jsonl", "currency": "currencies.jsonl",
                  "language": "languages.jsonl"}


class DataError(RuntimeError):
    """A data source could not be loaded; the one-line message names the source or file."""


@dataclass(frozen=True)
class Source:
    """A named data source: where it lives, its version and licence."""

    name: str
    kind: str  # a key of FIELDS
    description: str
    version: str
    licence: str  # licence of the data themselves
    origin: str  # where the data originally come from
    package: str | None = None  # pinned registry package ("name==version") that ships it
    package_licence: str | None = None
    member: str | None = None  # file inside the package's wheel
    sha256: str | None = None  # of the member
    files: tuple[str, ...] = ()  # files under pipeline/data/files
    default_size: int | None = None  # generated sources: records when no limit is given


_EVALS = "evals==3.0.1.post1"
_EVALS_DATA = "evals/registry/data"

SOURCES: dict[str, Source] = {
    "wikipedia": Source(
        name="wikipedia", kind="text",
        description="1,000 English Wikipedia passages (≈100 words; the unshuffled original "
                    "of each schelling_point item)",
        version="3.0.1.post1", licence="CC-BY-SA-3.0 / GFDL",
        origin="huggingface.co/datasets/wikipedia via openai/evals schelling_point",
        package=_EVALS, package_licence="MIT",
        member=f"{_EVALS_DATA}/schelling_point/wikipedia_5.jsonl",
        sha256="be1805cd801ba9c486a2919da8513cc36ca97d7c4f0c324d3be935d1a34c1b9f",
    ),
    "openwebtext": Source(
        name="openwebtext", kind="text",
        description="1,000 OpenWebText passages (≈110 words; the unshuffled original of "
                    "each schelling_point item)",
        version="3.0.1.post1", licence="CC0-1.0",
        origin="huggingface.co/datasets/openwebtext via openai/evals schelling_point",
        package=_EVALS, package_licence="MIT",
        member=f"{_EVALS_DATA}/schelling_point/owt_5.jsonl",
        sha256="095ceeb4ac1248bcaac4952056c6ccd5872410fc6a8b55d46244d57f27cfbb8b",
    ),
    "mmlu": Source(
        name="mmlu", kind="mcq",
        description="1,000 MMLU questions (all subjects, no subject labels) with answer letters",
        version="3.0.1.post1", licence="MIT",
        origin="huggingface.co/datasets/cais/mmlu via openai/evals sandbagging",
        package=_EVALS, package_licence="MIT",
        member=f"{_EVALS_DATA}/sandbagging/samples-all-large.jsonl",
        sha256="ae8f5342c41efd39921ee0e16c19c3ac3ef09cd8cf367158b47c69592e8f8fac",
    ),
    "aime": Source(
        name="aime", kind="math",
        description="15 AIME problems with integer answers (leading zeros dropped)",
        version="3.0.1.post1", licence="MIT (evals; problems © MAA)",
        origin="openai/evals aime_evaluation",
        package=_EVALS, package_licence="MIT",
        member=f"{_EVALS_DATA}/aime_evaluation/samples.jsonl",
        sha256="d5a0247aac560e24a91937574ae6ad7bbaf132bd66112d881c2daf7d381d5589",
    ),
    "gsm_symbolic": Source(
        name="gsm_symbolic", kind="math",
        description="GSM-Symbolic problems generated from 100 GSM8K templates "
                    "(deterministic for a seed)",
        version="0.1.25", licence="Apache-2.0",
        origin="reasoning_gym.create_dataset('gsm_symbolic')",
        package="reasoning-gym==0.1.25", package_licence="Apache-2.0", default_size=1000,
    ),
    **{f"addition_{d}digit": Source(
        name=f"addition_{d}digit", kind="math",
        description=f"'Calculate a + b.' with 0 <= a, b <= {10 ** d} (reasoning-gym's "
                    f"max_digits={d} draws up to 10^{d} inclusive; deterministic for a seed; an "
                    "easy task that gives a small model a reward signal)",
        version="0.1.25", licence="Apache-2.0",
        origin="reasoning_gym.create_dataset('basic_arithmetic', 2 terms, '+')",
        package="reasoning-gym==0.1.25", package_licence="Apache-2.0", default_size=1000,
    ) for d in (1, 2)},
    "facts": Source(
        name="facts", kind="fact",
        description="Curated country facts for cloze recall: capital, currency, official "
                    "language (split= picks relations)",
        version="1", licence="LGPL-2.1-only (pycountry / iso-codes data) + MIT (countryinfo)",
        origin="pycountry==26.2.16 + countryinfo==1.0.1, curated overrides "
               "(python -m pipeline.data.build_facts)",
        files=tuple(FACT_RELATIONS.values()),
    ),
}


def default_cache_dir() -> Path:
    """``$PIPELINE_DATA_CACHE`` or ``~/.cache/reasoning-inside``."""
    env = os.environ.get("PIPELINE_DATA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "reasoning-inside"


def describe_sources() -> list[dict[str, Any]]:
    """One row per source (name, kind, package, member, sha256, licence, …)."""
    return [
        {"name": s.name, "kind": s.kind, "version": s.version, "package": s.package,
         "member": s.member or (", ".join(s.files) or None), "sha256": s.sha256,
         "licence": s.licence, "package_licence": s.package_licence,
         "description": s.description}
        for s in SOURCES.values()
    ]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _get(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


# --- parsers of the registry members ---------------------------------------------------------

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


_PARSERS: dict[str, Callable[[Path, str], list[dict[str, Any]]]] = {
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


def _normalize(src: Source, rows: Iterable[Mapping[str, Any]], where: str,
               columns: Mapping[str, str] | None, limit: int | None) -> list[dict[str, Any]]:
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


# --- loading through datasets ---------------------------------------------------------------

@contextmanager
def _quiet() -> Iterator[None]:
    """No ``datasets`` progress bars for small internal reads and writes."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def _load_file(path: Path, cache: Path):
    """A local json/jsonl/parquet file as a ``datasets.Dataset``."""
    import datasets

    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
    if builder is None:
        raise DataError(f"unsupported data file type {suffix!r} (want .json/.jsonl/.parquet): "
                        f"{path}")
    try:
        with _quiet():
            return datasets.load_dataset(builder, data_files=str(path), split="train",
                                         cache_dir=str(cache / "datasets"))
    except Exception as exc:  # noqa: BLE001 - any reader failure means a corrupt file
        raise DataError(f"cannot read data file {path}: {_one_line(exc)}") from exc


def _load_hub(hub_id: str, config: str | None, split: str | None, revision: str | None,
              cache: Path):
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, config, split=split or "train", revision=revision,
                                   cache_dir=str(cache / "datasets"))
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, missing split, auth, ...
        raise DataError(
            f"cannot load hub dataset {hub_id!r} (config={config!r}, split={split or 'train'!r}"
            f", revision={revision!r}): {_one_line(exc)}; offline? use the registry default "
            "or path=<local .jsonl/.parquet>"
        ) from exc
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"hub dataset {hub_id!r}: split={split!r} did not give one split")
    return ds


def _write_parquet(records: list[dict[str, Any]], target: Path) -> None:
    """Write records atomically (never a half-written cache file)."""
    import datasets

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with _quiet():
            datasets.Dataset.from_list(records).to_parquet(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600: others sharing the cache must read it
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cached(target: Path, build: Callable[[], list[dict[str, Any]]], cache: Path,
            what: str) -> list[dict[str, Any]]:
    """Records from the parquet cache ``target``, (re)built with ``build`` when missing or
    unreadable."""
    if target.is_file():
        try:
            return _load_file(target, cache).to_list()
        except DataError:
            target.unlink(missing_ok=True)  # corrupt cache: rebuild below
    records = build()
    if not records:
        raise DataError(f"{what}: no records")
    _write_parquet(records, target)
    return _load_file(target, cache).to_list()


def _fetch_member(src: Source, cache: Path) -> Path:
    from pipeline.models.gguf import fetch_registry_file
    from pipeline.models.provision import ProvisionError

    assert src.package and src.member
    try:
        return fetch_registry_file(src.package, src.member, cache_dir=cache, sha256=src.sha256)
    except (ProvisionError, ValueError) as exc:
        raise DataError(f"data source {src.name}: cannot get {src.member} from {src.package}: "
                        f"{' '.join(str(exc).split())[:400]}") from exc


def _load_registry(src: Source, cache: Path) -> list[dict[str, Any]]:
    assert src.sha256
    target = cache / "parquet" / f"{src.name}-{src.sha256[:16]}-p{PARSER_VERSION}.parquet"

    def build() -> list[dict[str, Any]]:
        return _PARSERS[src.name](_fetch_member(src, cache), src.name)

    return _cached(target, build, cache, f"data source {src.name}")


def _load_generated(src: Source, cache: Path, size: int, seed: int) -> list[dict[str, Any]]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = version("reasoning-gym")
    except PackageNotFoundError:
        have = "missing"
    if have != src.version:
        warnings.warn(f"{src.name} is pinned to reasoning-gym=={src.version}, found {have}: "
                      "problems for a seed may differ", stacklevel=3)
    target = cache / "parquet" / f"{src.name}-rg{have}-seed{seed}-n{size}-p{PARSER_VERSION}" \
                                 ".parquet"
    return _cached(target, lambda: generate_reasoning_gym(src.name, size, seed), cache,
                   f"data source {src.name}")


def _load_facts(src: Source, cache: Path, split: str | None) -> list[dict[str, Any]]:
    aliases = {**{r: r for r in FACT_RELATIONS}, "capitals": "capital",
               "currencies": "currency", "languages": "language"}
    asked = [s.strip().lower() for s in (split or "").split(",") if s.strip()]
    wanted = [aliases.get(w, w) for w in asked]
    unknown = [w for w in wanted if w not in FACT_RELATIONS]
    if unknown:
        raise ValueError(f"unknown fact relation(s) {unknown}; known: "
                         f"{', '.join(FACT_RELATIONS)}")
    rows: list[dict[str, Any]] = []
    for relation in wanted or list(FACT_RELATIONS):
        path = FILES_DIR / FACT_RELATIONS[relation]
        rows += _normalize(src, _load_file(path, cache), str(path), None, None)
    return rows


def load_source(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
    hub_id: str | None = None,
    config: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Load source ``name`` (a key of :data:`SOURCES`) as records of its kind (see module doc).

    Default: the registry package / generator / shipped files. ``path``: a local
    .json/.jsonl/.parquet file in the common format (``columns`` maps a common field to a
    file column, e.g. ``{"text": "content"}``; missing ids become ``<name>/<row>``).
    ``hub_id``: ``datasets.load_dataset(hub_id, config, split=split or "train",
    revision=revision)`` (e.g. ``wikitext`` + ``wikitext-103-raw-v1``, ``cais/mmlu`` + ``all``
    split ``test``). ``limit`` keeps the first records (for generated sources it is the number
    generated, default 1,000; ``seed`` seeds it). For ``facts``, ``split`` picks relations
    ("capital,currency"). Unknown name → ValueError; anything else → one-line DataError.
    """
    src = _get(name)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if path is not None and hub_id is not None:
        raise ValueError("give either path or hub_id, not both")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    if path is not None:
        where = os.fspath(path)
        return _normalize(src, _load_file(Path(where), cache), where, columns, limit)
    if hub_id is not None:
        ds = _load_hub(hub_id, config, split, revision, cache)
        return _normalize(src, ds, f"hub dataset {hub_id}", columns, limit)

    if src.kind == "fact":
        rows = _load_facts(src, cache, split)
    elif src.name in RG_GENERATED:
        size = src.default_size if limit is None else limit
        rows = _load_generated(src, cache, int(size or 0), seed) if size else []
    else:
        rows = _load_registry(src, cache)
    return rows if limit is None else rows[:limit]
