"""FSDP2 RL training (``rl.distributed: fsdp2``, pipeline.rl.fsdp) on 2 CPU processes.

Rollouts come from a scripted engine (:class:`ScriptedEngine`: each prompt's responses
are a function of the prompt and of how often it was seen, not of the weights, the rank
or the seed), so a 2-process run and a single-process run see the same batches and must
reach the same parameters: 3 steps of ``grpo``, ``bupo`` (2 IPA steps, then the switch to
the whole model), ``rhythm_coupled`` (the no-grad γ pass inside the root forward) and
``reinforce_pp`` (batch-wide whitening), and the engine gets the current weights at
every step. Also: bf16 compute keeps fp32 masters (a lr = 1e-6 run moves them) and the
blocks' attention receives bf16 hidden states; bf16 compute with activation
checkpointing stays within bf16 rounding of one process with autocast; a run killed
after its first checkpoint resumes to the same parameters and history, the consolidated
model loads with ``from_pretrained``, and the training state resident per process is at
most 0.55× the single-process one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.bench.fsdp import local_share
from pipeline.generation import Generation
from pipeline.models import load
from pipeline.models.builtin import build_model
from pipeline.models.tokenizer import build_char_tokenizer
from pipeline.rl import RLConfig, train
from pipeline.rl import fsdp as rlfsdp
from pipeline.rl.checkpoint import load_checkpoint
from pipeline.rl.distributed import Dist, free_port
from pipeline.rl.rollout_engine import Samples, Sampling
from pipeline.rl.trainer import TIME_KEYS, make_optimizer, prepare, update
from pipeline.tasks import countdown

SPEC = dict(arch="qwen3", hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
            num_kv_heads=2, head_dim=None, max_position_embeddings=256, rope_theta=10000.0,
            tie_word_embeddings=True, seed=0)
PROBLEMS = countdown.generate(16, seed=3)
WORLD = 2
PARITY = ("grpo", "bupo", "rhythm_coupled", "reinforce_pp")
ALPHABET = "0123456789+-*/() ="


def prompt_fn(p: countdown.Problem) -> str:
    return countdown.prompt(p, "builtin")


def toy_reward(p: countdown.Problem, text: str) -> float:
    return float(str(p.target)[0] in text)


class ScriptedEngine:
    """Responses that depend only on (prompt, occurrence, sample index): identical on any
    number of processes. Records every ``load_weights`` call: how many tensors came and
    the float64 sum of their absolute values (a checksum of the weights it was given)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.seen: Counter[str] = Counter()
        self.loads: list[tuple[int, float]] = []

    def generate(self, prompts: list[str], sampling: Sampling) -> Samples:
        out = []
        for i, prompt in enumerate(prompts):
            self.seen[prompt] += 1
            for j in range(sampling.n):
                key = f"{prompt}|{self.seen[prompt]}|{j}".encode()
                g = torch.Generator().manual_seed(
                    int.from_bytes(hashlib.sha256(key).digest()[:6], "little"))
                n = int(torch.randint(2, sampling.max_new_tokens + 1, (1,), generator=g))
                text = "".join(ALPHABET[int(c)] for c in
                               torch.randint(len(ALPHABET), (n,), generator=g))
                ids = self.tok(text, add_special_tokens=False).input_ids
                out.append(Generation(i, j, text, len(ids), j % 3 > 0, ids))
        return Samples(out)

    def load_weights(self, named_tensors) -> None:
        n, total = 0, 0.0
        for _, t in named_tensors:  # drain the collective gather
            n += 1
            total += float(t.double().abs().sum())
        self.loads.append((n, total))


def _model(tok):
    return build_model(SPEC, tok, seed=0).eval()


def _checksum(model) -> tuple[int, float]:
    """What :meth:`ScriptedEngine.load_weights` records for ``model``'s parameters."""
    params = [p.detach() for _, p in model.named_parameters()]
    return len(params), sum(float(p.double().abs().sum()) for p in params)


def _attn_input_dtypes(model) -> set[str]:
    """Filled while ``model`` runs: the dtypes of the hidden states that every block's
    self-attention receives (a forward pre-hook; FSDP2 keeps hooks on submodules)."""
    seen: set[str] = set()

    def hook(module, args, kwargs):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        seen.add(str(h.dtype).removeprefix("torch."))

    for block in model.model.layers:
        block.self_attn.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def _cfg(method: str, **kw) -> RLConfig:
    base = dict(method=method, steps=3, prompts_per_step=4, group_size=4, max_new_tokens=10,
                lr=1e-3, bupo_layer=1, s_inter=2, updates_per_batch=2, micro_batch_size=3,
                save_every=1, seed=0)
    return RLConfig(**{**base, **kw})


def _run(method: str, out: Path, mode: str = "ddp", **kw
         ) -> tuple[list, torch.nn.Module, dict]:
    """History (time keys dropped), the trained model, and what the run observed:
    ``loads`` (the engine's :meth:`ScriptedEngine.load_weights` records) and
    ``attn_dtypes`` (:func:`_attn_input_dtypes`)."""
    tok = build_char_tokenizer()
    model = _model(tok)
    engine = ScriptedEngine(tok)
    dtypes = _attn_input_dtypes(model)
    extra = {k: kw.pop(k) for k in ("on_step", "save_model") if k in kw}
    hist = train(model, tok, PROBLEMS, toy_reward, _cfg(method, **kw), prompt_fn=prompt_fn,
                 out_dir=out, distributed_mode=mode, engine=engine, **extra)
    seen = {"loads": engine.loads, "attn_dtypes": sorted(dtypes)}
    return [{k: v for k, v in h.items() if k not in TIME_KEYS} for h in hist], model, seen


def _fixed_batch(tok):
    """The first step's rollout of the scripted engine (for the memory measurement)."""
    from pipeline.rl.trainer import rollout, step_indices

    cfg = _cfg("grpo")
    items = [PROBLEMS[i] for i in step_indices(len(PROBLEMS), 1, 4, 0)]
    return cfg, rollout(ScriptedEngine(tok), tok, items, prompt_fn, toy_reward, cfg, 1,
                        device=torch.device("cpu"))


def _resident(model, tok, dist: Dist) -> int:
    cfg, ro = _fixed_batch(tok)
    if dist.enabled:
        ro = local_share(ro, dist.rank, dist.world)
    opt = make_optimizer(model, cfg)
    update(model, opt, ro, prepare(model, ro, cfg, 1, dist), cfg, 1, dist=dist)
    return rlfsdp.resident_bytes(model, opt)


class Killed(Exception):
    pass


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    out_p = Path(out)
    res: dict = {}
    seen = res["seen"] = {}
    for method in PARITY:
        res[method], _, seen[method] = _run(method, out_p / method, "fsdp2")
    # bf16 compute over fp32 masters: lr 1e-6 still moves the weights
    res["bf16"], _, seen["bf16"] = _run("grpo", out_p / "bf16", "fsdp2", lr=1e-6,
                                        compute_dtype="bfloat16")
    # bf16 compute + activation checkpointing at the default lr, against one process
    res["bf16_ac"], _, seen["bf16_ac"] = _run("grpo", out_p / "bf16_ac", "fsdp2",
                                              compute_dtype="bfloat16",
                                              activation_checkpointing=True)
    # activation checkpointing: same parameters as without
    res["ckpt"], _, seen["ckpt"] = _run("grpo", out_p / "ac", "fsdp2",
                                        activation_checkpointing=True)

    def kill(m):
        if m["step"] == 2:
            raise Killed

    try:
        _run("bupo", out_p / "cut", "fsdp2", on_step=kill, save_model=False)
    except Killed:
        res["killed_at"] = load_checkpoint(out_p / "cut" / "checkpoint")["step"]
    res["resumed"], _, seen["resumed"] = _run("bupo", out_p / "cut", "fsdp2")
    # a NaN loss on process 1 only: both raise before FSDP2's backward collective
    tok = build_char_tokenizer()
    try:
        train(_model(tok), tok, PROBLEMS, lambda p, t: float("nan") if rank == 1 else 1.0,
              _cfg("grpo"), prompt_fn=prompt_fn, out_dir=out_p / "nan", save_model=False,
              distributed_mode="fsdp2", engine=ScriptedEngine(tok))
    except FloatingPointError as e:
        res["nan_error"] = str(e)
    from pipeline.rl.distributed import current

    model = rlfsdp.shard(_model(tok))
    res["resident"] = _resident(model, tok, current("fsdp2"))
    (out_p / f"rank{rank}.json").write_text(json.dumps(res))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    mp.spawn(_worker, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=True)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _params(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load(path, device="cpu")
    return {k: v.detach() for k, v in model.named_parameters()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _same_loads(got: list, ref: list, steps: int = 3) -> None:
    """The engine got every parameter at every step, and the current weights each time:
    one load per step, as many tensors as the single-process run pushed, the same
    checksums (float rounding), the first one the initial model's, changing every step."""
    init = _checksum(_model(build_char_tokenizer()))
    assert len(got) == len(ref) == steps
    assert [n for n, _ in got] == [n for n, _ in ref] == [init[0]] * steps
    assert got[0][1] == pytest.approx(init[1], rel=1e-12)
    for (_, a), (_, b) in zip(got, ref, strict=True):
        assert a == pytest.approx(b, rel=1e-6)
    assert len({c for _, c in ref}) == steps  # the weights moved between steps


def _same_history(got: list, ref: list) -> None:
    assert [h["step"] for h in got] == [h["step"] for h in ref]
    for g, r in zip(got, ref, strict=True):
        for k, v in r.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=1e-4, abs=1e-6, nan_ok=True), k
            else:
                assert g[k] == v, k


@pytest.mark.slow
@pytest.mark.parametrize("method", PARITY)
def test_fsdp2_matches_single_process(method, fsdp_runs, tmp_path):
    out, res = fsdp_runs
    ref_hist, ref_model, ref_seen = _run(method, tmp_path / method)
    ref = {k: v.detach() for k, v in ref_model.named_parameters()}
    got = _params(out / method / "model")  # the consolidated from_pretrained directory
    init = {k: v.detach() for k, v in _model(build_char_tokenizer()).named_parameters()}
    diff, moved = _max_diff(got, ref), _max_diff(ref, init)
    print(f"fsdp2 {method}: max |Δθ| vs single process after 3 steps = {diff:.3g} "
          f"(largest change {moved:.3g})")
    assert moved > 1e-3
    assert diff <= 1e-5
    _same_history(res[0][method], ref_hist)
    assert res[0][method] == res[1][method]  # every process reports the whole batch
    for r in range(WORLD):
        _same_loads(res[r]["seen"][method]["loads"], ref_seen["loads"])
        assert res[r]["seen"][method]["attn_dtypes"] == ["float32"]
    if method == "bupo":
        assert [h["phase"] for h in ref_hist] == ["ipa", "ipa", "grpo"]


@pytest.mark.slow
def test_fsdp2_bf16_compute_keeps_fp32_masters(fsdp_runs):
    out, res = fsdp_runs
    # the compute really is bf16: FSDP2 gathers each block in bf16 and casts its inputs,
    # so the attention of every block sees bf16 hidden states (fp32 without the policy)
    for r in range(WORLD):
        assert res[r]["seen"]["bf16"]["attn_dtypes"] == ["bfloat16"]
        assert len(res[r]["seen"]["bf16"]["loads"]) == 3
    got = _params(out / "bf16" / "model")
    init = {k: v.detach() for k, v in _model(build_char_tokenizer()).named_parameters()}
    assert all(v.dtype == torch.float32 for v in got.values())
    moved = _max_diff(got, init)
    print(f"bf16 compute, lr 1e-6, 3 steps: largest parameter change {moved:.3g}")
    # Adam's first steps move each weight by about lr; bf16 masters would round most away
    assert moved > 1e-6
    changed = sum(int((got[k] != init[k]).sum()) for k in got)
    total = sum(v.numel() for v in got.values())
    assert changed / total > 0.5


@pytest.mark.slow
def test_fsdp2_bf16_checkpointed_matches_single_process(fsdp_runs, tmp_path):
    """bf16 compute + activation checkpointing on 2 processes against one process with
    ``compute_dtype: bfloat16`` (autocast; one process refuses checkpointing, which does
    not change the update: test_fsdp2_activation_checkpointing_and_resume), same seeds and
    scripted batches, 3 steps of 2 AdamW updates at lr 1e-3.

    The two apply bf16 differently (FSDP2: bf16 weights, block inputs and norm outputs;
    autocast: bf16 matmul inputs over an fp32 residual stream), so the gradients differ
    by bf16 rounding. Measured (2 CPU processes, gloo): max |Δθ| = 2.0e-3 while the
    largest change is 4.4e-3, ‖θ_2 − θ_1‖ / ‖θ_1 − θ_0‖ = 0.040, 2.3 % of the weights
    differ by > 1e-4. The max is AdamW's: its early steps move a weight by ~lr whatever
    the gradient's size, so a small gradient whose sign bf16 rounding flips moves that
    weight by 2·lr = 2e-3 per step (one process in bf16 vs in fp32: 2.6e-3 too). Bounds:
    max |Δθ| <= 4e-3 (two such flips) and the relative update difference <= 0.1 (2.5×
    the measured; a lost or doubled micro-batch gradient gives ~0.5 and more)."""
    out, res = fsdp_runs
    _, ref_model, ref_seen = _run("grpo", tmp_path / "bf16", compute_dtype="bfloat16")
    ref = {k: v.detach() for k, v in ref_model.named_parameters()}
    got = _params(out / "bf16_ac" / "model")
    init = {k: v.detach() for k, v in _model(build_char_tokenizer()).named_parameters()}
    diff, moved = _max_diff(got, ref), _max_diff(ref, init)
    rel = (sum(float((got[k] - ref[k]).norm()) ** 2 for k in got) ** 0.5
           / sum(float((ref[k] - init[k]).norm()) ** 2 for k in got) ** 0.5)
    print(f"fsdp2 bf16 + checkpointing vs one process bf16: max |Δθ| {diff:.3g} (largest "
          f"change {moved:.3g}), relative update difference {rel:.3g}")
    assert moved > 3e-3
    assert diff <= 4e-3
    assert rel <= 0.1
    assert ref_seen["attn_dtypes"] == ["float32"]  # autocast: fp32 residual stream
    for r in range(WORLD):
        assert res[r]["seen"]["bf16_ac"]["attn_dtypes"] == ["bfloat16"]
        loads = res[r]["seen"]["bf16_ac"]["loads"]
        assert len(loads) == len(ref_seen["loads"]) == 3
        assert loads[0][0] == ref_seen["loads"][0][0]  # every tensor, initial weights first
        assert loads[0][1] == pytest.approx(ref_seen["loads"][0][1], rel=1e-12)


@pytest.mark.slow
def test_fsdp2_activation_checkpointing_and_resume(fsdp_runs):
    out, res = fsdp_runs
    assert _max_diff(_params(out / "ac" / "model"), _params(out / "grpo" / "model")) <= 1e-6
    assert res[0]["killed_at"] == 1
    assert res[0]["resumed"] == res[0]["bupo"]
    assert len(res[0]["seen"]["resumed"]["loads"]) == 2  # steps 2 and 3 only
    assert len(res[0]["seen"]["ckpt"]["loads"]) == 3
    assert _max_diff(_params(out / "cut" / "model"), _params(out / "bupo" / "model")) == 0.0
    state = load_checkpoint(out / "cut" / "checkpoint")
    assert state["world"] == WORLD and state["step"] == 3
    assert sorted(p.name for p in (out / "cut" / "checkpoint").glob("shards-*")) == \
        ["shards-step3"]


@pytest.mark.slow
def test_fsdp2_nan_loss_stops_every_process(fsdp_runs):
    _, res = fsdp_runs
    assert "non-finite loss on another process at step 1" in res[0]["nan_error"]
    assert "non-finite loss nan at step 1 (method grpo" in res[1]["nan_error"]


@pytest.mark.slow
def test_fsdp2_resident_state_per_process(fsdp_runs):
    _, res = fsdp_runs
    tok = build_char_tokenizer()
    single = _resident(_model(tok), tok, Dist())
    for r in range(WORLD):
        ratio = res[r]["resident"] / single
        print(f"rank {r}: params+grads+AdamW resident {res[r]['resident']} B vs single "
              f"process {single} B: ratio {ratio:.3f}")
        assert ratio <= 0.55


def test_sharded_checkpoint_refused_without_fsdp2(tmp_path, char_tokenizer):
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    torch.save({"shards": "shards-step1", "world": 2, "config": _cfg("grpo").to_dict(),
                "rng": {}, "step": 1, "history": []}, ckpt / "state.pt")
    with pytest.raises(ValueError, match="sharded .fsdp2. checkpoint"):
        train(_model(char_tokenizer), char_tokenizer, PROBLEMS, toy_reward, _cfg("grpo"),
              prompt_fn=prompt_fn, out_dir=tmp_path)


def test_unknown_distributed_mode(tmp_path, char_tokenizer):
    with pytest.raises(ValueError, match="unknown mode 'fsdp'"):
        train(_model(char_tokenizer), char_tokenizer, PROBLEMS, toy_reward, _cfg("grpo"),
              prompt_fn=prompt_fn, out_dir=tmp_path, distributed_mode="fsdp")


def test_static_engine_load_weights(char_tokenizer):
    from pipeline.rl.rollout_engine import StaticDecoderEngine

    src, dst = _model(char_tokenizer), build_model({**SPEC, "seed": 1}, char_tokenizer, seed=1)
    engine = StaticDecoderEngine(dst, char_tokenizer, owns_weights=True)
    engine.load_weights(src.named_parameters())
    assert all(torch.equal(a, b) for a, b in zip(src.parameters(), dst.parameters(),
                                                 strict=True))
    with pytest.raises(KeyError, match="no weights for"):
        engine.load_weights(list(src.named_parameters())[1:])
    with pytest.raises(KeyError, match="unknown parameter 'nope'"):
        engine.load_weights([("nope", torch.zeros(1))])
    shared = StaticDecoderEngine(src, char_tokenizer)
    shared.load_weights([])  # the training model itself: nothing to copy
    with pytest.raises(ValueError, match="samples from the training model"):
        shared.load_weights(src.named_parameters())
