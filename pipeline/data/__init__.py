"""Data sources (text, multiple choice, math, facts) loaded through ``datasets`` into one
record format per kind; see :mod:`pipeline.data.sources`."""

from pipeline.data.sources import (
    FACT_RELATIONS,
    FIELDS,
    SOURCES,
    DataError,
    Source,
    default_cache_dir,
    describe_sources,
    load_source,
    parse_mcq_prompt,
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
