"""The FSDP2 benchmark (pipeline.bench.fsdp) and the GPU check (pipeline.bench.gpu_check).

Fast: the pure helpers (sizes, the fixed rollout and its per-process share, summaries and
tables, the synthetic tokenizer, OOM records, the memory planner's call contract). Slow:
``gpu_check --tiny`` on CPU in a subprocess (every part present with finite numbers, a
simulated out-of-memory case recorded and skipped over) and the 2-process fsdp2-vs-ddp
benchmark at its tiny size.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from pipeline.bench import BENCHMARKS, gpu_check
from pipeline.bench import fsdp as bench_fsdp

ROOT = Path(__file__).resolve().parents[1]


def _finite(*xs) -> bool:
    return all(isinstance(x, int | float) and math.isfinite(x) for x in xs)


# ----------------------------------------------------------------------------- fast
def test_registered():
    assert BENCHMARKS["fsdp"] == "pipeline.bench.fsdp"
    assert BENCHMARKS["gpu_check"] == "pipeline.bench.gpu_check"


def test_fixed_rollout_and_share():
    ro = bench_fsdp.fixed_rollout("tiny", vocab=107, pad=0)
    s = bench_fsdp.SIZES["tiny"]
    assert ro.input_ids.shape[0] == s["groups"] * s["group_size"]
    assert torch.equal(ro.input_ids, bench_fsdp.fixed_rollout("tiny", 107, 0).input_ids)
    lengths = ro.attention_mask.sum(-1)
    assert int(ro.attention_mask[:, 0].min()) == 1  # right padding
    assert torch.equal(ro.response_mask.sum(-1), ro.lengths)
    assert int(lengths.max()) == ro.input_ids.shape[1]
    # every group has a learning signal
    assert (ro.rewards.reshape(-1, ro.group_size).std(-1) > 0).all()
    shares = [bench_fsdp.local_share(ro, r, 2) for r in range(2)]
    assert sum(x.input_ids.shape[0] for x in shares) == ro.input_ids.shape[0]
    g = ro.group_size  # rank 1 holds groups 1, 3, …
    assert torch.equal(shares[1].input_ids[:g], ro.input_ids[g:2 * g])
    spec = bench_fsdp.model_spec("small")
    assert spec["arch"] == "qwen3" and spec["hidden_size"] == 256


def test_fsdp_summary_and_table():
    def rank(scale: float) -> dict:
        return {"times": {"ddp": [1.0 * scale, 1.2, 1.1], "fsdp2": [1.3, 1.4 * scale, 1.2],
                          "sync": [0.1, 0.2, 0.1]},
                "resident_bytes": {"ddp": 4 * 2**20, "fsdp2": 2 * 2**20},
                "max_param_diff": 1e-7, "max_param_change": 1e-3, "params": 1000,
                "rows": 8, "tokens": 300, "response_tokens": 200}

    a = argparse.Namespace(size="tiny", threads=1, repeats=3, sync_dtype="float32")
    res = bench_fsdp.summarise([rank(1.0), rank(2.0)], a)
    assert res["step_s"]["ddp"] == [2.0, 1.2, 1.1]  # slowest process per step
    assert res["median_s"] == {"ddp": 1.2, "fsdp2": 1.3, "sync": 0.1}
    assert res["ratio_step"] == pytest.approx(1.3 / 1.2)
    assert res["ratio_resident"] == 0.5
    table = bench_fsdp.format_table(res)
    assert "fsdp2" in table and "0.50" in table and "weight sync" in table
    json.dumps(res)


def test_gpu_check_settings_and_cases():
    full = gpu_check.settings()
    assert full.device == "cuda:0" and full.seq_lens == (4096, 8192) and full.gen_batch == 64
    assert full.budget_s <= 420
    tiny = gpu_check.settings(tiny=True, budget_s=None, seq_lens=(32,))
    assert tiny.device == "cpu" and tiny.size == "tiny" and tiny.seq_lens == (32,)
    cases = gpu_check.train_cases(full)
    assert len(cases) == 8 and cases[0] == dict(seq_len=4096, attn="sdpa", checkpointing=False)
    assert [c["attn"] for c in cases[:4]] == ["sdpa"] * 4
    q = gpu_check.SHAPES["0.6b"]
    assert (q["hidden_size"], q["num_layers"], q["vocab_size"]) == (1024, 28, 151936)
    assert gpu_check.SHAPES["1.7b"]["intermediate_size"] == 6144


def test_synthetic_tokenizer_round_trip():
    tok = gpu_check.synthetic_tokenizer(300)
    assert len(tok) == 300 and tok.eos_token_id == 2 and tok.pad_token_id == 0
    prompts = gpu_check.random_prompts(3, 10, 300)
    enc = tok(prompts, add_special_tokens=False).input_ids
    assert [len(x) for x in enc] == [10] * 3
    assert all(4 <= i < 300 for row in enc for i in row)
    assert tok.decode(enc[0]).split() == prompts[0].split()


def test_oom_record_and_rows():
    case = dict(seq_len=8192, attn="eager", checkpointing=False)
    rec = gpu_check.oom_record(case, torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 4.00 GiB\nmore"), 70 * 2**30)
    assert rec["status"] == "oom" and rec["error"].startswith("CUDA out of memory")
    assert "\n" not in rec["error"] and rec["peak_bytes"] == 70 * 2**30
    rec["planner"] = {"status": "planner unavailable"}
    row = gpu_check.format_train_row(rec)
    assert row.split()[-3:] == ["70.00", "n/a", "-"] and "oom" in row
    ok = {**case, "status": "ok", "step_s": [2.0, 1.0], "tokens_per_s": 8192.0,
          "peak_bytes": 2**30, "planner": {"status": "ok", "bytes": 2 * 2**30}}
    assert gpu_check.format_train_row(ok).split()[-3:] == ["1.00", "2.00", "2.00"]


def test_planner_contract(monkeypatch):
    calls = []

    def estimate(shape, **kw):
        calls.append((shape, kw))
        return {"total_bytes": 123, "parts": {"params": 100}}

    fake = types.ModuleType("pipeline.memory_plan")
    fake.train_update_estimate = estimate
    monkeypatch.setitem(sys.modules, "pipeline.memory_plan", fake)
    got = gpu_check.planner_estimate(gpu_check.SHAPES["0.6b"], 4096, True)
    assert got["status"] == "ok" and got["bytes"] == 123.0
    assert calls[0][1] == dict(micro_batch=1, seq_len=4096, compute_dtype="bfloat16",
                               processes=1, checkpointing=True)
    assert gpu_check.estimate_bytes(types.SimpleNamespace(peak_bytes=7)) == 7.0
    assert gpu_check.estimate_bytes("?") is None
    assert calls[0][0] is gpu_check.SHAPES["0.6b"]  # no shape_from_hf_config: the dict
    assert gpu_check.estimate_bytes(5) == 5.0
    monkeypatch.setitem(sys.modules, "pipeline.memory_plan", None)  # import fails
    assert gpu_check.planner_estimate({}, 1, False)["status"] == "planner unavailable"


def test_planner_estimate_of_the_real_planner():
    """Whatever ``pipeline.memory_plan`` offers today, the estimate of a 0.6B step holds
    at least the fp32 params, grads and AdamW state (16 B/param) and grows with T."""
    plan = pytest.importorskip("pipeline.memory_plan")
    if not hasattr(plan, "train_update_estimate") and not hasattr(plan, "update_memory"):
        pytest.skip("pipeline.memory_plan has no update estimate yet")
    shape = gpu_check.SHAPES["0.6b"]
    est = {t: gpu_check.planner_estimate(shape, t, False) for t in (4096, 8192)}
    assert all(e["status"] == "ok" for e in est.values()), est
    n = plan.shape_from_hf_config(gpu_check.hf_config_dict(shape)).n_params
    assert 590e6 < n < 610e6  # Qwen3-0.6B
    assert est[4096]["bytes"] >= 16 * n
    assert est[8192]["bytes"] > est[4096]["bytes"]
    ckpt = gpu_check.planner_estimate(shape, 8192, True)
    assert ckpt["bytes"] < est[8192]["bytes"]


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_gpu_check_tiny(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.bench", "gpu_check", "--tiny", "--out", str(out),
         "--simulate-oom", "eager:128"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not res["skipped"] and "errors" not in res
    assert set(res["parts_s"]) == {"train_sdpa", "generation", "train_eager"}
    assert res["elapsed_s"] < 60
    cases = {(r["attn"], r["seq_len"], r["checkpointing"]): r for r in res["train"]}
    assert set(cases) == {(c["attn"], c["seq_len"], c["checkpointing"])
                          for c in gpu_check.train_cases(gpu_check.settings(tiny=True))}
    for key, r in cases.items():
        assert r["planner"]["status"] in ("ok", "planner unavailable", "planner error")
        if key == ("eager", 128, False):
            assert r["status"] == "oom" and "out of memory" in r["error"]
            assert "step_s" not in r
            continue
        assert r["status"] == "ok", r
        assert len(r["step_s"]) == 2 and _finite(*r["step_s"], r["tokens_per_s"], r["loss"])
        assert r["resident_bytes"] > 0
        assert r["peak_bytes"] is None  # CPU: not measured
    g = res["generation"]
    assert g["static_supported"]
    for name in ("static", "hf"):
        assert g[name]["status"] == "ok"
        assert _finite(g[name]["tokens_per_s"], g[name]["seconds"])
    assert _finite(g["speedup_static_vs_hf"])
    assert "static / hf" in proc.stdout and "oom" in proc.stdout


@pytest.mark.slow
def test_bench_fsdp_tiny(tmp_path):
    out = tmp_path / "fsdp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.bench", "fsdp", "--size", "tiny", "--repeats", "2",
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert _finite(res["ratio_step"], res["ratio_resident"], res["median_s"]["sync"])
    assert res["ratio_resident"] <= 0.55  # sharded params + AdamW state: about half
    assert res["max_param_diff"] <= 1e-5 < res["max_param_change"]
