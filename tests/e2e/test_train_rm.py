"""Reward-model training end to end on CPU: the seed's quick run, learning, resume, CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from alignlab.cli import main
from alignlab.config import RewardModelConfig, load_config
from alignlab.data.preferences import read_preferences, write_preferences
from alignlab.model.heads import load_reward_model
from alignlab.rewards.learned import score
from alignlab.tasks.study_plan.synthetic import preference_pairs
from alignlab.trainers.reward_model import train_reward_model, train_rm

TINY = ["tokenizer.kind=byte", "model.arch.hidden_size=32", "model.arch.intermediate_size=64",
        "model.arch.num_hidden_layers=2", "model.arch.num_attention_heads=2",
        "model.arch.num_key_value_heads=1", "run.progress=false", "run.log_every=1"]


def test_seed_quick_train_rm_api(tmp_path, capsys):
    final = train_rm(pairs=20, steps=20, batch_size=4, block_size=128, n_layer=2, n_head=2, n_embd=64,
                     lr=1e-4, device="cpu", out_dir=str(tmp_path / "rm"))
    out = capsys.readouterr().out
    assert "Test 1:" in out and "Good:" in out and "Margin:" in out and "Accuracy:" in out
    rm, tok = load_reward_model(str(final))
    assert rm.arch.num_hidden_layers == 2 and rm.arch.hidden_size == 64
    also, _ = load_reward_model(str(tmp_path / "rm"))  # a run directory works too
    assert also.arch == rm.arch
    records = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/accuracy" in r for r in records) and records[-1]["step"] == 20


@pytest.mark.slow
def test_reward_model_learns_dummy_pairs(tmp_path):
    # The README's run: default 2-layer / 64 native GPT with its own BPE tokenizer.
    cfg = load_config(RewardModelConfig, None, [
        "run.progress=false", "dummy_pairs=600", "eval_fraction=0.2", "steps=500", "run.batch_size=16",
        "optim.lr=1e-3", "run.eval_every=250", "run.save_every=0", "max_length=192",
        f"run.out_dir={tmp_path / 'rm'}"])
    run = train_reward_model(cfg, quiet=True)
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["final/accuracy"] >= 0.95, final
    assert (run / "checkpoints" / "best" / "reward_model.json").exists()


@pytest.mark.slow
def test_reward_model_resume_is_bit_identical(tmp_path):
    cfg = load_config(RewardModelConfig, None, [
        *TINY, "dummy_pairs=40", "steps=6", "run.batch_size=4", "run.save_every=3",
        "run.keep_checkpoints=5", "run.eval_every=0", f"run.out_dir={tmp_path / 'rm'}"])
    run = train_reward_model(cfg, quiet=True)
    weights = (run / "checkpoints" / "final" / "model.safetensors").read_bytes()
    shutil.rmtree(run / "checkpoints" / "final")
    train_reward_model(cfg, resume=True, quiet=True)
    assert (run / "checkpoints" / "final" / "model.safetensors").read_bytes() == weights


def test_cli_train_rm_and_score(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl.gz"
    write_preferences(data, read_preferences(preference_pairs(24, seed=3)))
    assert main(["train-rm", *TINY, f"data={data}", "steps=4", "run.batch_size=4",
                 f"run.out_dir={tmp_path / 'rm'}"]) == 0
    capsys.readouterr()
    assert main(["score", str(tmp_path / "rm"), "--pairs", f"{data}[:5]", "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("Test ") == 2 and "Accuracy:" in out and "/5)" in out
    rm, tok = load_reward_model(str(tmp_path / "rm" / "checkpoints" / "final"))
    assert len(score(rm, tok, ["p1", "p2"], ["a", "b"])) == 2


def test_cli_train_rm_bad_data_line(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    assert main(["train-rm", *TINY, f"data={data}", "steps=1", f"run.out_dir={tmp_path / 'rm'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{data}:2" in err and "rejected" in err
    assert not (tmp_path / "rm").exists()


def test_a_resumed_run_keeps_the_same_best_checkpoint(tmp_path):
    """`checkpoints/best` is replaced only by a more accurate model, a resumed run included: the first
    evaluation after a resume no longer overwrites a better best (constant lr: 3 steps then 6 = 6 steps)."""
    def cfg(name: str, steps: int):
        return load_config(RewardModelConfig, None, [
            *TINY, "dummy_pairs=40", f"steps={steps}", "run.batch_size=4", "run.save_every=1", "run.eval_every=1",
            "optim.schedule=constant", "optim.warmup_steps=0", "optim.lr=3e-3", f"run.out_dir={tmp_path / name}"])
    straight = train_reward_model(cfg("a", 6), quiet=True)
    train_reward_model(cfg("b", 3), quiet=True)
    resumed = train_reward_model(cfg("b", 6), resume=True, quiet=True)
    for name in ("final", "best"):
        path = f"checkpoints/{name}/model.safetensors"
        assert (resumed / path).read_bytes() == (straight / path).read_bytes(), name
    accuracies = [json.loads(line)["eval/accuracy"] for line in (straight / "metrics.jsonl").read_text().splitlines()
                  if "eval/accuracy" in line]
    assert max(accuracies[:3]) >= max(accuracies[3:])  # so the old code's first post-resume eval replaced it
