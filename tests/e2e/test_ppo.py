"""`alignlab ppo` on a tiny policy: metrics, ledger, checkpoint, exact resume mid-rollout, early stop,
and a critic started from a reward model."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from alignlab.cli import main
from alignlab.config import PPOConfig, load_config
from alignlab.errors import UserError
from alignlab.model.heads import ValueModel, load_reward_model
from alignlab.trainers.ppo import VALUE, ppo

RM_TINY = ["model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=1",
           "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1", "run.progress=false",
           "dummy_pairs=16", "steps=2", "run.batch_size=4", "max_length=96", "run.eval_every=0"]


def _cfg(policy_dir, out, *extra):
    return load_config(PPOConfig, None, [f"model.path={policy_dir}", f"run.out_dir={out}", "steps=4",
                                         "run.batch_size=4", "num_mini_batches=2", "num_ppo_epochs=2",
                                         "generation.max_new_tokens=12", "run.eval_every=2", "eval_prompts=2",
                                         "run.save_every=2", "run.progress=false", "optim.lr=1e-3", "prompts=8",
                                         *extra])


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ppo_logs_ppo_metrics_ledger_and_a_loadable_policy(policy_dir, tmp_path, capsys):
    run = ppo(_cfg(policy_dir, tmp_path / "run", "steps=5"), quiet=True)
    baseline, *steps = _records(run)
    assert "eval/pass_rate" in baseline and [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    for key in ("policy_loss", "value_loss", "clip_fraction", "value_clip_fraction", "approx_kl", "entropy",
                "explained_variance", "kl", "kl_coef", "score_mean", "non_score_reward", "pass_rate",
                "completion_length_mean", "eval/pass_rate"):
        assert key in steps[1], key
    assert steps[0]["kl"] == 0.0 and steps[0]["approx_kl"] < 1e-9  # the first update sees the rollout policy
    assert [r["rollouts"] for r in steps] == [1, 1, 1, 1, 2]  # 2 epochs x 2 mini-batches per rollout
    final = run / "checkpoints" / "final"
    assert (final / VALUE).is_file() and (final / "model.safetensors").is_file()
    with gzip.open(run / "rollouts.jsonl.gz", "rt") as handle:
        ledger = [json.loads(line) for line in handle]
    assert [r["step"] for r in ledger] == [1] * 4 + [5] * 4 and "completion" in ledger[0]
    assert main(["generate", str(final), "--prompt", "plan?", "max_new_tokens=4"]) == 0
    capsys.readouterr()
    assert main(["compare", str(policy_dir), str(run), "--samples", "1", "--max-new-tokens", "8",
                 "--out", str(tmp_path / "cmp")]) == 0
    training = capsys.readouterr().out.split("training:")[1].splitlines()
    assert training[3].split()[:3] == [str(policy_dir), "-", "-"]  # a bare checkpoint has no training record
    assert training[4].split()[:3] == [str(run), "ppo", "5"]
    assert "## Training" in (tmp_path / "cmp" / "compare.md").read_text()


def test_resume_mid_rollout_is_exact(policy_dir, tmp_path):
    straight = ppo(_cfg(policy_dir, tmp_path / "straight", "steps=6", "kl_coef=0.1", "adaptive_kl_target=0.5",
                        "run.eval_every=0"), quiet=True)
    partial = tmp_path / "partial"
    ppo(_cfg(policy_dir, partial, "steps=3", "kl_coef=0.1", "adaptive_kl_target=0.5", "run.eval_every=0"),
        quiet=True)
    shutil.rmtree(partial / "checkpoints" / "final")  # step_2 remains: half-way through the first rollout
    resumed = ppo(_cfg(policy_dir, partial, "steps=6", "kl_coef=0.1", "adaptive_kl_target=0.5",
                       "run.eval_every=0"), resume=True, quiet=True)
    for name in ("model.safetensors", VALUE):
        files = [(r / "checkpoints" / "final" / name).read_bytes() for r in (straight, resumed)]
        assert files[0] == files[1], name
    assert [r["kl_coef"] for r in _records(straight)] == [r["kl_coef"] for r in _records(resumed)]


def test_early_stop_on_approx_kl_starts_a_new_rollout(policy_dir, tmp_path):
    run = ppo(_cfg(policy_dir, tmp_path / "run", "steps=4", "early_stop_approx_kl=1e-7", "optim.lr=1e-2",
                   "run.eval_every=0"), quiet=True)
    steps = _records(run)
    assert steps[1]["approx_kl"] > 1e-7  # the second mini-batch saw a moved policy ...
    assert [r["rollouts"] for r in steps] == [1, 1, 2, 2]  # ... so the rollout's remaining updates were dropped
    assert steps[-1]["early_stops"] == 1


def test_critic_from_the_reward_model_reads_its_score_at_the_last_token(policy_dir, tmp_path):
    assert main(["train-rm", *RM_TINY, f"model.path={policy_dir}", f"run.out_dir={tmp_path / 'rm'}"]) == 0
    rm, tok = load_reward_model(str(tmp_path / "rm"))
    value = ValueModel.from_reward_model(rm).eval()
    ids = torch.tensor([tok.encode("- 30 分钟 read\n")])
    padded = torch.cat([ids, ids[:, :1]], 1)  # one more token: its value is the state after `ids`
    with torch.no_grad():
        expected = rm(ids, torch.ones_like(ids, dtype=torch.bool))
        got = value.completion_values(padded, torch.ones_like(padded, dtype=torch.bool), 1)[:, 0]
    torch.testing.assert_close(got, expected)
    run = ppo(_cfg(policy_dir, tmp_path / "ppo", f"reward.model={tmp_path / 'rm'}", "reward.rules_weight=0",
                   "steps=2", "run.eval_every=0"), quiet=True)
    saved = load_file(str(run / "checkpoints" / "final" / VALUE))
    assert not torch.equal(saved["score.weight"], rm.score.weight)  # the critic trained; the RM is untouched
    assert torch.equal(load_reward_model(str(tmp_path / "rm"))[0].score.weight, rm.score.weight)


def test_critic_from_a_reward_model_with_another_tokenizer_is_refused(policy_dir, tmp_path):
    assert main(["train-rm", *RM_TINY, "tokenizer.kind=bpe", "tokenizer.vocab_size=300",
                 f"run.out_dir={tmp_path / 'rm'}"]) == 0
    with pytest.raises(UserError, match="does not share the policy's tokenizer"):
        ppo(_cfg(policy_dir, tmp_path / "ppo", f"reward.model={tmp_path / 'rm'}"), quiet=True)
    assert not (tmp_path / "ppo").exists()


def test_recipe_loads_and_uneven_mini_batches_are_refused(tmp_path):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "ppo_study_plan.yaml"
    cfg = load_config(PPOConfig, recipe)
    assert cfg.mini_batch_size == 16 and cfg.updates_per_rollout == 8 and cfg.reward.model_weight == 0.1
    with pytest.raises(UserError, match="run.batch_size"):
        load_config(PPOConfig, recipe, ["run.batch_size=62"])
    assert main(["ppo", str(recipe), "adaptive_kl_target=1", "kl_coef=0", f"run.out_dir={tmp_path / 'x'}"]) == 2
    assert not (tmp_path / "x").exists()


def test_an_abstaining_reward_is_never_scored_zero(policy_dir, tmp_path):
    """`None` means "no score": PPO trains nothing on such a completion (it used to count it as 0)."""
    (tmp_path / "abstain.py").write_text("def abstain(prompts, completions, **kwargs):\n"
                                         "    return [None] * len(completions)\n")
    run = ppo(_cfg(policy_dir, tmp_path / "run", "steps=1", "run.eval_every=0", "run.save_every=0",
                   f"reward.function={tmp_path / 'abstain.py'}:abstain", "reward.rules_weight=0",
                   "optim.weight_decay=0", "optim.warmup_steps=0"), quiet=True)
    step = _records(run)[-1]
    assert step["abstained"] == 4 and step["score_mean"] is None  # NaN is logged as null
    before = load_file(str(policy_dir / "model.safetensors"))
    after = load_file(str(run / "checkpoints" / "final" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # no loss token: the policy did not move
