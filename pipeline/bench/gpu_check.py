"""GPU check: FSDP2 training-step memory and time, decode speed, memory-planner estimate.

``python -m pipeline.bench gpu_check [--size 0.6b|1.7b] [--out results/gpu_check.json]``
(or ``python -m pipeline.bench.gpu_check``); ``--tiny``: the same code at tiny sizes on
CPU (gloo) in well under a minute, for tests.

For a lent H100/H200 with no network: random weights of a Qwen3 shape (:data:`SHAPES`;
0.6B = Qwen3-0.6B: hidden 1024, 28 layers, 16/8 heads of 128, vocabulary 151,936, tied),
one process (NCCL, world size 1). Parts, in this order (the slowest and riskiest last):

* ``train`` (sdpa, then eager at the end): one FSDP2 training step as the RL trainer runs
  it — :func:`pipeline.rl.fsdp.shard` (fp32 masters, bf16 compute, with and without
  activation checkpointing), :func:`pipeline.rl.logprobs.token_logprobs` through
  :func:`pipeline.rl.fsdp.rooted`, ``-sum`` loss, backward, AdamW step — on one sequence
  of 4096 and of 8192 tokens (the first eighth is prompt). Two steps: the first creates
  the AdamW state, the second is the timed one; the peak is ``max_memory_allocated``
  over both (the resident fp32 training state included). A CUDA out-of-memory error is
  recorded (``status: oom``) and the check goes on.
* ``planner``: the memory planner's estimate of every training case next to its
  measured peak (:func:`planner_estimate`: ``pipeline.memory_plan``'s
  ``train_update_estimate`` or ``update_memory``; "planner unavailable" without one).
* ``generation``: tokens/s of :func:`pipeline.generation.generate` at batch 64, 64-token
  prompts, 128 new tokens (EOS masked, so every row decodes them all), bf16 weights, with
  the static-cache decoder (``static=True``) and the transformers forward
  (``static=False``). The tokenizer is :func:`synthetic_tokenizer` (no hub access): one
  word-level token per vocabulary id, prompts are random ids.

Every part prints its elapsed time; once the total passes ``--budget-s`` (420 s) the
remaining cases are skipped with a note. The JSON is rewritten after every case, so a
run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.bench.gpu_check_table import (  # noqa: F401  (the tables, importable from here)
    GIB,
    TRAIN_HEADER,
    format_table,
    format_train_row,
)

#: Qwen3 decoder shapes (tied embeddings); ``tiny`` is for ``--tiny`` on CPU.
SHAPES: dict[str, dict[str, Any]] = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                 num_kv_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
                 num_kv_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True),
}
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<unk>")


@dataclass(frozen=True)
class Settings:
    """What one run measures."""

    size: str = "0.6b"
    device: str = "cuda:0"
    seq_lens: tuple[int, ...] = (4096, 8192)
    attns: tuple[str, ...] = ("sdpa", "eager")
    checkpointing: tuple[bool, ...] = (False, True)
    gen_batch: int = 64
    gen_prompt: int = 64
    gen_new: int = 128
    gen_dtype: str = "bfloat16"
    budget_s: float = 420.0
    simulate_oom: tuple[str, ...] = field(default=())  # "attn:seq_len" cases that raise OOM


def settings(tiny: bool = False, size: str = "0.6b", **overrides: Any) -> Settings:
    """Full (GPU) or tiny (CPU) settings, with ``overrides`` (None values ignored)."""
    base = (Settings(size="tiny", device="cpu", seq_lens=(64, 128), gen_batch=4,
                     gen_prompt=16, gen_new=16, budget_s=55.0)
            if tiny else Settings(size=size))
    return Settings(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


def train_cases(s: Settings) -> list[dict[str, Any]]:
    """``(seq_len, attn, checkpointing)`` of every training case, sdpa first."""
    return [dict(seq_len=t, attn=a, checkpointing=c) for a in s.attns for t in s.seq_lens
            for c in s.checkpointing]


# ----------------------------------------------------------------------------- building
def synthetic_tokenizer(vocab_size: int):
    """A word-level ``PreTrainedTokenizerFast`` with exactly ``vocab_size`` ids: the special
    tokens, then ``w{i}`` (whitespace-separated words) — a hub-free tokenizer whose
    vocabulary matches a real model's size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>",
                                   eos_token="<|eos|>", pad_token="<|pad|>", unk_token="<unk>",
                                   padding_side="left")


def random_prompts(n: int, length: int, vocab_size: int, seed: int = 0) -> list[str]:
    """``n`` prompts of ``length`` random non-special tokens of :func:`synthetic_tokenizer`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (n, length), generator=g)
    return [" ".join(f"w{i}" for i in row) for row in ids.tolist()]


def build_model(shape: dict[str, Any], attn: str, device: torch.device, max_len: int):
    """A randomly initialised fp32 ``Qwen3ForCausalLM`` of ``shape``, built on ``device``."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    cfg = Qwen3Config(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
        head_dim=shape["head_dim"], tie_word_embeddings=shape["tie_word_embeddings"],
        max_position_embeddings=max_len, rope_theta=1_000_000.0,
        pad_token_id=ids["<|pad|>"], bos_token_id=ids["<|bos|>"], eos_token_id=ids["<|eos|>"],
        attn_implementation=attn)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(cfg)
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.generation_config.eos_token_id = cfg.eos_token_id
    return model.eval()


# ----------------------------------------------------------------------------- planner
def prompt_len(seq_len: int) -> int:
    """Prompt tokens of a training sequence (the rest is response)."""
    return seq_len // 8


def hf_config_dict(shape: dict[str, Any]) -> dict[str, Any]:
    """A transformers-style ``config.json`` mapping of a :data:`SHAPES` entry."""
    return {"model_type": "qwen3", "vocab_size": shape["vocab_size"],
            "hidden_size": shape["hidden_size"], "intermediate_size": shape["intermediate_size"],
            "num_hidden_layers": shape["num_layers"], "num_attention_heads": shape["num_heads"],
            "num_key_value_heads": shape["num_kv_heads"], "head_dim": shape["head_dim"],
            "tie_word_embeddings": shape["tie_word_embeddings"]}


def planner_estimate(shape: dict[str, Any], seq_len: int, checkpointing: bool
                     ) -> dict[str, Any]:
    """The memory planner's estimate of one training step (this check's case: one
    process, FSDP2, bf16 compute, one unpadded sequence) where ``pipeline.memory_plan``
    has one: ``{"status": "ok", "via": …, "bytes": …, "raw": …}``, else ``{"status":
    "planner unavailable"}`` (or ``"planner error"``). The only place that knows the
    planner's interface: ``train_update_estimate(shape, micro_batch=, seq_len=,
    compute_dtype=, processes=, checkpointing=)`` if it exists, else ``update_memory``
    (whose ``total`` leaves out the CUDA context, as ``max_memory_allocated`` does)."""
    try:
        plan = importlib.import_module("pipeline.memory_plan")
    except ImportError as e:
        return {"status": "planner unavailable", "detail": str(e)}
    try:
        to_shape = getattr(plan, "shape_from_hf_config", None)
        mshape = shape if to_shape is None else to_shape(hf_config_dict(shape))
        if hasattr(plan, "train_update_estimate"):
            via = "train_update_estimate"
            est = plan.train_update_estimate(mshape, micro_batch=1, seq_len=seq_len,
                                             compute_dtype="bfloat16", processes=1,
                                             checkpointing=checkpointing)
        elif hasattr(plan, "update_memory"):
            via = "update_memory"
            est = plan.update_memory(mshape, micro_seqs=1, seq_len=seq_len,
                                     response_tokens=seq_len - prompt_len(seq_len),
                                     compute_dtype="bfloat16", checkpointing=checkpointing,
                                     processes=1, sharded=True, padded=False)
        else:
            return {"status": "planner unavailable",
                    "detail": "pipeline.memory_plan has no train_update_estimate/update_memory"}
    except Exception as e:  # noqa: BLE001 - recorded, the check goes on
        return {"status": "planner error", "detail": repr(e)[:500]}
    return {"status": "ok", "via": via, "bytes": estimate_bytes(est), "raw": _jsonable(est)}


def estimate_bytes(est: Any) -> float | None:
    """Total bytes of a planner result: a number, or a mapping / object with a total."""
    if isinstance(est, int | float):
        return float(est)
    for key in ("total_bytes", "total", "peak_bytes", "peak", "bytes"):
        v = est.get(key) if isinstance(est, dict) else getattr(est, key, None)
        if isinstance(v, int | float):
            return float(v)
    return None


def _jsonable(x: Any) -> Any:
    if isinstance(x, int | float | str | bool) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "__dataclass_fields__"):
        return _jsonable(asdict(x))
    return repr(x)


# ----------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def oom_record(case: dict[str, Any], err: BaseException, peak: int | None) -> dict[str, Any]:
    """The record of a case that ran out of memory: its first message line and the peak
    reached before it."""
    return {**case, "status": "oom", "error": str(err).strip().splitlines()[0][:300],
            "peak_bytes": peak}


def train_step_case(s: Settings, case: dict[str, Any], device: torch.device, mesh: Any
                    ) -> dict[str, Any]:
    """One FSDP2 training case (two steps); an OOM or other error becomes the record."""
    from pipeline.rl import fsdp
    from pipeline.rl.logprobs import token_logprobs

    shape, t = SHAPES[s.size], case["seq_len"]
    rec: dict[str, Any]
    _free(device)
    _reset_peak(device)
    try:
        model = build_model(shape, case["attn"], device, max_len=max(s.seq_lens))
        fsdp.shard(model, compute_dtype=torch.bfloat16, checkpointing=case["checkpointing"],
                   mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        g = torch.Generator().manual_seed(t)
        ids = torch.randint(len(SPECIAL_TOKENS), shape["vocab_size"], (1, t), generator=g
                            ).to(device)
        am = torch.ones_like(ids)
        rm = torch.zeros(1, t, dtype=torch.bool, device=device)
        rm[:, prompt_len(t):] = True
        if f"{case['attn']}:{t}" in s.simulate_oom and not case["checkpointing"]:
            raise torch.cuda.OutOfMemoryError(f"simulated out of memory ({case['attn']}:{t})")
        times, losses = [], []
        for _ in range(2):
            _sync(device)
            t0 = time.perf_counter()
            logp = fsdp.rooted(model, token_logprobs, ids, am, rm)
            loss = -logp.sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        rec = {**case, "status": "ok", "step_s": times, "tokens_per_s": t / times[-1],
               "loss": losses[-1], "peak_bytes": _peak(device),
               "resident_bytes": fsdp.resident_bytes(model, opt)}
    except torch.cuda.OutOfMemoryError as e:
        rec = oom_record(case, e, _peak(device))
    except Exception as e:  # noqa: BLE001 - recorded, the check goes on
        rec = {**case, "status": "error", "error": repr(e)[:500], "peak_bytes": _peak(device)}
    model = opt = logp = loss = None  # noqa: F841 - drop the references before freeing
    _free(device)
    rec["planner"] = planner_estimate(shape, t, case["checkpointing"])
    return rec


def generation_part(s: Settings, device: torch.device) -> dict[str, Any]:
    """Tokens/s of the static-cache decoder vs the transformers forward (same prompts)."""
    from pipeline.generation import generate
    from pipeline.static_decode import unsupported_reason

    shape = SHAPES[s.size]
    tok = synthetic_tokenizer(shape["vocab_size"])
    prompts = random_prompts(s.gen_batch, s.gen_prompt, shape["vocab_size"])
    model = build_model(shape, "sdpa", device, max_len=s.gen_prompt + s.gen_new + 8)
    dtype = getattr(torch, s.gen_dtype)
    out: dict[str, Any] = {"batch": s.gen_batch, "prompt_tokens": s.gen_prompt,
                           "new_tokens": s.gen_new, "dtype": s.gen_dtype,
                           "tokenizer": f"synthetic word-level, {len(tok)} ids",
                           "static_supported": unsupported_reason(model) is None}

    def timed(static: bool, new: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        gens = generate(model, tok, prompts, n=1, temperature=1.0, max_new_tokens=new,
                        min_new_tokens=new, batch_size=s.gen_batch, seed=0, progress=False,
                        dtype=dtype, static=static)
        _sync(device)
        if any(g.num_tokens != new for g in gens):
            raise RuntimeError(f"generate: rows ended before {new} tokens")
        return time.perf_counter() - t0

    for name, static in (("static", True), ("hf", False)):
        try:
            timed(static, 4)  # warm-up: kernels, the bf16 copy
            _reset_peak(device)
            sec = timed(static, s.gen_new)
            out[name] = {"status": "ok", "seconds": sec,
                         "tokens_per_s": s.gen_batch * s.gen_new / sec,
                         "peak_bytes": _peak(device)}
        except torch.cuda.OutOfMemoryError as e:
            out[name] = oom_record({}, e, _peak(device))
        except Exception as e:  # noqa: BLE001 - recorded, the check goes on
            out[name] = {"status": "error", "error": repr(e)[:500]}
        _free(device)
    if out["static"].get("status") == out["hf"].get("status") == "ok":
        out["speedup_static_vs_hf"] = out["static"]["tokens_per_s"] / out["hf"]["tokens_per_s"]
    model = None  # noqa: F841
    _free(device)
    return out


# ----------------------------------------------------------------------------- driver
def init_group(device: torch.device) -> Any:
    """A one-process group (NCCL on CUDA, gloo on CPU) and its 1-device mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    from pipeline.rl.distributed import free_port

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", world_size=1, rank=0,
            init_method=f"tcp://127.0.0.1:{free_port()}")
    return init_device_mesh(device.type, (1,))


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": sys.version.split()[0], "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(name=p.name, total_memory_bytes=int(p.total_memory),
                   capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda)
    return env


def check(s: Settings, out: Path | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every part within the time budget; the result (also written to ``out``)."""
    device = torch.device(s.device)
    start = time.perf_counter()
    res: dict[str, Any] = {"settings": asdict(s), "shape": SHAPES[s.size],
                           "environment": environment(device), "train": [],
                           "generation": None, "parts_s": {}, "skipped": []}

    def save() -> None:
        res["elapsed_s"] = time.perf_counter() - start
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=1))

    def over(what: str) -> bool:
        el = time.perf_counter() - start
        if el > s.budget_s:
            res["skipped"].append(
                f"{what}: skipped, {el:.0f} s elapsed > budget {s.budget_s:.0f} s")
            log(res["skipped"][-1])
            return True
        return False

    mesh = init_group(device)
    cases = train_cases(s)
    parts: list[tuple[str, Callable[[], None]]] = []

    def train_part(attn: str) -> Callable[[], None]:
        def go() -> None:
            for case in (c for c in cases if c["attn"] == attn):
                what = f"train {attn} T={case['seq_len']} ckpt={case['checkpointing']}"
                if over(what):
                    continue
                rec = train_step_case(s, case, device, mesh)
                res["train"].append(rec)
                log(f"  {format_train_row(rec)}")
                save()
        return go

    def gen() -> None:
        if not over("generation"):
            res["generation"] = generation_part(s, device)

    if "sdpa" in s.attns:
        parts.append(("train_sdpa", train_part("sdpa")))
    parts.append(("generation", gen))
    parts += [(f"train_{a}", train_part(a)) for a in s.attns if a != "sdpa"]
    for name, fn in parts:
        t0 = time.perf_counter()
        log(f"[{time.perf_counter() - start:6.1f} s] {name} ...")
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - recorded, the next part still runs
            res.setdefault("errors", {})[name] = repr(e)[:500]
            log(f"  {name} failed: {e!r}")
            _free(device)
        res["parts_s"][name] = time.perf_counter() - t0
        log(f"[{time.perf_counter() - start:6.1f} s] {name} done in {res['parts_s'][name]:.1f} s")
        save()
    torch.distributed.destroy_process_group()
    save()
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=["0.6b", "1.7b"], default="0.6b")
    p.add_argument("--tiny", action="store_true", help="tiny sizes on CPU (gloo), < 60 s")
    p.add_argument("--out", default="results/gpu_check.json")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip the remaining cases past this many seconds (default 420; tiny 55)")
    p.add_argument("--seq-lens", type=int, nargs="+", default=None)
    p.add_argument("--simulate-oom", nargs="+", default=None, metavar="ATTN:SEQ",
                   help="raise a CUDA OOM in these cases without checkpointing (tests the path)")


def run(a: argparse.Namespace) -> int:
    s = settings(a.tiny, a.size, budget_s=a.budget_s,
                 seq_lens=tuple(a.seq_lens) if a.seq_lens else None,
                 simulate_oom=tuple(a.simulate_oom) if a.simulate_oom else None)
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (use --tiny on CPU)", file=sys.stderr)
        return 2
    res = check(s, Path(a.out) if a.out else None, log=lambda m: print(m, flush=True))
    print(format_table(res), flush=True)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.gpu_check",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
