"""The printed tables of :mod:`pipeline.bench.gpu_check`: one row per training case, and
the whole result's summary."""

from __future__ import annotations

import math
from typing import Any

GIB = 2.0 ** 30


def _gib(b: float | None) -> str:
    return "-" if b is None or not math.isfinite(b) else f"{b / GIB:.2f}"


TRAIN_HEADER = (f"{'attn':<6} {'seq':>6} {'ckpt':>5} {'status':>6} {'step s':>8} {'tok/s':>9} "
                f"{'peak GiB':>9} {'plan GiB':>9} {'plan/peak':>9}")


def format_train_row(r: dict[str, Any]) -> str:
    """One training case as a table row."""
    plan = r.get("planner", {})
    plan_b = plan.get("bytes") if plan.get("status") == "ok" else None
    plan_s = _gib(plan_b) if plan_b is not None else "n/a"
    peak = r.get("peak_bytes")
    ratio = f"{plan_b / peak:.2f}" if plan_b is not None and peak else "-"
    if r["status"] == "ok":
        timing = f"{r['step_s'][-1]:8.3f} {r['tokens_per_s']:9.0f}"
    else:
        timing = f"{'-':>8} {'-':>9}"
    return (f"{r['attn']:<6} {r['seq_len']:>6} {str(r['checkpointing']):>5} {r['status']:>6} "
            f"{timing} {_gib(peak):>9} {plan_s:>9} {ratio:>9}")


def format_table(res: dict[str, Any]) -> str:
    """The printed summary of a :func:`check` result."""
    env, shape = res["environment"], res["shape"]
    lines = [f"device {env.get('name', env['device'])}; torch {env['torch']}, transformers "
             f"{env['transformers']}; Qwen3 {res['settings']['size']} (hidden "
             f"{shape['hidden_size']}, {shape['num_layers']} layers, vocab {shape['vocab_size']})",
             "FSDP2 train step (bf16 compute, fp32 masters + AdamW; batch 1; 2nd step timed; "
             "peak over both steps):", TRAIN_HEADER]
    lines += [format_train_row(r) for r in res["train"]]
    lines += [f"  {r['attn']} T={r['seq_len']} ckpt={r['checkpointing']}: {r['error']}"
              for r in res["train"] if r["status"] != "ok"]
    plans = {r["planner"]["status"] for r in res["train"] if "planner" in r}
    if plans - {"ok"}:
        lines.append(f"planner: {', '.join(sorted(plans))}")
    g = res.get("generation")
    if g:
        lines.append(f"generate: batch {g['batch']}, {g['prompt_tokens']} prompt + "
                     f"{g['new_tokens']} new tokens, {g['dtype']} weights, {g['tokenizer']}")
        for name in ("static", "hf"):
            r = g[name]
            if r["status"] == "ok":
                lines.append(f"  {name:<7} {r['tokens_per_s']:10.0f} tok/s  {r['seconds']:7.2f} s "
                             f" peak {_gib(r.get('peak_bytes'))} GiB")
            else:
                lines.append(f"  {name:<7} {r['status']}: {r.get('error')}")
        if "speedup_static_vs_hf" in g:
            lines.append(f"  static / hf: {g['speedup_static_vs_hf']:.2f}x")
    lines += [f"part {k}: {v:.1f} s" for k, v in res["parts_s"].items()]
    lines += res["skipped"]
    lines += [f"part {k} failed: {v}" for k, v in res.get("errors", {}).items()]
    lines.append(f"total {res.get('elapsed_s', float('nan')):.1f} s")
    return "\n".join(lines)
