"""Tests for pipeline.tracking against throwaway SQLite stores (one shared per module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import tracking as T

mlflow = pytest.importorskip("mlflow")
EXP = "test-exp"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One SQLite DB for the module: creating it runs the alembic migrations (~1-3 s)."""
    results = tmp_path_factory.mktemp("results")
    uri = T.resolve_tracking_uri(None, str(results))
    t0 = time.perf_counter()
    exp_id = T.init_store(uri, EXP)
    created_s = time.perf_counter() - t0
    return {"uri": uri, "exp_id": exp_id, "dir": results, "created_s": created_s}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset tracking env vars; setenv first so teardown removes what the code under test sets."""
    for var in (T.PARENT_RUN_ENV, T.TRACKING_URI_ENV, "MLFLOW_TRACKING_URI", "SLURM_JOB_ID"):
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)


def client(store: dict) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=store["uri"])


def job(store: dict, rule: str = "train", **wildcards: object) -> dict:
    return {
        "rule": rule,
        "wildcards": wildcards,
        "tracking_uri": store["uri"],
        "experiment": EXP,
        "config_hash": "abc123def456",
    }


def artifact_paths(c: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """All artifact file paths of a run (recursive)."""
    out: set[str] = set()
    for f in c.list_artifacts(run_id, path):
        out |= artifact_paths(c, run_id, f.path) if f.is_dir else {f.path}
    return out


# --------------------------------------------------------------------------- store


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert T.resolve_tracking_uri(None, "res") == f"sqlite:///{tmp_path}/res/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert T.resolve_tracking_uri(None, "res") == f"sqlite:///{tmp_path}/env.db"
    assert T.resolve_tracking_uri("sqlite:////abs/x.db", "res") == "sqlite:////abs/x.db"
    assert T.resolve_tracking_uri("http://host:5000", "res") == "http://host:5000"
    assert T.resolve_tracking_uri("sub/m.db", "res") == f"sqlite:///{tmp_path}/sub/m.db"
    with pytest.raises(ValueError, match="file store"):
        T.resolve_tracking_uri("./mlruns", "res")


def test_init_store_twice(store: dict) -> None:
    t0 = time.perf_counter()
    assert T.init_store(store["uri"], EXP) == store["exp_id"]
    again_s = time.perf_counter() - t0
    print(f"DB creation {store['created_s']:.2f}s, second init_store {again_s * 1000:.1f}ms")
    assert again_s < 1.0
    assert (store["dir"] / "mlflow.db").is_file()
    exp = client(store).get_experiment(store["exp_id"])
    assert exp.artifact_location == (store["dir"] / "mlartifacts").as_uri()
    assert T.init_store(store["uri"], "other-exp") != store["exp_id"]


def test_config_hash_stable() -> None:
    a = {"models": {"m": {"h": 64, "l": 2}}, "seeds": [0, 1]}
    b = {"seeds": [0, 1], "models": {"m": {"l": 2, "h": 64}}}
    assert T.config_hash(a) == T.config_hash(b)
    assert len(T.config_hash(a)) == 12
    assert T.config_hash(a) != T.config_hash({**a, "seeds": [1, 0]})


# --------------------------------------------------------------------------- runs


def test_parent_and_children_nested(store: dict) -> None:
    c = client(store)
    cfg = {"models": {"qwen3-tiny": {"hidden_size": 64}}, "seeds": [0, 1]}
    pid = T.start_parent_run(store["uri"], EXP, config=cfg, command=["snakemake", "-j", "2"])
    assert os.environ[T.PARENT_RUN_ENV] == pid
    with T.job_run(job(store, model="qwen3-tiny", seed=0)) as r0:
        r0.metrics({"acc": 0.5})
    with T.job_run(job(store, "evaluate", model="qwen3-tiny", seed=1)) as r1:
        pass
    T.end_parent_run("FINISHED")
    assert T.PARENT_RUN_ENV not in os.environ

    parent = c.get_run(pid)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["pipeline.kind"] == "parent"
    assert parent.data.tags["config_hash"] == T.config_hash(cfg)
    assert parent.data.tags["snakemake.command"] == "snakemake -j 2"
    assert parent.data.params["models.qwen3-tiny.hidden_size"] == "64"
    assert parent.data.params["seeds"] == "[0,1]"
    assert "config.json" in artifact_paths(c, pid)
    logged = json.loads(
        Path(c.download_artifacts(pid, "config.json", str(store["dir"]))).read_text()
    )
    assert logged == cfg

    kids = c.search_runs([store["exp_id"]], f"tags.mlflow.parentRunId = '{pid}'")
    assert {k.info.run_id for k in kids} == {r0.run_id, r1.run_id}
    run0 = c.get_run(r0.run_id)
    assert run0.info.run_name == "train[model=qwen3-tiny,seed=0]"
    assert run0.info.status == "FINISHED"
    tags = run0.data.tags
    assert tags["mlflow.parentRunId"] == pid
    assert tags["rule"] == "train"
    assert json.loads(tags["wildcards"]) == {"model": "qwen3-tiny", "seed": "0"}
    assert tags["wc.model"] == "qwen3-tiny" and tags["wc.seed"] == "0"
    assert tags["config_hash"] == "abc123def456"
    assert tags["host"]
    assert c.get_parent_run(r1.run_id).info.run_id == pid


def test_end_parent_run_noop_when_unset() -> None:
    T.end_parent_run("FAILED")  # nothing set: must not raise


def test_top_level_without_parent(store: dict) -> None:
    with T.job_run(job(store, "prepare")) as r:
        pass
    run = client(store).get_run(r.run_id)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.info.run_name == "prepare"


def test_unknown_parent_is_not_used(store: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(T.PARENT_RUN_ENV, "0" * 32)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with T.job_run(job(store, "prepare")) as r:
        pass
    tags = client(store).get_run(r.run_id).data.tags
    assert "mlflow.parentRunId" not in tags
    assert tags["slurm_job_id"] == "4242"


def test_logging_params_metrics_artifacts(store: dict, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "sub" / "b.csv").write_text("b")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    df = pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5]})

    with T.job_run(job(store, model="m", seed=3)) as r:
        r.params({"lr": 1e-3, "optim": {"betas": [0.9, 0.99]}})
        r.metrics({"acc": 0.25, "eval": {"gsm8k": 0.5}}, step=7)
        r.metric_series("loss", [1.0, 0.5, 0.25], steps=[10, 20, 30])
        r.metric_series("reward", range(2500))  # > one log_batch (1000 metrics)
        r.figure(fig, "curve")
        r.table(df, "losses")
        r.table(df, "losses.csv")
        r.artifact(tmp_path / "summary.json")
        r.artifacts(tmp_path / "d", subdir="extra")
    plt.close(fig)

    c = client(store)
    run = c.get_run(r.run_id)
    assert run.data.params == {"lr": "0.001", "optim.betas": "[0.9,0.99]"}
    assert run.data.metrics["acc"] == 0.25 and run.data.metrics["eval.gsm8k"] == 0.5
    assert [m.step for m in c.get_metric_history(r.run_id, "acc")] == [7]
    loss = c.get_metric_history(r.run_id, "loss")
    assert sorted((m.step, m.value) for m in loss) == [(10, 1.0), (20, 0.5), (30, 0.25)]
    assert len(c.get_metric_history(r.run_id, "reward")) == 2500
    assert artifact_paths(c, r.run_id) == {
        "figures/curve.png",
        "tables/losses.parquet",
        "tables/losses.csv",
        "summary.json",
        "extra/a.txt",
        "extra/sub/b.csv",
    }
    local = c.download_artifacts(r.run_id, "tables/losses.parquet", str(tmp_path))
    assert pd.read_parquet(local).equals(df)


def test_failing_job_ends_failed_and_reraises(store: dict) -> None:
    holder = {}
    with pytest.raises(RuntimeError, match="boom"), T.job_run(job(store, "train", seed=9)) as r:
        holder["id"] = r.run_id
        r.metrics({"partial": 1.0})
        raise RuntimeError("boom")
    run = client(store).get_run(holder["id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: boom"
    assert run.data.metrics["partial"] == 1.0


def test_interrupted_job_ends_killed(store: dict) -> None:
    holder = {}
    with pytest.raises(KeyboardInterrupt), T.job_run(job(store, "train", seed=8)) as r:
        holder["id"] = r.run_id
        raise KeyboardInterrupt
    assert client(store).get_run(holder["id"]).info.status == "KILLED"


@pytest.mark.parametrize("suffix", sorted(T.WEIGHT_SUFFIXES))
def test_weights_refused(store: dict, tmp_path: Path, suffix: str) -> None:
    weights = tmp_path / "ckpt" / f"model{suffix}"
    weights.parent.mkdir()
    weights.write_bytes(b"\0" * 8)
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with T.job_run(job(store, "train")) as r:
        with pytest.raises(ValueError, match=f"model{suffix}"):
            r.artifact(weights)
        with pytest.raises(ValueError, match=f"model{suffix}"):
            r.artifacts(weights.parent)
        with pytest.raises(ValueError, match=f"model{suffix}"):
            r.artifact(weights.parent)
    assert artifact_paths(client(store), r.run_id) == set()


def test_disabled_mode_is_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for spec in (None, {}, {"rule": "x", "tracking_uri": ""}, {"rule": "x", "tracking_uri": None}):
        with T.job_run(spec) as r:
            assert not r.enabled and r.run_id is None
            r.params({"a": 1})
            r.metrics({"m": 1.0}, step=1)
            r.metric_series("s", [1.0, 2.0], steps=[0])  # even a bad call is ignored
            r.artifact("does/not/exist.safetensors")
            r.artifacts("no/such/dir")
            r.figure(object(), "f")
            r.table(object(), "t")
            r.tags({"t": 1})
    assert list(tmp_path.iterdir()) == []


def test_disabled_mode_propagates_exceptions() -> None:
    with pytest.raises(KeyError), T.job_run(None):
        raise KeyError("k")


def test_long_and_odd_params(store: dict) -> None:
    params = {
        "long": "x" * 7000,
        "k" * 300: 1,  # key over 250 chars
        "weird key!(1)": "v",
        **{f"many.p{i}": i for i in range(150)},  # > one 100-param batch
    }
    with T.job_run(job(store, "train")) as r:
        r.params(params)
        r.params({"many.p0": 0})  # re-logging an identical value is fine
    got = client(store).get_run(r.run_id).data.params
    assert len(got) == 153
    assert len(got["long"]) <= 6000 and got["long"].endswith("[truncated 7000 chars]")
    assert got["weird key__1_"] == "v"
    assert any(len(k) == 250 and k.startswith("kkk") for k in got)


def test_two_runs_in_one_process_do_not_interfere(store: dict) -> None:
    with T.job_run(job(store, "a", seed=0)) as ra, T.job_run(job(store, "b", seed=1)) as rb:
        ra.metrics({"x": 1.0})
        rb.metrics({"x": 2.0})
    c = client(store)
    assert c.get_run(ra.run_id).data.metrics == {"x": 1.0}
    assert c.get_run(rb.run_id).data.metrics == {"x": 2.0}
    assert c.get_run(ra.run_id).info.status == c.get_run(rb.run_id).info.status == "FINISHED"


def test_child_run_timing(store: dict) -> None:
    t0 = time.perf_counter()
    with T.job_run(job(store, "t", seed=0)) as r:
        r.params({"a": 1})
        r.metrics({"m": 1.0})
    dt = time.perf_counter() - t0
    print(f"child run with one param and one metric: {dt * 1000:.0f}ms")
    assert dt < 2.0


@pytest.mark.slow
def test_concurrent_first_creation(tmp_path: Path) -> None:
    """Parallel jobs hitting a missing DB must not corrupt it (file lock around creation)."""
    uri = T.resolve_tracking_uri(None, str(tmp_path))
    code = (
        "import sys; from pipeline import tracking as T\n"
        "with T.job_run({'rule': 'r', 'wildcards': {'i': sys.argv[1]},"
        f" 'tracking_uri': {uri!r}, 'experiment': 'e'}}) as r: r.metrics({{'x': 1}})\n"
    )
    root = str(Path(T.__file__).parents[1])
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=root, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    errs = [p.communicate()[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    c = mlflow.MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("e")
    assert len(c.search_runs([exp.experiment_id])) == 2


def test_stale_running_runs_are_ended_on_the_next_start(store: dict) -> None:
    """Runs left RUNNING by a killed process of this host end as KILLED when the next
    pipeline starts; a live process's run and another host's run are left alone."""
    import socket

    c = client(store)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = socket.gethostname()
    dead = c.create_run(store["exp_id"], tags={"host": host, "pid": str(gone.pid)}).info.run_id
    live = c.create_run(store["exp_id"], tags={"host": host, "pid": str(os.getpid())}).info.run_id
    other = c.create_run(store["exp_id"], tags={"host": "elsewhere", "pid": "1"}).info.run_id
    pid = T.start_parent_run(store["uri"], EXP, config={"a": 1})
    assert c.get_run(dead).info.status == "KILLED"
    assert "process is gone" in c.get_run(dead).data.tags["ended_by"]
    assert c.get_run(live).info.status == "RUNNING"
    assert c.get_run(other).info.status == "RUNNING"
    assert c.get_run(pid).data.tags["pid"] == str(os.getpid())
    T.end_parent_run("FINISHED")
    for run_id in (live, other):
        c.set_terminated(run_id, "FINISHED")


def test_corrupt_store_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    uri = T.resolve_tracking_uri(str(db), str(tmp_path))
    with pytest.raises(ValueError, match="cannot be opened") as exc:
        T.init_store(uri, EXP)
    assert "\n" not in str(exc.value) and str(db) in str(exc.value)
