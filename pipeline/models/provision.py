"""Model provisioning (the ``models`` stage): every source ends as a directory that
:func:`pipeline.models.load` opens with plain ``from_pretrained``.

- ``builtin``: tiny Qwen3-/Llama-style model + character tokenizer, SFT on Countdown
  solver traces (deterministic for a seed).
- ``hub``: ``huggingface_hub.snapshot_download`` at a pinned revision into a configurable
  cache; the output directory links to the snapshot's files (no copy of the weights).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pipeline.models.builtin import build_model, builtin_spec
from pipeline.models.tokenizer import build_char_tokenizer
from pipeline.settings import BuiltinModel, HubModel
from pipeline.tasks import countdown
from pipeline.training.sft import train_sft

HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]


class ProvisionError(RuntimeError):
    """A model could not be provisioned; the message names the model."""


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Write into a temporary sibling and rename on success: never a half-written model."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it 0700: others on a shared cluster must read it
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def provision_builtin(
    spec: BuiltinModel | dict[str, Any],
    train: Sequence[countdown.Problem],
    out_dir: str | Path,
    *,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build, SFT-train and save a builtin model; returns a summary."""
    t0 = time.time()
    m = builtin_spec(spec)
    tokenizer = build_char_tokenizer(m.max_position_embeddings)
    model = build_model(m, tokenizer, seed=m.seed)
    pairs = [(countdown.prompt(p, "builtin"), countdown.trace(p)) for p in train]
    sft = m.sft
    history = train_sft(
        model, tokenizer, pairs,
        steps=sft.steps, batch_size=sft.batch_size, lr=sft.lr,
        weight_decay=sft.weight_decay, warmup_steps=sft.warmup_steps,
        grad_clip=sft.grad_clip, seed=m.seed, log_every=max(1, sft.steps // 50),
        on_log=on_log, progress=progress,
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {
        "source": "builtin",
        "arch": m.arch,
        "model_type": model.config.model_type,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_layers": model.config.num_hidden_layers,
        "vocab_size": model.config.vocab_size,
        "sft_examples": len(pairs),
        "sft_final_loss": history[-1]["loss"] if history else None,
        "sft_history": history,
        "seconds": time.time() - t0,
    }


def provision_hub(spec: HubModel | dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Download (or reuse from the cache) a pinned hub snapshot and link it into
    ``out_dir``. Offline, unknown id or revision → :class:`ProvisionError` naming it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from transformers import AutoConfig

    m = HubModel.of({"source": "hub", **spec} if isinstance(spec, dict) else spec)
    repo, rev = m.repo_id, m.revision
    t0 = time.time()
    kwargs = dict(repo_id=repo, revision=rev, cache_dir=m.cache_dir,
                  allow_patterns=HUB_PATTERNS)
    try:
        try:  # a pinned snapshot already in the cache needs no network at all
            snapshot = Path(snapshot_download(**kwargs, local_files_only=True))
        except LocalEntryNotFoundError:
            snapshot = Path(snapshot_download(**kwargs))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProvisionError(
            f"cannot provision hub model {repo}@{rev}: {type(exc).__name__}: {reason}"
        ) from exc
    try:
        config = AutoConfig.from_pretrained(snapshot, trust_remote_code=m.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable snapshot
        raise ProvisionError(f"hub model {repo}@{rev}: unreadable config: {exc}") from exc
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise ProvisionError(f"hub model {repo}@{rev} is not a causal LM (architectures {archs})")
    with atomic_dir(out_dir) as tmp:
        for f in sorted(snapshot.iterdir()):
            os.symlink(f.resolve(), tmp / f.name)
    return {
        "source": "hub",
        "repo_id": repo,
        "revision": rev,
        "snapshot": str(snapshot),
        "model_type": config.model_type,
        "num_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "seconds": time.time() - t0,
        "torch": torch.__version__,
    }
