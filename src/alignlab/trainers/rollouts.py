"""GRPO's data side: sample groups of completions, score them, hand them to the loop as micro-batches.

`RolloutSource` is the `BatchSource` of the GRPO trainer. Every `num_iterations` optimizer
steps it makes one generation batch: batch_size / G prompts, taken in a seeded shuffled order
epoch after epoch, each repeated G times (TRL's layout: a group is G consecutive rows); one
completion per row from the current policy; rewards through `call_reward` (so a broken reward
function is named with its sample); group-relative advantages; and, only when needed, the
log-probs at generation time (num_iterations > 1) and the frozen reference's (beta > 0). The
batch then goes out as `grad_accum` micro-batches, `num_iterations` times over.

Every generation is appended to the rollout ledger, `rollouts.jsonl.gz`: one record per
completion with its step, group, reward and parts, the task's verdict, failed rules with their
reasons and degeneration flags, so a user can find the step where a hack started
(`zcat rollouts.jsonl.gz | jq 'select(.step == 40)'`).

The source's state (prompt position, sampling generator, the current generation batch and the
cursor in it) is saved with every checkpoint, so a resumed run continues the same stream.

Left out: generating with a separate inference engine (vLLM), asynchronous rollouts, and
keeping only groups with reward spread (DAPO's dynamic sampling).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import random
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from alignlab.algorithms.common import entropy_from_logits, token_logps
from alignlab.algorithms.grpo import group_advantages, zero_spread_fraction
from alignlab.config import GRPOConfig, RewardConfig
from alignlab.data.tokenizer import Tokenizer
from alignlab.generation.engine import Rollout, generate
from alignlab.model.gpt import GPT
from alignlab.model.hf import completion_logits, grouped_completion_logits
from alignlab.rewards.base import Reward, combine, load_reward_function, reward_name
from alignlab.tasks.registry import Task

LEDGER = "rollouts.jsonl.gz"


class Scorer:
    """The configured reward (the task's rules, a reward model, a user's function: their weighted sum)
    plus the task's verdict."""

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
            fn = load_reward_function(cfg.function)
            parts[reward_name(fn)] = (fn, cfg.function_weight)
        self.reward = combine(parts, name="reward")

    def __call__(self, examples: Sequence[dict], completions: Sequence[str]):
        """(totals with None for abstentions, {part: values}, rule breakdown rows or None, verdicts) of
        one completion per example; the task's columns reach the rewards as keyword lists."""
        prompts = [e["prompt"] for e in examples]
        columns = self.task.row_columns(list(examples))
        scores = self.reward.score(prompts, completions, **columns)
        rows = self.rules.breakdown(prompts, completions) if hasattr(self.rules, "breakdown") else None
        verdicts = [self.task.check(e["prompt"], c, **{k: e[k] for k in self.task.columns})
                    for e, c in zip(examples, completions, strict=True)]
        return scores.total, scores.parts, rows, verdicts


def _shares_prompts(input_ids, attention_mask, n: int, group_size: int) -> bool:
    """True when the rows come in groups of `group_size` with identical prompt tokens and masks."""
    if input_ids.shape[0] % group_size:
        return False
    p = input_ids.shape[1] - n
    ids = input_ids[:, :p].reshape(-1, group_size, p)  # (B / G, G, P)
    mask = attention_mask[:, :p].reshape(-1, group_size, p)
    return bool((ids == ids[:, :1]).all() and (mask == mask[:, :1]).all())


def policy_logps(model, input_ids, attention_mask, completion_ids, temperature: float, *, entropy: bool = False,
                 group_size: int | None = None):
    """Log-probs (B, C) of the completion tokens under `model` at the sampling temperature, and
    optionally the per-token entropy (B, C) (detached). TRL divides logits by the temperature too.

    With `group_size`, when the rows do come in groups of G sharing a prompt (checked), the native
    GPT computes each prompt once for its group (`grouped_completion_logits`, the same numbers)."""
    n = completion_ids.shape[1]
    if group_size and isinstance(model, GPT) and _shares_prompts(input_ids, attention_mask, n, group_size):
        logits = grouped_completion_logits(model, input_ids, attention_mask, n, group_size)  # (B, C, V)
    else:
        logits = completion_logits(model, input_ids, attention_mask, n)  # (B, C, V)
    if temperature > 0:
        logits = logits / temperature
    logps = token_logps(logits, completion_ids)  # (B, C)
    if not entropy:
        return logps, None
    with torch.no_grad():
        return logps, entropy_from_logits(logits)


@dataclass(frozen=True)
class GRPOBatch:
    """One micro-batch of scored completions.

    input_ids        (B, P + C) long: left-padded prompt, then right-padded completion
    attention_mask   (B, P + C) bool: True on real tokens
    completion_ids   (B, C) long
    completion_mask  (B, C) bool: tokens in the loss (a truncated row is all False when masked)
    advantages       (B,) float
    old_logps        (B, C) float, or None when each batch is used once (then old = current, detached)
    ref_logps        (B, C) float, or None without a reference model (beta = 0)
    token_normaliser float: kept completion tokens of the whole generation batch / grad_accum
    metrics          the generation batch's metrics, logged with the step that uses it
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    old_logps: torch.Tensor | None
    ref_logps: torch.Tensor | None
    token_normaliser: float
    metrics: dict

    def rows(self, start: int, stop: int) -> GRPOBatch:
        """Rows start:stop (tensors sliced, scalars kept)."""
        cut = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in cut.items():
            if isinstance(value, torch.Tensor):
                cut[name] = value[start:stop]
        return GRPOBatch(**cut)


def _batch_logps(model, batch: GRPOBatch, temperature: float, micro: int, group_size: int | None) -> torch.Tensor:
    """No-grad log-probs (B, C) of a whole generation batch, `micro` rows at a time."""
    with torch.no_grad():
        parts = [policy_logps(model, b.input_ids, b.attention_mask, b.completion_ids, temperature,
                              group_size=group_size)[0]
                 for b in (batch.rows(i, i + micro) for i in range(0, batch.advantages.shape[0], micro))]
    return torch.cat(parts)


def shared_prompt_groups(cfg: GRPOConfig) -> int | None:
    """G when every micro-batch holds whole groups (their prompt can be computed once), else None."""
    micro = cfg.run.batch_size // cfg.optim.grad_accum
    return cfg.num_generations if micro % cfg.num_generations == 0 else None


class Ledger:
    """Appends one JSON record per completion to a gzip file; cut back to a step on resume."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, records: Sequence[dict]) -> None:
        with gzip.open(self.path, "at", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    def keep_until(self, step: int) -> None:
        """Drop records of generations first used after `step` (a crashed run's tail)."""
        if not self.path.exists():
            return
        kept = []
        try:
            with gzip.open(self.path, "rt", encoding="utf-8") as handle:
                for line in handle:
                    try:
                        if json.loads(line)["step"] <= step:
                            kept.append(line)
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line a killed process left half-written
        except (EOFError, OSError, zlib.error):
            pass  # a gzip stream a killed process left unfinished: keep what reads back
        tmp = self.path.with_name(self.path.name + ".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as handle:
            handle.writelines(kept)
        tmp.replace(self.path)


def _ledger_records(step: int, group_size: int, examples, rollout: Rollout, totals, parts, verdicts) -> list[dict]:
    records = []
    for i, (example, text, verdict) in enumerate(zip(examples, rollout.texts, verdicts, strict=True)):
        records.append({"step": step, "group": i // group_size, **example, "completion": text,
                        "reward": totals[i], "parts": {k: v[i] for k, v in parts.items()},
                        "passed": verdict.passed, "failed": list(verdict.failed), "reasons": list(verdict.reasons),
                        "degenerate": list(verdict.degenerate_reasons), "truncated": bool(rollout.truncated[i]),
                        "tokens": int(rollout.lengths[i])})
    return records


def generation_metrics(totals, parts, rows, verdicts, rollout: Rollout, group_size: int) -> dict:
    """Reward mean/std overall and per part and rule, pass and degeneration rates, zero-spread groups,
    completion length and truncation of one generation batch."""
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


class RolloutSource:
    """The GRPO `BatchSource`: generation batches, scored, split into micro-batches (see the module doc)."""

    def __init__(self, cfg: GRPOConfig, model, tokenizer: Tokenizer, examples: Sequence[dict], scorer: Scorer,
                 device, ledger: Ledger | None, reference=None):
        self.cfg, self.model, self.tokenizer, self.examples = cfg, model, tokenizer, list(examples)
        self.scorer, self.device, self.ledger, self.reference = scorer, device, ledger, reference
        self.micro = cfg.run.batch_size // cfg.optim.grad_accum
        self.uses = cfg.optim.grad_accum * cfg.num_iterations  # micro-batches served per generation
        self.generator = torch.Generator(device=device).manual_seed(cfg.run.seed)
        self.epoch, self.position, self.generations, self.cursor = 0, 0, 0, 0
        self.batch: GRPOBatch | None = None

    def _next_examples(self, n: int) -> list[dict]:
        chosen = []
        while len(chosen) < n:
            order = list(range(len(self.examples)))
            random.Random(self.cfg.run.seed * 1_000_003 + self.epoch).shuffle(order)
            take = order[self.position:self.position + n - len(chosen)]
            chosen += [self.examples[i] for i in take]
            self.position += len(take)
            if self.position >= len(self.examples):
                self.epoch, self.position = self.epoch + 1, 0
        return chosen

    def generate_batch(self, examples: Sequence[dict], generator: torch.Generator) -> tuple[GRPOBatch, Rollout, list]:
        """Sample, score and assemble one generation batch for `examples` (each repeated G times)."""
        cfg, g = self.cfg, self.cfg.num_generations
        rows = [e for e in examples for _ in range(g)]
        started, was_training = time.perf_counter(), self.model.training
        self.model.eval()
        rollout = generate(self.model, self.tokenizer, [e["prompt"] for e in rows], cfg.generation, generator)
        self.model.train(was_training)
        gen_time = time.perf_counter() - started
        totals, parts, breakdown, verdicts = self.scorer(rows, rollout.texts)
        rewards = torch.tensor([math.nan if t is None else t for t in totals], device=self.device)  # (B,)
        mask = rollout.completion_mask
        if cfg.mask_truncated_completions:
            mask = mask & ~rollout.truncated[:, None]
        metrics = generation_metrics(totals, parts, breakdown, verdicts, rollout, g)
        metrics.update(gen_time=gen_time, gen_tokens_per_s=int(rollout.lengths.sum()) / max(gen_time, 1e-9))
        batch = GRPOBatch(  # torch.cat / clone: generation made inference tensors, autograd needs plain ones
            input_ids=torch.cat([rollout.prompt_ids, rollout.completion_ids], 1),  # (B, P + C)
            attention_mask=torch.cat([rollout.prompt_mask, rollout.completion_mask], 1),
            completion_ids=rollout.completion_ids.clone(), completion_mask=mask.clone(),
            advantages=group_advantages(rewards, g, cfg.scale_rewards), old_logps=None, ref_logps=None,
            token_normaliser=max(int(mask.sum()), 1) / cfg.optim.grad_accum, metrics=metrics)
        temperature = cfg.generation.temperature
        shared = shared_prompt_groups(cfg)
        old = _batch_logps(self.model, batch, temperature, self.micro, shared) if cfg.num_iterations > 1 else None
        ref = (_batch_logps(self.reference, batch, temperature, self.micro, shared)
               if self.reference is not None else None)
        batch = dataclasses.replace(batch, old_logps=old, ref_logps=ref)
        return batch, rollout, [totals, parts, verdicts]

    def next_batch(self) -> GRPOBatch:
        if self.batch is None or self.cursor >= self.uses:
            examples = self._next_examples(self.cfg.prompts_per_step)
            self.batch, rollout, (totals, parts, verdicts) = self.generate_batch(examples, self.generator)
            self.generations, self.cursor = self.generations + 1, 0
            step = (self.generations - 1) * self.cfg.num_iterations + 1  # first optimizer step using it
            if self.ledger is not None:
                rows = [e for e in examples for _ in range(self.cfg.num_generations)]
                self.ledger.append(_ledger_records(step, self.cfg.num_generations, rows, rollout, totals, parts,
                                                   verdicts))
        fresh = self.cursor < self.cfg.optim.grad_accum
        start = (self.cursor % self.cfg.optim.grad_accum) * self.micro
        self.cursor += 1
        batch = self.batch.rows(start, start + self.micro)
        if not fresh:  # the generation's own cost belongs to the step that made it
            batch = dataclasses.replace(batch, metrics={**batch.metrics, "gen_time": 0.0})
        return batch

    def state_dict(self) -> dict:
        batch = None if self.batch is None else {f.name: getattr(self.batch, f.name) for f in fields(self.batch)}
        return {"epoch": self.epoch, "position": self.position, "generations": self.generations,
                "cursor": self.cursor, "generator": self.generator.get_state(), "batch": batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.generations, self.cursor = state["generations"], state["cursor"]
        self.generator.set_state(state["generator"])
        batch = state["batch"]
        if batch is not None:
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        self.batch = None if batch is None else GRPOBatch(**batch)

