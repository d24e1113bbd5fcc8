"""Benchmark: early-exit greedy decoding vs the full decoder (docs/methods.md §4.12).

``python -m pipeline.bench early_exit [--model DIR] [--lens DIR] [--exit-layers 15 20 25]
[--thresholds 0.9 0.95 0.99] [--n-per-task 6]``

One run, one sequence at a time (batch 1, greedy), on SmolLM2 by default, over three
prompt sets: ``gsm_symbolic`` (chat prompt, up to ``--gsm-tokens``), two-digit
``addition`` after one worked example (up to ``--addition-tokens``) and 4-shot ``mmlu``
(the answer letter: one token). Each prompt's last token is fed as a decode step (the
rest is prefilled), so the first answer token — the MMLU letter — is produced by a step
that may exit. Engines: the full :class:`~pipeline.static_decode.StaticDecoder`, and
:class:`~pipeline.early_exit.EarlyExitDecoder` for each head (logit, tuned lens) × exit
layer × threshold τ. Per engine:

- ``tok/s`` of the decode steps (the prompts' prefill, identical in every engine, is not
  timed) and ``speed-up`` (this engine's tok/s / the full decoder's, measured in the same
  run; the full decoder runs first and last, the better of its two times is the reference);
- ``agree``: of the generated tokens, the fraction equal to the full model's greedy token
  given the same prefix (one teacher-forced forward of the model over prompt + output);
  ``agree exited`` over the tokens of steps that exited, ``agree rest`` over the others
  (these differ from the full model only through earlier exits' propagated keys/values);
- ``same seq``: the fraction of prompts whose whole output equals the full decoder's;
- ``acc`` per task (math-verify on the last ``\\boxed{}``; MMLU: the letter);
- ``layers``: mean blocks run per decode step, and ``exit %``: steps that exited.

Then where the time goes: ms of one decode step's blocks, of one exit check (final norm +
unembedding + softmax) and of one skipped block's k/v projections; and whole decode steps
timed through ``forward`` (full; checked without exit, τ = 1; exited at every step, τ = 0)
with the speed-up bound and the exit rate at which checking breaks even.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

DEFAULT_MODEL = "results/default/models/smollm2-135m-instruct/model"
DEFAULT_LENS = "results/default/depth/smollm2-135m-instruct/tuned_lens"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--lens", default=DEFAULT_LENS, help="tuned lens folder ('' = logit only)")
    p.add_argument("--exit-layers", type=int, nargs="+", default=None,
                   help="block outputs h[l] checked, one engine each (default: L/2, 2L/3, 5L/6)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    p.add_argument("--n-per-task", type=int, default=6)
    p.add_argument("--gsm-tokens", type=int, default=96)
    p.add_argument("--addition-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-dir", default=None)


@dataclass
class Prompt:
    task: str
    item: dict
    ids: list[int]
    max_new: int


@dataclass
class Result:
    name: str
    seconds: float = 0.0  # decode steps only (the prefill is the same in every engine)
    outputs: list[list[int]] = field(default_factory=list)
    exited: list[list[bool]] = field(default_factory=list)  # per token: from an exit
    layers: float = float("nan")  # mean blocks per decode step (early-exit engines)


def _prompts(tok, n: int, gsm_tokens: int, add_tokens: int, cache_dir) -> list[Prompt]:
    from pipeline.evaluation import items as bench
    from pipeline.settings import Benchmark

    out: list[Prompt] = []
    specs = [("gsm_symbolic", {"task": "math", "dataset": "gsm_symbolic", "n_problems": n},
              "chat", gsm_tokens),
             ("addition", {"task": "math", "dataset": "addition_2digit", "n_problems": n,
                           "prompt_style": "chat_example"}, "chat_example", add_tokens)]
    for name, spec, style, new in specs:
        for it in bench.load_items(Benchmark.of(spec), data=None, cache_dir=cache_dir):
            text = bench.render_prompt("math", it, tok, style)
            out.append(Prompt(name, it, tok(text, add_special_tokens=False).input_ids, new))
    items = bench.load_items(Benchmark.of({"task": "mmlu", "dataset": "mmlu"}), data=None,
                             cache_dir=cache_dir)
    shots, rest = bench.balanced_shots(items, 4)
    for it in rest[:n]:
        text = bench.mmlu_prompt(it, shots)
        out.append(Prompt("mmlu", it, tok(text, add_special_tokens=False).input_ids, 1))
    return out


@torch.inference_mode()
def _greedy(engine, ids: list[int], max_new: int,
            eos: int | None) -> tuple[list[int], list[bool], float]:
    """Greedy tokens of one prompt (``ids[:-1]`` prefilled, ``ids[-1]`` fed as a step),
    whether each came from an exit, and the seconds of its decode steps."""
    x = torch.tensor([ids])
    engine.reset(1, len(ids) + max_new, "cpu")
    n = len(ids) - 1
    engine.forward(x[:, :n], torch.arange(n)[None])
    out: list[int] = []
    exited: list[bool] = []
    exits = getattr(engine, "exits", None)
    full = len(engine.layers)
    tok, pos = ids[-1], n
    t0 = time.perf_counter()
    for _ in range(max_new):
        before = exits[full] if exits is not None else 0
        logits = engine.forward(torch.tensor([[tok]]), torch.tensor([[pos]]))
        tok, pos = int(logits.argmax(-1)), pos + 1
        out.append(tok)
        exited.append(exits is not None and exits[full] == before)
        if tok == eos:
            break
    return out, exited, time.perf_counter() - t0


def _run(name: str, engine, prompts: list[Prompt], eos: int | None) -> Result:
    res = Result(name)
    for p in tqdm(prompts, desc=name, leave=False):
        out, exited, seconds = _greedy(engine, p.ids, p.max_new, eos)
        res.outputs.append(out)
        res.exited.append(exited)
        res.seconds += seconds
    if hasattr(engine, "mean_layers"):
        res.layers = engine.mean_layers()
    return res


@torch.inference_mode()
def _agreement(model, prompts: list[Prompt], res: Result) -> tuple[float, float, float]:
    """Fraction of generated tokens equal to the full model's greedy token on their prefix:
    over all tokens, over the tokens of exited steps, over the others (which differ only
    through the propagated keys and values of earlier exits)."""
    same = torch.zeros(2)
    total = torch.zeros(2)
    for p, out, ex in zip(prompts, res.outputs, res.exited, strict=True):
        seq = torch.tensor([p.ids + out])
        logits = model(input_ids=seq).logits[0, len(p.ids) - 1:-1]
        hit = (logits.argmax(-1) == torch.tensor(out)).float()
        idx = torch.tensor(ex, dtype=torch.long)
        same.index_add_(0, idx, hit)
        total.index_add_(0, idx, torch.ones_like(hit))
    frac = torch.where(total > 0, same / total.clamp(min=1), float("nan")).tolist()
    return float(same.sum() / total.sum().clamp(min=1)), frac[1], frac[0]


def _accuracy(tok, prompts: list[Prompt], outputs: list[list[int]]) -> dict[str, float]:
    from pipeline.evaluation import items as bench

    hits: dict[str, list[bool]] = {}
    for p, out in zip(prompts, outputs, strict=True):
        text = tok.decode(out, skip_special_tokens=True)
        ok = (text.strip() == p.item["answer"] if p.task == "mmlu"
              else bench.score("math", p.item, text))
        hits.setdefault(p.task, []).append(bool(ok))
    return {k: sum(v) / len(v) for k, v in hits.items()}


STEP_CONTEXT = 128


@torch.inference_mode()
def _step_ms(engine, repeats: int = 30) -> float:
    """ms of one whole decode step (``engine.forward`` of one token) after a prompt of
    :data:`STEP_CONTEXT` tokens, the same position each time (best of 5 means)."""
    n = STEP_CONTEXT
    engine.reset(1, n + 1, "cpu")
    engine.forward(torch.arange(n)[None] + 100, torch.arange(n)[None])
    tok, pos = torch.tensor([[42]]), torch.tensor([[n]])
    best = float("inf")
    for _ in range(6):
        t0 = time.perf_counter()
        for _ in range(repeats):
            engine.length = n
            engine.forward(tok, pos)
        best = min(best, (time.perf_counter() - t0) / repeats)
    return 1e3 * best


@torch.inference_mode()
def _where_time_goes(full, ee, repeats: int = 50) -> dict[str, float]:
    """ms of: a decode step's blocks; one exit check; one skipped block's k/v."""
    full.reset(1, 64, "cpu")
    ee.reset(1, 64, "cpu")
    full.forward(torch.zeros(1, 32, dtype=torch.long), torch.arange(32)[None])
    x, rope, mask, t, end = full._begin(torch.zeros(1, 1, dtype=torch.long),
                                        torch.tensor([[32]]), None)

    def clock(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            best = min(best, (time.perf_counter() - t0) / repeats)
        return 1e3 * best

    def blocks():
        h = x
        for i in range(len(full.layers)):
            h = full._block(i, h, rope, mask, t, end)

    h = x[:, -1]
    ms = {"blocks": clock(blocks),
          "head": clock(lambda: ee.confidence(h, 1)),
          "final head": clock(lambda: full._logits(h)),
          "kv only": clock(lambda: ee._kv_only(1, x, rope, t, end))}
    ms["block"] = ms["blocks"] / len(full.layers)
    return ms


def run(a: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.depth.lens import TunedLens
    from pipeline.early_exit import EarlyExitDecoder
    from pipeline.models import load
    from pipeline.static_decode import StaticDecoder

    if a.threads:
        torch.set_num_threads(a.threads)
    if not Path(a.model).is_dir():
        raise SystemExit(f"early_exit: no model folder {a.model} (run the default DAG first, "
                         "or pass --model)")
    model, tok = load(a.model, device="cpu", attn_implementation="eager")
    lens = TunedLens.load(a.lens, model) if a.lens else None
    n_layers = model.config.num_hidden_layers
    layers = a.exit_layers or sorted({n_layers // 2, 2 * n_layers // 3, 5 * n_layers // 6})
    prompts = _prompts(tok, a.n_per_task, a.gsm_tokens, a.addition_tokens, a.cache_dir)
    eos = tok.eos_token_id
    print(f"model {a.model} ({n_layers} blocks), torch threads {torch.get_num_threads()}; "
          f"{len(prompts)} prompts (" + ", ".join(
              f"{t} {sum(p.task == t for p in prompts)}" for t in ("gsm_symbolic", "addition",
                                                                   "mmlu")) + "), batch 1, greedy")
    full = StaticDecoder(model)
    heads = ("logit", "tuned") if lens is not None else ("logit",)
    engines = [(f"{head} h[{lay}] τ={tau:g}", head, lay, tau)
               for head in heads for lay in layers for tau in a.thresholds]
    _greedy(full, prompts[0].ids, 4, eos)  # warm-up
    first = _run("full", full, prompts, eos)
    results = []
    for name, head, lay, tau in engines:
        ee = EarlyExitDecoder(model, exit_layers=[lay], threshold=tau, head=head, lens=lens)
        results.append(_run(name, ee, prompts, eos))
    last = _run("full", full, prompts, eos)
    ref = min(first.seconds, last.seconds)
    assert first.outputs == last.outputs, "the full decoder is not deterministic"
    full_rate = sum(map(len, first.outputs)) / ref
    print(f"full decoder: {full_rate:.1f} tok/s "
          f"(first {first.seconds:.1f} s, last {last.seconds:.1f} s)")
    tasks = ("gsm_symbolic", "addition", "mmlu")
    acc = _accuracy(tok, prompts, first.outputs)
    print(f"{'engine':22} {'tok/s':>7} {'speed-up':>8} {'agree':>6} {'same seq':>8} "
          + " ".join(f"{'acc ' + t[:8]:>13}" for t in tasks)
          + f" {'layers':>6} {'exit %':>6} {'agree exited':>12} {'agree rest':>10}")
    print(f"{'full':22} {full_rate:7.1f} {1.0:8.2f} {1.0:6.3f} "
          f"{1.0:8.2f} " + " ".join(f"{acc.get(t, float('nan')):13.3f}" for t in tasks)
          + f" {n_layers:6.1f} {0.0:6.1f} {'—':>12} {1.0:10.3f}")
    for r in results:
        n_tok = sum(map(len, r.outputs))
        acc = _accuracy(tok, prompts, r.outputs)
        same = sum(o == f for o, f in zip(r.outputs, first.outputs, strict=True)) / len(prompts)
        agree, agree_exit, agree_rest = _agreement(model, prompts, r)
        print(f"{r.name:22} {n_tok / r.seconds:7.1f} {n_tok / r.seconds / full_rate:8.2f} "
              f"{agree:6.3f} {same:8.2f} "
              + " ".join(f"{acc.get(t, float('nan')):13.3f}" for t in tasks)
              + f" {r.layers:6.1f} {100 * sum(map(sum, r.exited)) / max(n_tok, 1):6.1f}"
              + f" {agree_exit:12.3f} {agree_rest:10.3f}")
    head = heads[-1]
    ee = EarlyExitDecoder(model, exit_layers=[layers[0]], threshold=1.0, head=head, lens=lens)
    ms = _where_time_goes(full, ee)
    print("\nwhere the time goes (one decode step, batch 1, ms): "
          + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()))
    full_step = _step_ms(full)
    print(f"whole decode steps at position {STEP_CONTEXT}, ms: full {full_step:.2f}")
    for lay in layers:
        miss, hit = (_step_ms(EarlyExitDecoder(model, exit_layers=[lay], threshold=tau,
                                               head=head, lens=lens)) for tau in (1.0, 0.0))
        even = (miss - full_step) / (miss - hit)  # f with f·hit + (1−f)·miss = full
        print(f"  {head} h[{lay}]: exit {hit:.2f} (→ at most {full_step / hit:.2f}× when every "
              f"step exits; predicted from the parts: "
              f"{lay * ms['block'] + ms['head'] + (n_layers - lay) * ms['kv only']:.2f}), "
              f"checked without exit {miss:.2f} ({miss / full_step:.2f}× a full step); "
              f"break-even exit rate {100 * even:.0f} %")
    return 0
