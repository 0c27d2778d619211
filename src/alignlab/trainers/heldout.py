"""The RL trainers' held-out evaluation: fresh samples of the held-out prompts, judged by the task.

GRPO and PPO log it every `run.eval_every` steps (and at step 0) as eval/pass_rate with its Wilson
bounds, eval/degenerate_rate and eval/reward_mean. Sampling has its own random stream, derived from
the run's seed and each row's index, so every evaluation of a run sees the same draws and a
resumed run the uninterrupted one's.
"""

from __future__ import annotations

from alignlab.algorithms.common import wilson_interval
from alignlab.config import GRPOConfig, PPOConfig
from alignlab.generation.engine import generate
from alignlab.generation.sampling import derive_seed
from alignlab.trainers.rl_data import Scorer


def make_evaluate(model, tokenizer, cfg: GRPOConfig | PPOConfig, examples: list[dict], scorer: Scorer, device, dist):
    """Held-out evaluation: pass rate (+ Wilson bounds), degeneration and reward of fresh samples.
    Under torchrun rank r samples rows r, r + world, ...; the texts are gathered and every rank scores
    them all, so every rank logs the same numbers (and, row-seeded, the one-process ones)."""

    def evaluate() -> dict:
        rows = [e for e in examples for _ in range(cfg.eval_samples)]
        mine = dist.dealt(len(rows))
        seeds = [derive_seed(cfg.run.seed, "held-out", i) for i in mine]  # row i's own stream, the same each time
        was_training = model.training
        model.eval()
        texts = []
        for start in range(0, len(mine), cfg.run.batch_size):
            chunk = mine[start:start + cfg.run.batch_size]
            texts += generate(model, tokenizer, [rows[i]["prompt"] for i in chunk], cfg.generation,
                              row_seeds=seeds[start:start + cfg.run.batch_size]).texts
        model.train(was_training)
        texts = dist.gather_dealt(texts, len(rows))
        scores = scorer(rows, texts)
        totals, verdicts = scores.totals, scores.verdicts
        passed = sum(v.passed for v in verdicts)
        low, high = wilson_interval(passed, len(rows))
        scored = [t for t in totals if t is not None]
        return {"pass_rate": passed / len(rows), "pass_rate_low": low, "pass_rate_high": high,
                "degenerate_rate": sum(v.degenerate for v in verdicts) / len(rows),
                "reward_mean": sum(scored) / len(scored) if scored else float("nan")}

    return evaluate
