"""alignlab rewards plug into TRL's GRPOTrainer unchanged (design decision 2)."""

from __future__ import annotations

import pytest
import torch

from alignlab.tasks.study_plan.prompts import train_prompts

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


@pytest.mark.slow
def test_one_trl_grpo_step_with_alignlab_rewards(tiny_gpt, byte_tok, tmp_path):
    from alignlab.model.checkpoint import to_hf
    from alignlab.rewards.base import Reward

    to_hf(tiny_gpt, tmp_path / "policy", byte_tok)
    seen = []

    sharp = Reward(mode="sharp")

    def spy(prompts, completions, **kwargs):  # records what TRL hands a reward function
        seen.append((list(prompts), list(completions)))
        return sharp(prompts, completions, **kwargs)

    spy.__name__ = sharp.__name__
    config = trl.GRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4, max_steps=1,
        max_completion_length=8, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        bf16=False, disable_tqdm=True, dataloader_num_workers=0, learning_rate=1e-4)
    prompts = [[{"role": "user", "content": p}] for p in train_prompts()[:4]]
    trainer = trl.GRPOTrainer(model=str(tmp_path / "policy"), reward_funcs=[spy, Reward(mode="shaped")],
                              args=config, train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
                              processing_class=byte_tok.hf)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert seen and len(seen[0][1]) == len(seen[0][0]) >= 4
    rewards = sharp(*seen[0])
    assert all(isinstance(r, float) for r in rewards)
    logged = trainer.state.log_history[0]
    assert any(key.startswith("rewards/") for key in logged), logged
    changed = any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert changed or all(r == rewards[0] for r in rewards)  # no spread, no gradient: also fine
