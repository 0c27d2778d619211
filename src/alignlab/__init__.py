"""alignlab: align small language models with human feedback and rules.

The public API is imported lazily, so `import alignlab` stays cheap and does nothing.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "GPT": "alignlab.model.gpt",
    "from_hf": "alignlab.model.hf",
    "load_model": "alignlab.model.checkpoint",
    "to_hf": "alignlab.model.checkpoint",
    "generate": "alignlab.generation.engine",
    "Rollout": "alignlab.generation.engine",
    "load_tokenizer": "alignlab.data.tokenizer_load",
    "train_bpe": "alignlab.data.tokenizer",
    "byte_tokenizer": "alignlab.data.tokenizer",
    "pretrain": "alignlab.trainers.pretrain",
    "train_rm": "alignlab.trainers.reward_model",
    "train_reward_model": "alignlab.trainers.reward_model",
    "sft": "alignlab.trainers.sft",
    "grpo": "alignlab.backends.grpo",
    "dpo": "alignlab.trainers.dpo",
    "ppo": "alignlab.trainers.ppo",
    "PPOConfig": "alignlab.config",
    "DPOConfig": "alignlab.config",
    "GRPOConfig": "alignlab.config",
    "SFTConfig": "alignlab.config",
    "study_plan_reward": "alignlab.rewards.base",
    "combine": "alignlab.rewards.base",
    "write_report": "alignlab.eval.report",
    "RewardModel": "alignlab.model.heads",
    "load_reward_model": "alignlab.model.heads",
    "compute_reward": "alignlab.rewards.learned",
    "score": "alignlab.rewards.learned",
    "RewardModelReward": "alignlab.rewards.learned",
    "read_preferences": "alignlab.data.preferences",
    "load_config": "alignlab.config",
    "UserError": "alignlab.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'alignlab' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
