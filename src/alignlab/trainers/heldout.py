"""The RL trainers' held-out evaluation: fresh samples of the held-out prompts, judged by the task.

GRPO and PPO log it every `run.eval_every` steps (and at step 0) as eval/pass_rate with its Wilson
bounds, eval/degenerate_rate and eval/reward_mean. It samples through the one evaluation sampling
loop (`generation.engine.sample_rows`) and reports the figures `eval` reports
(`algorithms.common.verdict_rates`); what is its own: rows dealt over ranks, and its random stream,
derived from the run's seed and each row's index (`derive_seed(seed, "held-out", i)`), so every
evaluation of a run sees the same draws and a resumed run the uninterrupted one's.
"""

from __future__ import annotations

from alignlab.algorithms.common import verdict_rates
from alignlab.config import GRPOConfig, PPOConfig
from alignlab.generation.engine import sample_rows
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
        sampled = sample_rows(model, tokenizer, [rows[i]["prompt"] for i in mine], cfg.generation, seeds,
                              cfg.run.batch_size)
        texts = dist.gather_dealt(sampled.texts, len(rows))
        scores = scorer(rows, texts)
        scored = [t for t in scores.totals if t is not None]
        return {**verdict_rates([v.passed for v in scores.verdicts], [v.degenerate for v in scores.verdicts]),
                "reward_mean": sum(scored) / len(scored) if scored else float("nan")}

    return evaluate
