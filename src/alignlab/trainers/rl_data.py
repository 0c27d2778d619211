"""The RL trainers' shared data side (GRPO, PPO and the TRL backend): the `Scorer` that builds the
configured reward exactly one way and returns typed `Scores`, the `Completions` of a gathered
generation batch, the metrics of one generation batch, and the seeded example stream.

Left out: anything about one algorithm's batches (`grpo_rollouts.py`, `ppo_rollouts.py`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.algorithms.grpo import zero_spread_fraction
from alignlab.config import RewardConfig
from alignlab.generation.engine import Rollout
from alignlab.generation.sampling import prompt_order_seed
from alignlab.rewards.base import REWARD_LIMIT, Reward, RewardContractError, combine, reward_name
from alignlab.rewards.user_code import load_reward_function
from alignlab.tasks.registry import Task


def rl_inputs(cfg, task: Task) -> list[str]:
    """The files an RL run reads, recorded (SHA-256) in its manifest so that a changed one is a changed run
    on --resume: its prompt files, a task read from the user's file, a reward function's file."""
    where = cfg.reward.function.rpartition(":")[0]
    reward_file = str(Path(where).expanduser().resolve()) if where.endswith(".py") else ""
    return [f for f in (cfg.data, cfg.eval_data, task.file, reward_file) if f]


@dataclass(frozen=True)
class Scores:
    """One batch's scores, one entry per completion: `totals` (None where every reward abstained), each
    reward part's values by name, the built-in rules' breakdown rows (None for other rewards) and the
    task's verdicts."""

    totals: list[float | None]
    parts: dict[str, list[float | None]]
    breakdown: list[dict] | None
    verdicts: list


class Scorer:
    """The configured reward (the task's rules, a reward model, a user's function, the judge's penalty:
    their weighted sum) plus the task's verdict."""

    def __init__(self, task: Task, cfg: RewardConfig, device):
        self.task = task
        self.rules: Reward | None = task.reward(cfg.mode) if cfg.rules_weight > 0 else None  # or any RewardFn
        parts = {"rules": (self.rules, cfg.rules_weight)} if self.rules else {}
        if cfg.model:
            from alignlab.model.heads import load_reward_model
            from alignlab.rewards.learned import RewardModelReward

            rm, rm_tokenizer = load_reward_model(cfg.model, device=device)
            parts["reward_model"] = (RewardModelReward(rm.eval(), rm_tokenizer), cfg.model_weight)
        if cfg.function:
            fn = load_reward_function(cfg.function, cfg.timeout_s)  # contained: rewards/user_code.py
            name = reward_name(fn)  # a function named like a built-in part must not replace it (or be replaced)
            name = f"function_{name}" if name in ("rules", "reward_model", "judge") else name
            parts[name] = (fn, cfg.function_weight)
        if cfg.judge_weight > 0:  # sense, which the rules cannot see: rewards/judge.py
            from alignlab.rewards.judge import load_judge_reward

            references = task.references("all") if task.references else None
            parts["judge"] = (load_judge_reward(cfg.judge_model, references, device=device, margin=cfg.judge_margin),
                              cfg.judge_weight)
        self.reward = combine(parts, name="reward")

    def __call__(self, examples: Sequence[dict], completions: Sequence[str]) -> Scores:
        """The scores of one completion per example; the task's columns reach the rewards as keyword lists."""
        prompts = [e["prompt"] for e in examples]
        columns = self.task.row_columns(list(examples))
        scores = self.reward.score(prompts, completions, **columns)
        big = max((abs(t) for t in scores.total if t is not None), default=0.0)
        if big > REWARD_LIMIT:  # each part was in range; its weight took the sum out of it
            raise RewardContractError(f"the weighted reward reached {big:.3g}, beyond +-{REWARD_LIMIT:g}, where "
                                      "float32 advantages lose every difference: lower the reward weights")
        rows = self.rules.breakdown(prompts, completions) if hasattr(self.rules, "breakdown") else None
        verdicts = [self.task.check(e["prompt"], c, **{k: e[k] for k in self.task.columns})
                    for e, c in zip(examples, completions, strict=True)]
        return Scores(scores.total, scores.parts, rows, verdicts)


@dataclass(frozen=True)
class Completions:
    """What the metrics and the ledger read of a `Rollout` (texts: B strings, lengths (B,) long,
    truncated (B,) bool), for a generation batch gathered from every rank."""

    texts: list[str]
    lengths: torch.Tensor
    truncated: torch.Tensor


def generation_metrics(scores: Scores, rollout: Rollout | Completions, group_size: int) -> dict:
    """Reward mean/std overall and per part and rule, pass and degeneration rates, zero-spread groups,
    completion length and truncation of one generation batch."""
    totals, parts, rows, verdicts = scores.totals, scores.parts, scores.breakdown, scores.verdicts
    scored = [t for t in totals if t is not None]
    mean = sum(scored) / len(scored) if scored else math.nan
    rewards = torch.tensor([math.nan if t is None else t for t in totals])
    metrics = {"reward_mean": mean,
               "reward_std": math.sqrt(sum((t - mean) ** 2 for t in scored) / len(scored)) if scored else math.nan,
               "pass_rate": sum(v.passed for v in verdicts) / len(verdicts),
               "degenerate_rate": sum(v.degenerate for v in verdicts) / len(verdicts),
               "zero_spread_fraction": zero_spread_fraction(rewards, group_size),
               "completion_length_mean": rollout.lengths.float().mean().item(),
               "completion_length_max": int(rollout.lengths.max()),
               "truncation_rate": rollout.truncated.float().mean().item()}
    if len(parts) > 1:
        for name, values in parts.items():
            present = [v for v in values if v is not None]
            metrics[f"reward/{name}"] = sum(present) / len(present) if present else math.nan
    for key in (rows[0] if rows else {}):
        if key not in ("total", "passed"):
            metrics[f"reward/{key}"] = sum(row[key] for row in rows) / len(rows)
    abstained = len(totals) - len(scored)
    if abstained:
        metrics["abstained_fraction"] = abstained / len(totals)
    return metrics


def rl_step_metrics(totals: dict) -> dict:
    """A sampled step's own reading for the loop's log: the time left after generation (scoring and update)."""
    return {"update_time": totals["step_time"] - totals["gen_time"]} if "gen_time" in totals else {}


def take_examples(examples: Sequence[dict], n: int, seed: int, epoch: int, position: int) -> tuple[list, int, int]:
    """The next `n` examples of a seeded shuffle, epoch after epoch, from (epoch, position) ->
    (examples, epoch, position after them): the prompt stream of GRPO and PPO, resumable by two ints."""
    chosen = []
    while len(chosen) < n:
        order = list(range(len(examples)))
        random.Random(prompt_order_seed(seed, epoch)).shuffle(order)
        take = order[position:position + n - len(chosen)]
        chosen += [examples[i] for i in take]
        position += len(take)
        if position >= len(examples):
            epoch, position = epoch + 1, 0
    return chosen, epoch, position
