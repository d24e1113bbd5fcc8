"""Atomic training checkpoints: model and optimizer state, RNG states, step, history.

``out_dir/checkpoint/state.pt`` is written to a temporary file in the same directory and
moved into place with ``os.replace`` (atomic on POSIX), so a kill at any moment leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
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
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                              "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
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
    """The saved state, or None when there is no checkpoint."""
    path = ckpt_dir / STATE_FILE
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
