"""Tuned lens: one affine translator per decoder block (docs/methods.md §4).

A translator maps a hidden state to ``h' = h + W h + b`` (``W``, ``b`` zero-initialised,
so a fresh lens *is* the logit lens); the lens logits are ``W_U norm_f(h')``
(:class:`pipeline.depth.readout.Readout`). A model with L blocks has L translators,
``translators[0..L-1]``. Which hidden state h[l] (docs/methods.md §0.1: h[0] =
embedding output, h[l] = raw output of block l) each one reads is the ``alignment``:

``"input"`` (the ``tuned-lens`` library; its ``TunedLens.forward(h, idx)`` with
    ``h = output_hidden_states[idx]``): translator i reads the *input* of block i+1
    (1-based), i.e. **h[i] for i = 0..L-1**. h[L] has no translator: it is read with
    the plain logit lens, which *is* the model's output distribution.
``"output"`` (the guess-then-refine authors' scripts, which hook block outputs and call
    ``lens(h, idx)`` with the block's 0-based index): translator i reads the *output* of
    block i+1 (1-based), i.e. **h[i+1] for i = 0..L-1**. h[0] has no translator (plain
    logit lens on the embeddings); translator L-1 reads h[L], where the logit lens already
    equals the model output, so training keeps it at the identity (its KL gradient is
    exactly zero there) — a lens loaded from elsewhere may of course set it.

``translator_index(l)`` gives the translator used for h[l] (None = identity).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.model_access import find_layout

ALIGNMENTS = ("input", "output")
CONFIG_FILE = "tuned_lens.json"
WEIGHTS_FILE = "tuned_lens.safetensors"
FORMAT = "pipeline.depth.TunedLens"
FORMAT_VERSION = 1


class TunedLens(nn.Module):
    """L affine translators ``h + W h + b`` (fp32), zero-initialised (= logit lens).

    ``translators`` is an ``nn.ModuleList`` of ``nn.Linear(d, d)`` whose state-dict keys
    (``"0.weight"``, ``"0.bias"``, …) are those of the ``tuned-lens`` library's
    ``layer_translators``, so its checkpoints load directly (:meth:`load_library`).
    """

    def __init__(self, d_model: int, num_layers: int, *, alignment: str = "input",
                 bias: bool = True, meta: dict | None = None) -> None:
        super().__init__()
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        if d_model < 1 or num_layers < 1:
            raise ValueError("d_model and num_layers must be >= 1")
        self.d_model = int(d_model)
        self.num_layers = int(num_layers)
        self.alignment = alignment
        self.bias = bool(bias)
        self.meta = dict(meta or {})
        self.translators = nn.ModuleList()
        for _ in range(self.num_layers):
            lin = nn.Linear(self.d_model, self.d_model, bias=self.bias, dtype=torch.float32)
            nn.init.zeros_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
            self.translators.append(lin)

    # --- construction ------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, *, alignment: str = "input",
                   bias: bool = True) -> TunedLens:
        """A zero (identity) lens sized for ``model``, on its ``lm_head`` device."""
        layout = find_layout(model)
        d_model = int(layout.lm_head.weight.shape[1])
        config = getattr(model, "config", None)
        meta = {"base_model_name_or_path": getattr(config, "name_or_path", None) or None,
                "model_type": getattr(config, "model_type", None),
                "vocab_size": int(layout.lm_head.weight.shape[0])}
        lens = cls(d_model, len(layout.blocks), alignment=alignment, bias=bias, meta=meta)
        return lens.to(layout.lm_head.weight.device)

    # --- application ----------------------------------------------------------------
    def translator_index(self, layer: int) -> int | None:
        """Translator applied to h[layer] (0 ≤ layer ≤ L), or None (identity)."""
        if not 0 <= layer <= self.num_layers:
            raise IndexError(f"layer {layer} outside h[0]..h[{self.num_layers}]")
        if self.alignment == "input":
            return layer if layer < self.num_layers else None
        return layer - 1 if layer > 0 else None

    def trained_layers(self) -> list[int]:
        """The h[l] indices whose translators :func:`train_tuned_lens` fits (the others
        are identity: no translator, or h[L] under ``"output"``)."""
        if self.alignment == "input":
            return list(range(self.num_layers))
        return list(range(1, self.num_layers))

    def transform_hidden(self, h: Tensor, layer: int) -> Tensor:
        """``h + W h + b`` with the translator of h[layer] (fp32), or ``h`` as fp32."""
        idx = self.translator_index(layer)
        lin = None if idx is None else self.translators[idx]
        if lin is None:
            return h.to(torch.float32)
        h = h.to(device=lin.weight.device, dtype=lin.weight.dtype)
        return h + lin(h)

    def forward(self, h: Tensor, layer: int) -> Tensor:
        return self.transform_hidden(h, layer)

    # --- persistence ------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "d_model": self.d_model, "num_layers": self.num_layers,
                "alignment": self.alignment, "bias": self.bias, "meta": self.meta}

    def save(self, directory: str | Path) -> Path:
        """Write ``tuned_lens.safetensors`` + ``tuned_lens.json`` into ``directory``
        (created; names chosen so a lens can sit next to a model's own files)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", torch.float32).contiguous()
                 for k, v in self.translators.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
        (directory / CONFIG_FILE).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module | None = None, *,
             alignment: str | None = None) -> TunedLens:
        """Load a lens written by :meth:`save`. With ``model``, its block count and width
        are checked and the lens is moved to its ``lm_head`` device. ``alignment``
        overrides the saved one (e.g. to reproduce the authors' index shift)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not cfg_path.exists() or not w_path.exists():
            raise FileNotFoundError(f"no tuned lens in {directory} (need {CONFIG_FILE} and "
                                    f"{WEIGHTS_FILE})")
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("format") != FORMAT:
            raise ValueError(f"{cfg_path}: not a {FORMAT} config")
        lens = cls(cfg["d_model"], cfg["num_layers"], alignment=alignment or cfg["alignment"],
                   bias=cfg["bias"], meta=cfg.get("meta"))
        lens.translators.load_state_dict(load_file(str(w_path)))
        return lens._check_and_place(model)

    @classmethod
    def load_library(cls, directory: str | Path, model: nn.Module | None = None, *,
                     alignment: str = "input") -> TunedLens:
        """Load a ``tuned-lens`` library checkpoint (``config.json`` + ``params.pt``,
        e.g. a published lens). The library's own indexing is ``"input"``; pass
        ``"output"`` to apply its translators the way the authors' scripts did."""
        directory = Path(directory)
        cfg = json.loads((directory / "config.json").read_text())
        state = torch.load(directory / "params.pt", map_location="cpu", weights_only=True)
        lens = cls(int(cfg["d_model"]), int(cfg["num_hidden_layers"]), alignment=alignment,
                   bias=bool(cfg.get("bias", True)),
                   meta={"base_model_name_or_path": cfg.get("base_model_name_or_path"),
                         "source": "tuned-lens library"})
        lens.translators.load_state_dict({k: v.float() for k, v in state.items()})
        return lens._check_and_place(model)

    def _check_and_place(self, model: nn.Module | None) -> TunedLens:
        if model is None:
            return self
        layout = find_layout(model)
        n_blocks, width = len(layout.blocks), int(layout.lm_head.weight.shape[1])
        if (n_blocks, width) != (self.num_layers, self.d_model):
            raise ValueError(f"lens is for {self.num_layers} blocks × d={self.d_model}, "
                             f"model has {n_blocks} blocks × d={width}")
        return self.to(layout.lm_head.weight.device)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, num_layers={self.num_layers}, "
                f"alignment={self.alignment!r}, bias={self.bias}")
