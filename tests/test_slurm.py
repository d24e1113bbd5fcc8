"""A real Slurm: a single-node cluster from Debian packages (tests/slurm/setup_slurm.sh)
runs the smoke DAG through the Snakemake Slurm executor plugin (profiles/slurm-local).
Every job must have been a Slurm job, the outputs complete, and the MLflow runs — logged
through an `mlflow server`, as on a cluster — nested and FINISHED.

Needs root (the daemons run as root); installs slurm-wlm and munge with apt-get when
they are missing. Skipped, with the reason, where neither is possible. The fixtures stop
exactly the daemons they started."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "tests" / "slurm" / "setup_slurm.sh"
SLURM_COMMANDS = ("sbatch", "squeue", "sinfo", "scontrol", "slurmctld", "slurmd", "munged",
                  "mungekey")


def _env() -> dict[str, str]:
    """This environment with the test's Python first on PATH (jobs run `python -m …`)."""
    return {**os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    """Start a single-node Slurm (installing it first if needed); yield its slurm.conf."""
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if os.geteuid() != 0:
        pytest.skip("a single-node Slurm needs root (slurmd runs the jobs as their user)")
    if missing:
        if shutil.which("apt-get") is None:
            pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing) and there "
                        "is no apt-get to install slurm-wlm and munge")
        res = subprocess.run(["bash", str(SETUP), "install"], capture_output=True, text=True,
                             timeout=900)
        assert res.returncode == 0, f"installing slurm-wlm munge failed:\n{res.stderr[-3000:]}"
    pytest.importorskip("snakemake_executor_plugin_slurm",
                        reason="pip install -e '.[test]' (snakemake-executor-plugin-slurm)")
    cluster = tmp_path_factory.mktemp("slurm")
    try:
        res = subprocess.run(["bash", str(SETUP), "start", str(cluster)], capture_output=True,
                             text=True, timeout=300)
        if res.returncode == 3:  # /etc/slurm/slurm.conf is someone else's
            pytest.skip(res.stderr.strip().splitlines()[-1])
        assert res.returncode == 0, f"the test Slurm did not start:\n{res.stderr[-4000:]}"
        yield cluster / "slurm.conf"
    finally:
        subprocess.run(["bash", str(SETUP), "stop", str(cluster)], timeout=300)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An MLflow tracking server (SQLite behind it, proxied artifacts); yield its URI."""
    store = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(store / "server.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start:\n"
                            + (store / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        # the server and its workers: the process group this fixture created
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


def _snakemake(workdir: Path, env: dict[str, str], *args: str,
               timeout: int = 1500) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir),
           "--workflow-profile", str(ROOT / "profiles" / "slurm-local"),
           "--configfile", str(ROOT / "config" / "smoke.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_run(slurm_conf, mlflow_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke-slurm")
    # as on a cluster: the Slurm commands find /etc/slurm/slurm.conf, MLflow is a server
    env = {**_env(), "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("SLURM_CONF", None)
    # the jobs the DAG has (rule -> count), from a dry run; `all` runs in Snakemake itself
    dry = _snakemake(workdir, env, "-n", timeout=300)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    stats = dry.stdout[dry.stdout.index("Job stats:"):].split("\n\n")[0]
    jobs = {rule: int(n) for rule, n in re.findall(r"(?m)^(\w+)\s+(\d+)$", stats)
            if rule not in ("all", "total")}
    assert {"countdown_data", "provision", "train", "evaluate"} <= set(jobs)
    t0 = time.monotonic()
    res = _snakemake(workdir, env)
    wall = time.monotonic() - t0
    out = res.stdout + res.stderr
    (workdir / "snakemake.out").write_text(out)
    assert res.returncode == 0, out[-6000:]
    print(f"smoke DAG on Slurm: {sum(jobs.values())} jobs in {wall:.0f} s")
    return workdir, env, out, jobs


def _jobcomp(slurm_conf: Path) -> list[dict[str, str]]:
    """The finished jobs slurmctld wrote with jobcomp/filetxt (one `Key=Value ...` line each)."""
    path = slurm_conf.parent / "log" / "jobcomp.log"
    return [dict(re.findall(r"(\w+)=(\S*)", line))
            for line in path.read_text().splitlines() if line.strip()]


def test_every_job_ran_as_a_slurm_job(slurm_run, slurm_conf, mlflow_server):
    from mlflow import MlflowClient

    workdir, _, out, jobs = slurm_run
    submitted = set(re.findall(r"SLURM jobid (\d+)", out))
    completed = {j["JobId"]: j for j in _jobcomp(slurm_conf)}
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("reasoning-inside-smoke")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("pipeline.kind") == "job"]
    # `use rule depth as depth_builtin`: its jobs are tagged with the rule name "depth"
    expected = Counter()
    for rule, n in jobs.items():
        expected["depth" if rule == "depth_builtin" else rule] += n
    assert Counter(r.data.tags["rule"] for r in children) == expected
    job_ids = [r.data.tags.get("slurm_job_id") for r in children]
    assert all(job_ids), [r.info.run_name for r in children if not r.data.tags.get("slurm_job_id")]
    assert len(set(job_ids)) == sum(jobs.values())  # one Slurm job per DAG job
    assert set(job_ids) <= set(completed), (job_ids, sorted(completed))
    assert all(completed[j]["JobState"] == "COMPLETED" for j in job_ids)
    if submitted:  # the plugin's log line, where this Snakemake version prints it
        assert set(job_ids) <= submitted
    # the config's resources reached sbatch (smoke.yaml: 1 CPU, 2 for provision; 2000 MB)
    for r in children:
        job = completed[r.data.tags["slurm_job_id"]]
        assert job["ProcCnt"] == ("2" if r.data.tags["rule"] == "provision" else "1"), job
        assert "mem=2000M" in job["Tres"], job


def test_outputs_complete(slurm_run):
    workdir, env, _, _ = slurm_run
    root = workdir / "results" / "smoke"
    table = pd.read_csv(root / "summary" / "evaluation.csv")
    assert sorted(table["model"]) == ["llama-smoke", "qwen3-smoke", "qwen3-smoke+bupo",
                                      "qwen3-smoke+grpo"]
    assert (root / "rl" / "qwen3-smoke" / "grpo" / "seed0" / "model" / "model.safetensors").exists()
    for model in ("llama-smoke", "qwen3-smoke"):
        for path in (f"decomposition/{model}/boundary.json", f"attention/{model}/summary.json",
                     f"depth/{model}/summary.json", f"eval/{model}/countdown/seed0/summary.json"):
            json.loads((root / path).read_text())
    # every target of the DAG exists and is up to date
    res = _snakemake(workdir, env, "-n", timeout=300)
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr


def test_mlflow_runs_complete(slurm_run, mlflow_server):
    from mlflow import MlflowClient

    jobs = slurm_run[3]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("reasoning-inside-smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pipeline.kind") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1 == sum(jobs.values())
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags["config_hash"] == parents[0].data.tags["config_hash"] for r in children)
    train = [r for r in children if r.data.tags["rule"] == "train"]
    assert all(len(client.get_metric_history(r.info.run_id, "reward_mean")) == 3 for r in train)
    # artifacts went through the server (proxied), not to a path on the submitting host
    report = next(r for r in children if r.data.tags["rule"] == "report_summary")
    assert "figures/evaluation.png" in {a.path for a in client.list_artifacts(report.info.run_id,
                                                                               "figures")}
