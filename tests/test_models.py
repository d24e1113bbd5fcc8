"""Provisioning: builtin round trip through save/from_pretrained, determinism, hub
snapshots from a local cache, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from pipeline.models import load
from pipeline.models import provision as prov
from pipeline.models.tokenizer import build_char_tokenizer
from pipeline.tasks import countdown

SFT = {"steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.01,
       "grad_clip": 1.0}


TINY = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=None, max_position_embeddings=256, rope_theta=10000.0,
            tie_word_embeddings=True, seed=0)


def _spec(arch: str) -> dict:
    return {**TINY, "source": "builtin", "arch": arch, "sft": SFT}


@pytest.fixture(scope="module")
def train_problems():
    return countdown.generate(64, seed=1)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_builtin_round_trip(arch, train_problems, tmp_path):
    out = tmp_path / "model"
    summary = prov.provision_builtin(_spec(arch), train_problems, out, progress=False)
    assert summary["model_type"] == arch and summary["num_layers"] == 2
    assert summary["sft_history"][-1]["step"] == SFT["steps"]
    model, tok = load(out, device="cpu")
    assert type(model).__name__ == {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    text = countdown.prompt(train_problems[0]) + countdown.trace(train_problems[0])
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    # a second provisioning with the same seed gives bit-identical weights
    out2 = tmp_path / "model2"
    prov.provision_builtin(_spec(arch), train_problems, out2, progress=False)
    model2, _ = load(out2, device="cpu")
    for (n1, p1), (_, p2) in zip(model.state_dict().items(), model2.state_dict().items(),
                                 strict=True):
        assert torch.equal(p1, p2), n1
    assert not list(tmp_path.glob(".model*tmp*")), "temporary directories left behind"


def test_char_tokenizer_covers_task_text():
    tok = build_char_tokenizer()
    problems = countdown.generate(50, seed=3)
    for p in problems:
        ids = tok(countdown.prompt(p) + countdown.trace(p), add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids
    assert len(tok(" <answer>", add_special_tokens=False).input_ids) == 2


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load(tmp_path / "nope")


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError), prov.atomic_dir(out) as tmp:
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("killed")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _fake_hub_cache(cache, repo, revision, model, tok):
    """The huggingface_hub cache layout, as a real download leaves it."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / revision
    model.save_pretrained(snap)
    tok.save_pretrained(snap)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    return snap


def test_hub_snapshot_from_local_cache(tmp_path, monkeypatch, tiny_model, char_tokenizer):
    revision = "0123456789abcdef0123456789abcdef01234567"
    snap = _fake_hub_cache(tmp_path / "hf", "org/tiny", revision, tiny_model, char_tokenizer)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = {"source": "hub", "repo_id": "org/tiny", "revision": revision,
            "cache_dir": str(tmp_path / "hf"), "trust_remote_code": False, "dtype": "float32"}
    summary = prov.provision_hub(spec, tmp_path / "out")
    assert summary["snapshot"] == str(snap)
    assert (tmp_path / "out" / "config.json").is_symlink()
    model, _ = load(tmp_path / "out", device="cpu")
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(ids).logits, tiny_model(ids).logits, rtol=0, atol=1e-5)


def test_hub_offline_unknown_model_names_it(tmp_path):
    spec = {"source": "hub", "repo_id": "nobody/no-such-model", "revision": "main",
            "cache_dir": str(tmp_path / "hf"), "trust_remote_code": False, "dtype": "float32"}
    code = (
        "import json,sys\nfrom pipeline.models.provision import provision_hub\n"
        f"provision_hub(json.loads({json.dumps(json.dumps(spec))}), {str(tmp_path / 'o')!r})"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "cannot provision hub model nobody/no-such-model@main" in last
    assert not (tmp_path / "o").exists()


def test_hub_rejects_non_causal_lm(tmp_path, monkeypatch, tiny_model, char_tokenizer):
    revision = "f" * 40
    snap = _fake_hub_cache(tmp_path / "hf", "org/enc", revision, tiny_model, char_tokenizer)
    cfg = json.loads((snap / "config.json").read_text())
    cfg["architectures"] = ["BertModel"]
    (snap / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = {"source": "hub", "repo_id": "org/enc", "revision": revision,
            "cache_dir": str(tmp_path / "hf"), "trust_remote_code": False, "dtype": "float32"}
    with pytest.raises(prov.ProvisionError, match="org/enc@f+ is not a causal LM"):
        prov.provision_hub(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()
