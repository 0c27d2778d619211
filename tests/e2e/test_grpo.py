"""GRPO end to end on a tiny native policy: metrics, ledger, preflight, checkpoints, exact resume."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from alignlab.backends.grpo import grpo
from alignlab.cli import main
from alignlab.config import GRPOConfig, load_config
from alignlab.errors import UserError


def _cfg(policy_dir, out, *extra):
    return load_config(GRPOConfig, None, [
        f"model.path={policy_dir}", f"run.out_dir={out}", "num_generations=4", "run.batch_size=8",
        "max_new_tokens=12", "steps=3", "run.progress=false", "run.log_every=1", "run.eval_every=2",
        "eval_prompts=2", "eval_samples=2", "optim.lr=1e-3", "preflight=false", *extra])


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_grpo_logs_metrics_and_a_ledger(policy_dir, tmp_path):
    run = grpo(_cfg(policy_dir, tmp_path / "run", "beta=0.04"), quiet=True)
    baseline, *records = _records(run)
    assert baseline["step"] == 0 and set(baseline) >= {"eval/pass_rate", "eval/pass_rate_low"}  # before any update
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "reward_mean", "reward_std", "pass_rate", "zero_spread_fraction", "completion_length_mean",
                "completion_length_max", "truncation_rate", "clip_fraction", "kl", "entropy", "gen_time",
                "update_time", "gen_tokens_per_s", "reward/structure", "reward/echo", "grad_norm"):
        assert key in records[0], key
    assert "eval/pass_rate" in records[1] and 0 <= records[1]["eval/pass_rate_low"] <= records[1]["eval/pass_rate"]
    with gzip.open(run / "rollouts.jsonl.gz", "rt", encoding="utf-8") as handle:
        ledger = [json.loads(line) for line in handle]
    assert len(ledger) == 3 * 8 and {r["step"] for r in ledger} == {1, 2, 3}
    first = ledger[0]
    assert set(first) >= {"prompt", "completion", "group", "reward", "parts", "passed", "failed", "reasons",
                          "degenerate", "truncated", "tokens"}
    assert [r["group"] for r in ledger[:8]] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert first["reasons"] and not first["passed"]  # a random policy fails, and the ledger says why
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()


def test_grpo_changes_the_policy(policy_dir, tmp_path):
    # shaped: partial credit, so some groups of a random policy's samples differ (sharp gives all -1)
    run = grpo(_cfg(policy_dir, tmp_path / "run", "steps=3", "reward.mode=shaped", "max_new_tokens=24"), quiet=True)
    assert min(r["zero_spread_fraction"] for r in _records(run)[1:]) < 1
    before = load_file(policy_dir / "model.safetensors")
    after = load_file(run / "checkpoints" / "final" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("extra", [["num_iterations=2", "beta=0.04"], ["optim.grad_accum=2", "loss_type=grpo"],
                                   ["optim.fused=true"]])
def test_resume_reproduces_the_uninterrupted_run(policy_dir, tmp_path, extra):
    """Crash after step 2 (checkpoint step_2 kept, later ones lost) -> --resume ends bit-identical."""
    full = grpo(_cfg(policy_dir, tmp_path / "full", "steps=4", "run.save_every=2", "run.keep_checkpoints=5",
                     *extra), quiet=True)
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "final")
    shutil.rmtree(crashed / "checkpoints" / "step_4", ignore_errors=True)
    resumed = grpo(_cfg(policy_dir, crashed, "steps=4", "run.save_every=2", "run.keep_checkpoints=5", *extra),
                   resume=True, quiet=True)
    ours = load_file(resumed / "checkpoints" / "final" / "model.safetensors")
    theirs = load_file(full / "checkpoints" / "final" / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    with gzip.open(resumed / "rollouts.jsonl.gz", "rt", encoding="utf-8") as handle:
        steps = [json.loads(line)["step"] for line in handle]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) * 8  # no generation logged twice


def test_preflight_only_reports_and_writes_nothing(policy_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["grpo", f"model.path={policy_dir}", f"run.out_dir={out}", "num_generations=4", "run.batch_size=8",
                 "max_new_tokens=8", "--preflight-only"])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "[ok] chat template" in text and "[ok] rewards" in text and "s/step" in text
    assert "hit max_new_tokens" in text  # a random policy never stops within 8 tokens: the warning fires


def test_bad_grpo_configs_are_user_errors(policy_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="multiple of num_generations"):
        _cfg(policy_dir, tmp_path / "a", "run.batch_size=6")
    with pytest.raises(UserError, match="model.path"):
        grpo(load_config(GRPOConfig, None, [f"run.out_dir={tmp_path / 'b'}"]), quiet=True)
    assert main(["grpo", "num_generations=1"]) == 2
    assert "num_generations: must be >= 2" in capsys.readouterr().err


def test_a_users_reward_function_from_a_file_joins_the_total(policy_dir, tmp_path):
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("def brevity(prompts, completions, **kwargs):\n"
                       "    return [-len(c) / 100 for c in completions]\n", encoding="utf-8")
    run = grpo(_cfg(policy_dir, tmp_path / "run", f"reward.function={rewards}:brevity", "reward.function_weight=0.5",
                    "steps=1"), quiet=True)
    step = _records(run)[-1]
    assert step["reward/brevity"] < 0 and "reward/rules" in step
    with gzip.open(run / "rollouts.jsonl.gz", "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert first["parts"]["brevity"] == pytest.approx(-len(first["completion"]) / 100)
    assert first["reward"] == pytest.approx(first["parts"]["rules"] + 0.5 * first["parts"]["brevity"])


@pytest.mark.parametrize(("spec", "message"), [("nocolon", "expected 'file.py:function'"),
                                               ("missing.py:f", "no such file"),
                                               ("alignlab.tasks.gsm8k:nothing", "no callable 'nothing'"),
                                               ("no_such_module_xyz:f", "cannot import")])
def test_bad_reward_function_specs_are_user_errors(policy_dir, tmp_path, spec, message):
    with pytest.raises(UserError, match=message):
        grpo(_cfg(policy_dir, tmp_path / "run", f"reward.function={spec}"), quiet=True)
    assert not (tmp_path / "run").exists()
