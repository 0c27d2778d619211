"""`run.batch_size` means one thing in every trainer: the examples one optimizer step learns from
(sequences for pretrain / SFT, pairs for train-rm / DPO, completions for GRPO / PPO), which
`optim.grad_accum` splits into micro-batches. Counted here from the batches the loop draws."""

from __future__ import annotations

import json

import pytest

from alignlab.backends.grpo import grpo
from alignlab.config import (
    DPOConfig,
    GRPOConfig,
    PPOConfig,
    PretrainConfig,
    RewardModelConfig,
    SFTConfig,
    load_config,
)
from alignlab.errors import UserError
from alignlab.trainers.dpo import dpo
from alignlab.trainers.loop import Loop
from alignlab.trainers.ppo import ppo
from alignlab.trainers.pretrain import pretrain
from alignlab.trainers.reward_model import train_reward_model
from alignlab.trainers.sft import sft

ARCH = ["model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=1",
        "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1"]
COMMON = ["run.batch_size=8", "optim.grad_accum=2", "run.steps=2", "run.progress=false", "run.eval_every=0",
          "run.save_every=0"]
PAIRED = ("DPOBatch", "PreferenceBatch")  # chosen and rejected rows of each pair stacked: 2B rows


def _examples(batch) -> int:
    rows = batch.input_ids.size(0)
    return rows // 2 if type(batch).__name__ in PAIRED else rows


@pytest.fixture
def step_examples(monkeypatch):
    """Examples drawn per optimizer step, over its micro-batches, for every step of a run."""
    steps: list[list[int]] = []
    original = Loop._micro_batches

    def counting(self):
        source, micro = self.spec.source, []
        draw = source.next_batch

        def counted():
            batch = draw()
            micro.append(_examples(batch))
            return batch

        source.next_batch = counted
        try:
            return original(self)
        finally:
            del source.next_batch
            steps.append(micro)

    monkeypatch.setattr(Loop, "_micro_batches", counting)
    return steps


def _trainers(policy_dir):
    return {
        "pretrain": (pretrain, PretrainConfig, ["tokenizer.kind=byte", "block_size=32", "max_new_tokens=4", *ARCH]),
        "train-rm": (train_reward_model, RewardModelConfig, ["tokenizer.kind=byte", "dummy_pairs=16",
                                                             "max_length=96", *ARCH]),
        "sft": (sft, SFTConfig, ["synthetic_per_prompt=1", "max_length=96", *ARCH]),
        "dpo": (dpo, DPOConfig, [f"model.path={policy_dir}", "dummy_pairs=24", "max_length=96"]),
        "grpo": (grpo, GRPOConfig, [f"model.path={policy_dir}", "num_generations=4", "max_new_tokens=8",
                                    "preflight=false"]),
        "ppo": (ppo, PPOConfig, [f"model.path={policy_dir}", "num_mini_batches=1", "num_ppo_epochs=1",
                                 "generation.max_new_tokens=8", "prompts=8"]),
    }


@pytest.mark.parametrize("trainer", ["pretrain", "train-rm", "sft", "dpo", "grpo", "ppo"])
def test_batch_size_is_the_whole_optimizer_step(trainer, policy_dir, tmp_path, step_examples):
    run, cls, extra = _trainers(policy_dir)[trainer]
    run(load_config(cls, None, [*COMMON, *extra, f"run.out_dir={tmp_path / 'run'}"]), quiet=True)
    assert step_examples == [[4, 4], [4, 4]]  # 8 examples per step, in 2 micro-batches of 4


@pytest.mark.parametrize("cls", [PretrainConfig, RewardModelConfig, SFTConfig, DPOConfig, GRPOConfig])
def test_a_batch_that_grad_accum_cannot_split_names_the_key(cls, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run:\n  batch_size: 6\noptim:\n  grad_accum: 4\nnum_generations: 2\n"
                      if cls is GRPOConfig else "run:\n  batch_size: 6\noptim:\n  grad_accum: 4\n")
    with pytest.raises(UserError) as err:
        load_config(cls, recipe)
    assert err.value.key == "run.batch_size" and err.value.line == 2, str(err.value)
    assert "multiple of optim.grad_accum (4)" in str(err.value)


def test_resuming_a_run_from_before_the_step_reading_is_refused_then_recorded(tmp_path):
    """A manifest without `batch_size_means` may come from the time `run.batch_size` was one micro-batch:
    resuming such a run with grad_accum > 1 would shrink its steps, so it needs --allow-config-change."""
    overrides = ["tokenizer.kind=byte", "block_size=32", "max_new_tokens=4", *ARCH, *COMMON,
                 f"run.out_dir={tmp_path / 'run'}"]
    root = pretrain(load_config(PretrainConfig, None, overrides), quiet=True)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["batch_size_means"] == "optimizer step"
    del manifest["batch_size_means"]  # as an older alignlab wrote it
    (root / "manifest.json").write_text(json.dumps(manifest))
    longer = load_config(PretrainConfig, None, [*overrides, "run.steps=3"])
    with pytest.raises(UserError, match=r"run\.batch_size: .*set run\.batch_size=16 if the run began before"):
        pretrain(longer, resume=True, quiet=True)
    pretrain(longer, resume=True, quiet=True, allow_changes=True)  # the user says it is fine: recorded
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["batch_size_means"] == "optimizer step"
    assert "run.batch_size" in manifest["resumes"][-1]["meaning_changed"]
    pretrain(load_config(PretrainConfig, None, [*overrides, "run.steps=4"]), resume=True, quiet=True)  # no flag now
