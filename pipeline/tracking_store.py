"""The MLflow store of :mod:`pipeline.tracking`: the tracking URI (SQLite in
``results_dir`` by default; the file store refused), the database created once under a file
lock, one ``MlflowClient`` per URI and process, the experiment got or created."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Must be set before mlflow is imported anywhere in this process (telemetry is configured at
# import time) and are inherited by the jobs Snakemake spawns.
os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

if TYPE_CHECKING:
    from mlflow import MlflowClient

ARTIFACT_DIRNAME = "mlartifacts"

_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


def resolve_tracking_uri(uri: str | None, results_dir: str) -> str:
    """Pick the tracking URI: explicit ``uri`` > ``$MLFLOW_TRACKING_URI`` > SQLite in results_dir.

    SQLite paths are made absolute (jobs may run in another working directory); a bare path
    ending in .db/.sqlite becomes a SQLite URI. The file store is refused.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if not chosen:
        return _sqlite_uri(Path(results_dir) / "mlflow.db")
    if chosen.startswith("sqlite:///"):
        return _sqlite_uri(Path(_sqlite_path(chosen)))
    if "://" not in chosen:
        if Path(chosen).suffix in {".db", ".sqlite", ".sqlite3"}:
            return _sqlite_uri(Path(chosen))
        raise ValueError(f"tracking URI {chosen!r} is a file store; use sqlite:///.../mlflow.db")
    if chosen.startswith("file:"):
        raise ValueError(f"tracking URI {chosen!r} is a file store; use sqlite:///.../mlflow.db")
    return chosen


def init_store(uri: str, experiment_name: str) -> str:
    """Create the database (once, under a file lock) and get-or-create the experiment; return id.

    Idempotent. New experiments keep artifacts in ``<db dir>/mlartifacts`` (no server needed).
    """
    if db := _sqlite_db(uri):
        db.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _experiment_id(_client(uri), experiment_name, uri)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy / MLflow errors become one line
        with _clients_lock:
            _clients.pop(uri, None)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        where = f"SQLite file {db}" if db else uri
        raise ValueError(f"MLflow store {where} cannot be opened ({type(exc).__name__}: "
                         f"{first}); move it aside or set mlflow.tracking_uri") from None


def _sqlite_path(uri: str) -> str:
    return uri[len("sqlite:///") :].split("?", 1)[0]


def _sqlite_uri(path: Path) -> str:
    return "sqlite:///" + str(path.expanduser().resolve())


def _sqlite_db(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = _sqlite_path(uri)
    return None if path in ("", ":memory:") else Path(path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (no-op where fcntl is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client(uri: str) -> MlflowClient:
    """Client bound to ``uri``; the first one per process creates/migrates SQLite under a lock."""
    with _clients_lock:
        if uri in _clients:
            return _clients[uri]
        from mlflow import MlflowClient

        _quiet_mlflow()
        db = _sqlite_db(uri)
        if db is None:
            client = MlflowClient(tracking_uri=uri)
        else:
            # Concurrent first-time creation corrupts SQLite (both run the migrations).
            with _file_lock(db.parent / f".{db.name}.lock"):
                client = MlflowClient(tracking_uri=uri)  # builds the store: creates tables
        _clients[uri] = client
        return client


def _quiet_mlflow() -> None:
    """Turn off telemetry even if mlflow was imported before this module."""
    import mlflow.telemetry

    if mlflow.telemetry.get_telemetry_client() is not None:
        mlflow.telemetry.set_telemetry_client()  # re-reads MLFLOW_DISABLE_TELEMETRY


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    db = _sqlite_db(uri)
    location = (db.parent / ARTIFACT_DIRNAME).as_uri() if db else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
