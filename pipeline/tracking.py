"""MLflow tracking: one SQLite store, one parent run per invocation, one child run per job.

With :mod:`pipeline.tracking_store` (the store), the only code of the project that talks
to MLflow. Every call goes through an ``MlflowClient`` bound to an explicit tracking URI
(no fluent/global state), so several runs can be open in one process. ``mlflow`` is
imported lazily: disabled tracking (``job_run(None)``) costs nothing.

Snakefile usage::

    onstart:  init_store(uri, exp); start_parent_run(uri, exp, config=config, command=argv)
    onsuccess: end_parent_run("FINISHED")
    onerror:   end_parent_run("FAILED")

and in a job: ``with job_run(params.mlflow) as run: run.metrics({...})``.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import posixpath
import re
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# the store (and the MLflow environment settings, made on import) is its own module
from pipeline.tracking_store import (  # noqa: F401  (public names, importable from here)
    ARTIFACT_DIRNAME,
    _client,
    _experiment_id,
    init_store,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = [
    "PARENT_RUN_ENV",
    "TRACKING_URI_ENV",
    "WEIGHT_SUFFIXES",
    "JobRun",
    "config_hash",
    "end_parent_run",
    "flatten",
    "init_store",
    "job_run",
    "resolve_tracking_uri",
    "start_parent_run",
]

PARENT_RUN_ENV = "PIPELINE_MLFLOW_PARENT_RUN_ID"
TRACKING_URI_ENV = "PIPELINE_MLFLOW_TRACKING_URI"
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".gguf"})

# MLflow limits (mlflow.utils.validation).
_MAX_PARAM_VAL = 6000
_MAX_TAG_VAL = 8000
_MAX_KEY = 250
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_PARENT_TAG = "mlflow.parentRunId"  # what fluent start_run(nested=True) sets; the UI nests on it
_BAD_KEY_CHARS = re.compile(r"[^\w.\- :/]")

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def config_hash(config: Mapping[str, Any]) -> str:
    """First 12 hex chars of the sha256 of the canonical JSON (sorted keys) of ``config``."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys; sequences become compact JSON strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        elif isinstance(v, Mapping | list | tuple):
            out[key] = json.dumps(v, default=str, separators=(",", ":"))
        else:
            out[key] = v
    return out


def _key(key: str) -> str:
    """Make ``key`` a valid MLflow param/metric/tag name (charset, path-normal, <=250 chars)."""
    k = _BAD_KEY_CHARS.sub("_", str(key)) or "_"
    if posixpath.normpath(k) != k or k.startswith(("/", "..")) or k == ".":
        k = "_" + k.replace("/", "_")
    if len(k) > _MAX_KEY:
        k = k[: _MAX_KEY - 9] + "-" + hashlib.sha256(k.encode()).hexdigest()[:8]
    return k


def _truncate(value: Any, limit: int) -> str:
    s = value if isinstance(value, str) else str(value)
    if len(s) <= limit:
        return s
    marker = f"...[truncated {len(s)} chars]"
    return s[: limit - len(marker)] + marker


def _check_not_weights(path: Path) -> None:
    """Raise ValueError if ``path`` (or any file below it) looks like model weights."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for f in files:
        if f.suffix.lower() in WEIGHT_SUFFIXES:
            raise ValueError(f"refusing to log model weights to MLflow: {f}")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _common_tags() -> dict[str, str]:
    tags = {"host": socket.gethostname(), "pid": str(os.getpid())}
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    return tags


# --------------------------------------------------------------------------- runs


class JobRun:
    """Logging handle for one MLflow run; every method is a no-op when ``run_id`` is None."""

    def __init__(self, client: MlflowClient | None = None, run_id: str | None = None,
                 parent_id: str | None = None) -> None:
        self._client = client
        self.run_id = run_id
        self.parent_id = parent_id

    def parent(self) -> JobRun:
        """A handle on the DAG's parent run (a no-op one when there is none)."""
        return JobRun(self._client, self.parent_id)

    @property
    def enabled(self) -> bool:
        return self._client is not None and self.run_id is not None

    def tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values truncated to 8000 chars)."""
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        items = [RunTag(_key(k), _truncate(v, _MAX_TAG_VAL)) for k, v in tags.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=items[i : i + _MAX_PARAMS_PER_BATCH])

    def params(self, params: Mapping[str, Any]) -> None:
        """Log params: nested dicts flattened to dotted keys, values truncated to 6000 chars."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        flat = {_key(k): _truncate(v, _MAX_PARAM_VAL) for k, v in flatten(params).items()}
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])

    def metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log scalar metrics (nested dicts flattened) at ``step`` (default 0)."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), ts, int(step or 0)) for k, v in flatten(metrics).items()]
        self._log_metrics(items)

    def metric_series(
        self, name: str, values: Iterable[Any], steps: Iterable[int] | None = None
    ) -> None:
        """Log a whole series of one metric in batches; steps default to 0..n-1."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        vals = [float(v) for v in values]
        stp = list(range(len(vals))) if steps is None else [int(s) for s in steps]
        if len(stp) != len(vals):
            raise ValueError(f"metric_series {name!r}: {len(vals)} values but {len(stp)} steps")
        ts, key = int(time.time() * 1000), _key(name)
        self._log_metrics([Metric(key, v, ts, s) for v, s in zip(vals, stp, strict=True)])

    def _log_metrics(self, items: list[Any]) -> None:
        for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=items[i : i + _MAX_METRICS_PER_BATCH])

    def artifact(self, path: str | os.PathLike[str], subdir: str | None = None) -> None:
        """Log one file (or a directory's contents) under ``subdir``; weights are refused."""
        if not self.enabled:
            return
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(p)
        _check_not_weights(p)
        if p.is_dir():
            self._client.log_artifacts(self.run_id, str(p), subdir)
        else:
            self._client.log_artifact(self.run_id, str(p), subdir)

    def artifacts(self, directory: str | os.PathLike[str], subdir: str | None = None) -> None:
        """Log a directory tree under ``subdir``; refused if it holds any weight file."""
        if not self.enabled:
            return
        p = Path(directory)
        if not p.is_dir():
            raise NotADirectoryError(p)
        _check_not_weights(p)
        self._client.log_artifacts(self.run_id, str(p), subdir)

    def figure(self, fig: Any, name: str, subdir: str = "figures") -> None:
        """Save a matplotlib figure (PNG unless ``name`` has a suffix) and log it."""
        if not self.enabled:
            return
        fname = name if Path(name).suffix else f"{name}.png"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / Path(fname).name
            _check_not_weights(out)
            fig.savefig(out, dpi=150, bbox_inches="tight")
            self._client.log_artifact(self.run_id, str(out), subdir)

    def table(self, df: Any, name: str, subdir: str = "tables") -> None:
        """Write a DataFrame as parquet (default) or CSV (``name`` ending .csv) and log it."""
        if not self.enabled:
            return
        suffix = Path(name).suffix.lower()
        fname = name if suffix in (".csv", ".parquet") else f"{name}.parquet"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / Path(fname).name
            if out.suffix == ".csv":
                df.to_csv(out, index=False)
            else:
                df.to_parquet(out, index=False)
            self._client.log_artifact(self.run_id, str(out), subdir)


def start_parent_run(
    uri: str,
    experiment_name: str,
    *,
    config: Mapping[str, Any],
    run_name: str | None = None,
    command: Sequence[str] | str | None = None,
) -> str:
    """Create the parent run of one pipeline invocation and export its id to the environment.

    Logs the flattened config as params and the full config as ``config.json``. The run is
    left RUNNING (not fluent-active) until :func:`end_parent_run`. Sets ``$PIPELINE_MLFLOW_
    PARENT_RUN_ID`` and ``$PIPELINE_MLFLOW_TRACKING_URI`` so spawned jobs inherit them.
    """
    client = _client(uri)
    exp_id = _experiment_id(client, experiment_name, uri)
    end_stale_runs(client, exp_id)
    chash = config_hash(config)
    tags = {**_common_tags(), "pipeline.kind": "parent", "config_hash": chash}
    if command is not None:
        cmd = command if isinstance(command, str) else shlex.join(str(c) for c in command)
        tags["snakemake.command"] = _truncate(cmd, _MAX_TAG_VAL)
    if commit := _git_commit():
        tags["mlflow.source.git.commit"] = commit
    run = client.create_run(exp_id, tags=tags, run_name=run_name or f"pipeline-{chash}")
    handle = JobRun(client, run.info.run_id)
    try:
        handle.params(config)
        client.log_text(
            run.info.run_id,
            json.dumps(config, indent=2, sort_keys=True, default=str),
            "config.json",
        )
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    os.environ[PARENT_RUN_ENV] = run.info.run_id
    os.environ[TRACKING_URI_ENV] = uri
    return run.info.run_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def end_stale_runs(client: MlflowClient, exp_id: str) -> list[str]:
    """End as KILLED the RUNNING runs of this experiment that were started on this host by
    a process that no longer exists (a killed ``snakemake`` or job leaves its run RUNNING
    forever); returns their ids. Runs of other hosts are left alone: their processes
    cannot be checked from here."""
    host = socket.gethostname()
    stale = []
    runs = client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'",
                              max_results=5000)
    for run in runs:
        tags = run.data.tags
        pid = tags.get("pid", "")
        if tags.get("host") != host or (pid.isdigit() and _alive(int(pid))):
            continue
        client.set_tag(run.info.run_id, "ended_by", "a later pipeline start: its process "
                       "is gone")
        client.set_terminated(run.info.run_id, "KILLED")
        stale.append(run.info.run_id)
    if stale:
        _log.warning("ended %d stale RUNNING MLflow run(s) as KILLED", len(stale))
    return stale


def end_parent_run(status: str = "FINISHED", uri: str | None = None) -> None:
    """Terminate the parent run named by ``$PIPELINE_MLFLOW_PARENT_RUN_ID``; no-op when unset."""
    run_id = os.environ.get(PARENT_RUN_ENV)
    uri = uri or os.environ.get(TRACKING_URI_ENV)
    if not run_id or not uri:
        return
    status = status.upper()
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"bad run status {status!r}")
    _client(uri).set_terminated(run_id, status)
    os.environ.pop(PARENT_RUN_ENV, None)


def _run_name(rule: str, wildcards: Mapping[str, Any]) -> str:
    if not wildcards:
        return rule
    return f"{rule}[{','.join(f'{k}={v}' for k, v in wildcards.items())}]"


@contextlib.contextmanager
def job_run(job: Mapping[str, Any] | None) -> Iterator[JobRun]:
    """Child run for one Snakemake job; nested under the env parent run when there is one.

    ``job`` = {"rule", "wildcards", "tracking_uri", "experiment", "config_hash"}. With no job
    or no tracking_uri, yields a no-op :class:`JobRun`. Ends FINISHED, or FAILED (KILLED on
    KeyboardInterrupt) when the body raises; the exception propagates.
    """
    if not job or not job.get("tracking_uri"):
        yield JobRun()
        return
    uri = str(job["tracking_uri"])
    rule = str(job.get("rule") or "job")
    wildcards = {str(k): str(v) for k, v in dict(job.get("wildcards") or {}).items()}
    client = _client(uri)
    exp_id = _experiment_id(client, str(job.get("experiment") or "pipeline"), uri)

    tags: dict[str, str] = {
        **_common_tags(),
        "pipeline.kind": "job",
        "rule": rule,
        "wildcards": json.dumps(wildcards, sort_keys=True),
        **{_key(f"wc.{k}"): _truncate(v, _MAX_TAG_VAL) for k, v in wildcards.items()},
    }
    if job.get("config_hash"):
        tags["config_hash"] = str(job["config_hash"])
    if slurm := os.environ.get("SLURM_JOB_ID"):
        tags["slurm_job_id"] = slurm
    if parent := _parent_run_id(client, exp_id):
        tags[_PARENT_TAG] = parent

    run = client.create_run(exp_id, tags=tags, run_name=_run_name(rule, wildcards))
    run_id = run.info.run_id
    try:
        yield JobRun(client, run_id, parent_id=tags.get(_PARENT_TAG))
    except BaseException as exc:
        ok_exit = isinstance(exc, SystemExit) and exc.code in (0, None)
        status = "FAILED"
        if ok_exit:
            status = "FINISHED"
        elif isinstance(exc, KeyboardInterrupt):
            status = "KILLED"
        try:
            if not ok_exit:
                client.set_tag(run_id, "error", _truncate(f"{type(exc).__name__}: {exc}", 8000))
            client.set_terminated(run_id, status)
        except Exception:  # never mask the job's own exception
            _log.warning("could not mark MLflow run %s as %s", run_id, status, exc_info=True)
        raise
    client.set_terminated(run_id, "FINISHED")


def _parent_run_id(client: MlflowClient, exp_id: str) -> str | None:
    """The env parent run id if it exists in this store (else warn and return None)."""
    from mlflow.exceptions import MlflowException

    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent:
        return None
    try:
        prun = client.get_run(parent)
    except MlflowException:
        _log.warning("parent run %s not found in this tracking store; not nesting", parent)
        return None
    if prun.info.experiment_id != exp_id:
        _log.warning("parent run %s is in another experiment; the UI will not nest", parent)
    return parent
