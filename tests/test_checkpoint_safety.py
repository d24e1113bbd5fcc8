"""No code runs from a checkpoint (issue 25; docs/methods.md §2.7): a pickle placed as
``checkpoint/state.pt`` or as a DCP shard folder's ``.metadata`` is refused with one line,
and the code it carries never runs; real checkpoints still round-trip."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.rl import checkpoint as ck


class _Payload:
    """Unpickling this runs ``os.system(touch marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_state_pt_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    with open(ckpt / ck.STATE_FILE, "wb") as f:
        pickle.dump({"step": 3, "x": _Payload(marker)}, f)
    with pytest.raises(ValueError, match="cannot be loaded safely") as exc:
        ck.load_checkpoint(ckpt)
    assert "\n" not in str(exc.value) and str(ckpt / ck.STATE_FILE) in str(exc.value)
    assert not marker.exists()
    # the control: the same file through plain pickle does run the payload
    with open(ckpt / ck.STATE_FILE, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_corrupt_state_pt_is_one_line(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / ck.STATE_FILE).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="cannot be loaded safely") as exc:
        ck.load_checkpoint(ckpt)
    assert "\n" not in str(exc.value)


def test_real_checkpoint_round_trips_with_rng(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    np.random.seed(5)
    np.random.normal()  # a cached gaussian in the numpy state
    ck.save_checkpoint(tmp_path, model=model, optimizer=opt, step=7,
                       history=[{"step": 7, "reward_mean": 0.5}], config={"lr": 1e-4})
    want = (np.random.random(3), torch.rand(2))
    state = ck.load_checkpoint(tmp_path)
    assert state["step"] == 7 and state["config"] == {"lr": 1e-4}
    ck.set_rng_states(state["rng"])
    got = (np.random.random(3), torch.rand(2))
    assert np.array_equal(want[0], got[0]) and torch.equal(want[1], got[1])


def _dcp_folder(path: Path) -> dict:
    import warnings

    import torch.distributed.checkpoint as dcp
    model = torch.nn.Linear(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # single-process DCP warns that dist is not set up
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(path))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_dcp_metadata_is_read_by_the_restricted_unpickler(tmp_path: Path) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp
    shards = tmp_path / "shards-step1"
    want = _dcp_folder(shards)
    sd = {"model": {k: torch.zeros_like(v) for k, v in want.items()}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, storage_reader=ck._safe_reader(shards), checkpoint_id=str(shards))
    assert all(torch.equal(sd["model"][k], want[k]) for k in want)
    # a hostile .metadata: refused, and its payload never runs
    marker = tmp_path / "pwned"
    with open(shards / ".metadata", "wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises(ValueError, match="metadata .* cannot be loaded safely"):
        ck._safe_reader(shards).read_metadata()
    assert not marker.exists()


def test_state_naming_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    state = {"shards": "../../elsewhere", "world": 1, "optim_params": []}
    with pytest.raises(ValueError, match="not a shards-step"):
        ck.load_sharded(tmp_path, state, model=model, optimizer=opt)
