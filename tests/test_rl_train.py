"""End-to-end tests of pipeline.rl.train on a tiny random model with a toy reward:
every method runs, BuPO switches phase after s_inter steps with one optimizer, a killed
run resumes to the identical result, a NaN loss fails loudly and leaves no final model."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.models import load
from pipeline.models.builtin import build_model
from pipeline.rl import METHODS, RLConfig, train
from pipeline.rl.checkpoint import load_checkpoint
from pipeline.rl.trainer import TIME_KEYS
from pipeline.tasks import countdown

SPEC = dict(arch="qwen3", hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=None, max_position_embeddings=256, rope_theta=10000.0,
            tie_word_embeddings=True, seed=0)
PROBLEMS = countdown.generate(16, seed=3)


def prompt_fn(p: countdown.Problem) -> str:
    return countdown.prompt(p, "builtin")


def toy_reward(p: countdown.Problem, text: str) -> float:
    """1 when the response mentions a digit of the target: varies within groups."""
    return float(str(p.target)[0] in text)


def _cfg(**kw) -> RLConfig:
    base = dict(steps=3, prompts_per_step=4, group_size=4, max_new_tokens=20, lr=1e-3,
                bupo_layer=1, s_inter=2, updates_per_batch=2, seed=0)
    return RLConfig(**{**base, **kw})


def _model(char_tokenizer):
    return build_model(SPEC, char_tokenizer, seed=0).eval()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs(method, char_tokenizer, tmp_path):
    model = _model(char_tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    hist = train(model, char_tokenizer, PROBLEMS, toy_reward, _cfg(method=method),
                 prompt_fn=prompt_fn, out_dir=tmp_path)
    assert [h["step"] for h in hist] == [1, 2, 3]
    for h in hist:
        for key in ("reward_mean", "accuracy", "response_length", "entropy", "clip_frac",
                    "loss", "grad_norm", "step_time"):
            assert math.isfinite(h[key]), (key, h)
    if method.startswith("bupo"):
        assert [h["phase"] for h in hist] == ["ipa", "ipa", "grpo"]
        assert all(math.isfinite(h["entropy_k"]) and -1 <= h["cos_kL"] <= 1 for h in hist)
    if "rhythm" in method or method.startswith("credit"):
        assert all(1 <= h["gamma_mean"] <= 1.5 and 0 < h["gamma_amp_frac"] < 1 for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert (tmp_path / "model" / "config.json").exists()
    assert (tmp_path / "history.json").exists()


def test_bupo_history_carries_delta_k_and_layer_k(char_tokenizer, tmp_path):
    """A 2-step BuPO run logs ΔH^k = mean H(π^k) − mean H(π^{k−1}) and k on the
    diagnostic steps (step 1 and every diag_every), and training.csv picks them up."""
    import json

    from pipeline.comparison.tables import load_histories

    k = 2
    model = _model(char_tokenizer)
    with torch.no_grad():  # the tiny init gives uniform internal policies (ΔH^k = 0 exactly)
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6.0)
    hist = train(model, char_tokenizer, PROBLEMS, toy_reward,
                 _cfg(method="bupo", steps=2, s_inter=1, bupo_layer=k, diag_every=2),
                 prompt_fn=prompt_fn, out_dir=tmp_path, save_model=False)
    assert [h["phase"] for h in hist] == ["ipa", "grpo"]
    for h in hist:
        assert h["layer_k"] == k
        assert math.isfinite(h["delta_k"]) and h["delta_k"] != 0
        assert math.isfinite(h["entropy_k"]) and -1 <= h["cos_kL"] <= 1
    grpo = train(_model(char_tokenizer), char_tokenizer, PROBLEMS, toy_reward,
                 _cfg(method="grpo", steps=1), prompt_fn=prompt_fn,
                 out_dir=tmp_path / "grpo", save_model=False)
    assert "delta_k" not in grpo[0] and "layer_k" not in grpo[0]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(hist + [{"step": 3, "delta_k": math.nan, "layer_k": k}]))
    tr = load_histories([{"path": str(path), "model": "m", "method": "bupo", "seed": 0}])
    for metric in ("delta_k", "layer_k", "cos_kL", "entropy_k"):
        got = tr[tr.metric == metric].set_index("step")["value"]
        want = {h["step"]: h[metric] for h in hist}
        if metric == "layer_k":
            want[3] = k  # the NaN delta_k of step 3 gives no row
        assert got.to_dict() == pytest.approx(want), metric


def test_bupo_one_optimizer_through_the_switch(char_tokenizer, tmp_path):
    model = _model(char_tokenizer)
    cfg = _cfg(method="bupo", steps=4, s_inter=3, updates_per_batch=1)
    hist = train(model, char_tokenizer, PROBLEMS, toy_reward, cfg, prompt_fn=prompt_fn,
                 out_dir=tmp_path, save_model=False)
    assert [h["phase"] for h in hist] == ["ipa"] * 3 + ["grpo"]
    state = load_checkpoint(tmp_path / "checkpoint")
    names = [n for n, _ in model.named_parameters()]
    steps = {names[i]: int(s["step"]) for i, s in state["optimizer"]["state"].items()}
    assert steps["model.embed_tokens.weight"] == 4  # never reset
    assert steps["model.layers.0.mlp.up_proj.weight"] == 4
    assert steps["model.layers.1.mlp.up_proj.weight"] == 1  # trained from the switch on
    assert steps["model.norm.weight"] == 1


class Killed(Exception):
    pass


def test_resume_is_identical(char_tokenizer, tmp_path):
    cfg = _cfg(method="rhythm_coupled", steps=4, save_every=2)
    full_model = _model(char_tokenizer)
    full = train(full_model, char_tokenizer, PROBLEMS, toy_reward, cfg, prompt_fn=prompt_fn,
                 out_dir=tmp_path / "full")

    def kill(m):
        if m["step"] == 3:  # after step 3, before its checkpoint would matter
            raise Killed

    with pytest.raises(Killed):
        train(_model(char_tokenizer), char_tokenizer, PROBLEMS, toy_reward, cfg,
              prompt_fn=prompt_fn, out_dir=tmp_path / "cut", on_step=kill)
    assert not (tmp_path / "cut" / "model").exists()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint")["step"] == 2
    torch.manual_seed(123)  # a fresh process would have other RNG states
    resumed_model = build_model(SPEC, char_tokenizer, seed=7)  # weights come from the checkpoint
    resumed = train(resumed_model, char_tokenizer, PROBLEMS, toy_reward, cfg,
                    prompt_fn=prompt_fn, out_dir=tmp_path / "cut")
    for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)

    def strip(hist):
        return [{k: v for k, v in h.items() if k not in TIME_KEYS} for h in hist]

    assert strip(full) == strip(resumed)
    reloaded, _ = load(tmp_path / "cut" / "model", device="cpu")
    for a, b in zip(full_model.parameters(), reloaded.parameters(), strict=True):
        assert torch.equal(a, b)


def test_changed_config_starts_afresh_and_keeps_the_old_checkpoint(char_tokenizer, tmp_path,
                                                                   capsys):
    """A finished run whose lr then changes trains again from step 1, equal to a run in an
    empty folder; the old checkpoint is moved aside (not deleted), with a line saying so."""
    cfg = _cfg(method="grpo", steps=2, save_every=1)
    train(_model(char_tokenizer), char_tokenizer, PROBLEMS, toy_reward, cfg,
          prompt_fn=prompt_fn, out_dir=tmp_path / "run")
    new_cfg = _cfg(method="grpo", steps=2, save_every=1, lr=5e-4)
    again_model = _model(char_tokenizer)
    again = train(again_model, char_tokenizer, PROBLEMS, toy_reward, new_cfg,
                  prompt_fn=prompt_fn, out_dir=tmp_path / "run")
    fresh_model = _model(char_tokenizer)
    fresh = train(fresh_model, char_tokenizer, PROBLEMS, toy_reward, new_cfg,
                  prompt_fn=prompt_fn, out_dir=tmp_path / "fresh")
    assert [h["step"] for h in again] == [1, 2]
    assert [h["reward_mean"] for h in again] == [h["reward_mean"] for h in fresh]
    for a, b in zip(again_model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(a, b)
    stale = list((tmp_path / "run").glob("checkpoint.stale-*"))
    assert len(stale) == 1 and load_checkpoint(stale[0])["config"]["lr"] == 1e-3
    assert load_checkpoint(tmp_path / "run" / "checkpoint")["config"]["lr"] == 5e-4
    err = capsys.readouterr().err
    assert "config differs in ['lr']" in err and "moved" in err


def test_nan_loss_raises_and_writes_no_model(char_tokenizer, tmp_path):
    with pytest.raises(FloatingPointError, match=r"step 1 \(method bupo"):
        train(_model(char_tokenizer), char_tokenizer, PROBLEMS, lambda p, t: math.nan,
              _cfg(method="bupo"), prompt_fn=prompt_fn, out_dir=tmp_path)
    assert not (tmp_path / "model").exists()
    assert not (tmp_path / "history.json").exists()
    assert not (tmp_path / "checkpoint").exists()


class FakeRun:
    def __init__(self):
        self.logged_params, self.logged = {}, []

    def params(self, p):
        self.logged_params.update(p)

    def metrics(self, m, step=None):
        self.logged.append((step, m))


def test_logs_params_and_step_metrics(char_tokenizer, tmp_path):
    run = FakeRun()
    train(_model(char_tokenizer), char_tokenizer, PROBLEMS, toy_reward, _cfg(method="bupo"),
          prompt_fn=prompt_fn, out_dir=tmp_path, run=run, save_model=False)
    assert run.logged_params["rl"]["method"] == "bupo"
    assert [s for s, _ in run.logged] == [1, 2, 3]
    assert {"reward_mean", "entropy_k", "cos_kL", "clip_frac", "ipa", "step_time"} <= set(
        run.logged[0][1])
    assert all(isinstance(v, float) for _, m in run.logged for v in m.values())


def test_trains_with_numbers_written_as_yaml_strings(char_tokenizer, tmp_path):
    """``lr: 1e-4`` is a string to PyYAML (YAML 1.1 floats need a dot); the validated config
    reads it as the number, and the trainer takes the section as it is (issue 25)."""
    import yaml

    from pipeline.validation import validate

    text = ("experiment: x\nmodels: {m: {source: builtin, arch: qwen3}}\n"
            "rl: {models: [m], methods: [grpo], evaluate: [], trainer: {lr: 1e-4, steps: '2', "
            "prompts_per_step: 4, group_size: 4, max_new_tokens: 20, betas: ['0.9', 9.9e-1]}}\n")
    raw = yaml.safe_load(text)
    assert raw["rl"]["trainer"]["lr"] == "1e-4"  # what PyYAML gives
    trainer = validate(raw)["rl"]["trainer"]
    assert trainer["lr"] == 1e-4 and trainer["steps"] == 2 and trainer["betas"] == [0.9, 0.99]
    model = _model(char_tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    hist = train(model, char_tokenizer, PROBLEMS, toy_reward,
                 RLConfig.from_dict({**trainer, "seed": 0}), prompt_fn=prompt_fn,
                 out_dir=tmp_path)
    assert [h["step"] for h in hist] == [1, 2]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
