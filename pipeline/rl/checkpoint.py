"""Atomic training checkpoints: model and optimizer state, RNG states, step, history.

``out_dir/checkpoint/state.pt`` is written to a temporary file in the same directory and
moved into place with ``os.replace`` (atomic on POSIX), so a kill at any moment leaves
either the previous checkpoint or the new one, never half of one.

Under FSDP2 (:func:`save_sharded`) every process writes its shards of the model and
AdamW state with ``torch.distributed.checkpoint`` into ``checkpoint/shards-step<N>/``;
only then does process 0 write ``state.pt`` (RNG, step, history, config and the name of
that folder) atomically and delete older shard folders. ``state.pt`` therefore always
names a complete set of shards. Resuming needs the same number of processes.

No code runs from a checkpoint (docs/methods.md §2.7): ``state.pt`` holds only tensors and
plain Python values and is read with ``torch.load(weights_only=True)``; the DCP shard
folder's ``.metadata`` (a pickle that ``torch.distributed.checkpoint`` would read with
``pickle.load``) is read by :class:`SafeReader`, whose unpickler admits only DCP's own
metadata classes, torch dtypes and sizes. Anything else is refused with one line.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rng_states() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                              "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)),
                                        int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos,
                         has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(ckpt_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    step: int, history: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """Write the full training state atomically (plus a readable ``history.json``)."""
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": rng_states(),
        "step": step,
        "history": history,
        "config": config,
    }
    atomic_write(ckpt_dir / STATE_FILE, lambda p: torch.save(state, p))
    atomic_write(ckpt_dir / "history.json",
                 lambda p: Path(p).write_text(json.dumps(history, indent=1)))


def load_checkpoint(ckpt_dir: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint. ``weights_only``: a pickle
    that would run code, or a corrupt file, is a one-line ``ValueError`` naming it."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"rl: checkpoint {path} cannot be loaded safely ({first[:160]}); "
                         "move it aside to start afresh") from None
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"rl: checkpoint {path} is not a training state (no step)")
    return state


_DCP_META = "torch.distributed.checkpoint.metadata"
_SAFE = {("torch", "Size"), ("torch.serialization", "_get_layout"),
         ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
         ("torch.distributed.checkpoint.filesystem", "_StoragePrefix"),
         ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
         ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata classes, torch dtypes and sizes; nothing that can run code."""

    def find_class(self, module: str, name: str) -> Any:
        ok = ((module, name) in _SAFE or module == _DCP_META
              or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
        if not ok:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in DCP metadata")
        return super().find_class(module, name)


def _safe_reader(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        """``FileSystemReader`` whose ``.metadata`` goes through the restricted unpickler."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            meta_path = self._get_metadata_path(kwargs.get("rank"))
            try:
                with self.fs.create_stream(meta_path, "rb") as f:
                    metadata = _MetadataUnpickler(f).load()
            except Exception as exc:  # noqa: BLE001
                raise ValueError(f"rl: checkpoint metadata {meta_path} cannot be loaded "
                                 f"safely ({exc}); move the checkpoint aside") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata
    return SafeReader(str(path))


def save_sharded(ckpt_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 step: int, history: list[dict[str, Any]], config: dict[str, Any],
                 dist: Any) -> None:
    """Sharded checkpoint of an FSDP2 model and its optimizer (a collective: every process
    calls it). ``dist``: the trainer's :class:`pipeline.rl.distributed.Dist`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    ckpt_dir = Path(ckpt_dir)
    name = f"shards-step{step}"
    target = ckpt_dir / name
    if dist.main:
        if target.exists():  # a half-written folder of a killed run
            shutil.rmtree(target)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(target))
    dist.barrier()
    if dist.main:
        state = {"shards": name, "world": dist.world, "rng": rng_states(), "step": step,
                 # params with AdamW state (BuPO's IPA phase leaves blocks > k without)
                 "optim_params": sorted(optim_sd.get("state", {})),
                 "history": history, "config": config}
        atomic_write(ckpt_dir / STATE_FILE, lambda p: torch.save(state, p))
        atomic_write(ckpt_dir / "history.json",
                     lambda p: Path(p).write_text(json.dumps(history, indent=1)))
        for old in ckpt_dir.glob("shards-step*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_sharded(ckpt_dir: Path, state: dict[str, Any], *, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer) -> None:
    """Load the shards ``state`` names into an FSDP2 model and its optimizer (a
    collective). ``ValueError`` for a checkpoint of another world size or of an
    unsharded run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    if "shards" not in state:
        raise ValueError(f"rl: {ckpt_dir} holds an unsharded checkpoint; resume it without "
                         "rl.distributed: fsdp2 or use another out_dir")
    if not re.fullmatch(r"shards-step\d+", str(state["shards"])):
        raise ValueError(f"rl: {ckpt_dir}/{STATE_FILE} names shards {state['shards']!r}, "
                         "not a shards-step<N> folder of this checkpoint")
    world = torch.distributed.get_world_size()
    if state["world"] != world:
        raise ValueError(f"rl: {ckpt_dir} was written by {state['world']} processes, this run "
                         f"has {world}; resume needs the same number")
    model_sd, optim_sd = get_state_dict(model, optimizer)  # initialises every param's state
    # keep only the states the checkpoint has: a param that had none starts fresh later,
    # as in the uninterrupted run (loading replaces the optimizer's whole state)
    keep = set(state["optim_params"])
    optim_sd["state"] = {k: v for k, v in optim_sd["state"].items() if k in keep}
    sd = {"model": model_sd, "optimizer": optim_sd}
    shards = Path(ckpt_dir) / str(state["shards"])
    dcp.load(sd, storage_reader=_safe_reader(shards), checkpoint_id=str(shards))
    set_state_dict(model, optimizer, model_state_dict=sd["model"],
                   optim_state_dict=sd["optimizer"], options=StateDictOptions(strict=False))
    for name, p in model.named_parameters():
        if name not in keep:
            optimizer.state.pop(p, None)


def set_aside(ckpt_dir: Path, changes: list[str], dist: Any) -> None:
    """A checkpoint of another config is moved (never deleted) to
    ``checkpoint.stale-<UTC time>`` beside it, with a line in the log; training then starts
    at step 1 (docs/methods.md §2.4). Process 0 moves it; every process waits (``dist``:
    the trainer's :class:`pipeline.rl.distributed.Dist`)."""
    if dist.main:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        stale = ckpt_dir.with_name(f"{ckpt_dir.name}.stale-{stamp}")
        ckpt_dir.rename(stale)
        print(f"rl: checkpoint config differs in {changes}: moved {ckpt_dir} to {stale}; "
              "training starts at step 1", file=sys.stderr, flush=True)
    dist.barrier()
