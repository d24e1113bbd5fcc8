"""Data sources (text, multiple choice, math, facts) loaded through ``datasets`` into one
record format per kind: the registry in :mod:`pipeline.data.sources`, the parsers in
:mod:`pipeline.data.parsers`, :func:`load_source` in :mod:`pipeline.data.loading`."""

from pipeline.data.loading import load_source
from pipeline.data.parsers import parse_mcq_prompt
from pipeline.data.sources import (
    FACT_RELATIONS,
    FIELDS,
    SOURCES,
    DataError,
    Source,
    default_cache_dir,
    describe_sources,
)

__all__ = [
    "DataError",
    "FACT_RELATIONS",
    "FIELDS",
    "SOURCES",
    "Source",
    "default_cache_dir",
    "describe_sources",
    "load_source",
    "parse_mcq_prompt",
]
