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

Sampling is seeded per row: completion i of generation batch n draws from the stream
`derive_seed(run.seed, n, i)` (`generation/sampling.py`), so a completion does not depend on the
batch it was sampled in, nor on the process that sampled it.

Under torchrun each rank generates, scores and trains on its own rows: its contiguous slice of
each of the generation batch's `grad_accum` micro-batches, whole groups only (design decision 4;
`distributed.split_rows`). The scores, texts and verdicts are then gathered (small Python
objects) so every rank computes the same advantages (exact for every `scale_rewards`), the same
metrics, and rank 0 writes the same ledger as a one-process run; DAPO's token normaliser counts
the kept tokens of all ranks.

The source's state (prompt position, the current generation batch and the cursor in it) is
saved with every checkpoint, so a resumed run continues the same stream; in a multi-process run
a generation batch still in use is gathered whole, so the checkpoint resumes at any world size.

Left out: generating with a separate inference engine (vLLM), asynchronous rollouts, and
keeping only groups with reward spread (DAPO's dynamic sampling).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from alignlab.algorithms.grpo import group_advantages
from alignlab.config import GRPOConfig
from alignlab.data.tokenizer import Tokenizer
from alignlab.distributed import Distributed, in_order, split_rows
from alignlab.generation.engine import Rollout, generate
from alignlab.generation.sampling import derive_seed
from alignlab.model.lora import adapters_off
from alignlab.trainers.ledger import Ledger, ledger_records
from alignlab.trainers.logps import policy_logps
from alignlab.trainers.rl_data import Completions, Scorer, Scores, generation_metrics, take_examples


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


class RolloutSource:
    """The GRPO `BatchSource`: generation batches, scored, split into micro-batches (see the module doc)."""

    def __init__(self, cfg: GRPOConfig, model, tokenizer: Tokenizer, examples: Sequence[dict], scorer: Scorer,
                 device, ledger: Ledger | None, reference=None, dist: Distributed | None = None):
        self.cfg, self.model, self.tokenizer, self.examples = cfg, model, tokenizer, list(examples)
        self.scorer, self.device, self.ledger, self.reference = scorer, device, ledger, reference
        self.dist = dist or Distributed()
        # this rank's rows of each generation batch (all of them in one process)
        self.owners = [split_rows(cfg.run.batch_size, cfg.optim.grad_accum, Distributed(r, self.dist.world_size),
                                  cfg.num_generations if self.dist.enabled else 1)
                       for r in range(self.dist.world_size)]
        self.mine = self.owners[self.dist.rank]
        self.micro = len(self.mine) // cfg.optim.grad_accum
        self.uses = cfg.optim.grad_accum * cfg.num_iterations  # micro-batches served per generation
        self.epoch, self.position, self.generations, self.cursor = 0, 0, 0, 0
        self.batch: GRPOBatch | None = None

    def _next_examples(self, n: int) -> list[dict]:
        chosen, self.epoch, self.position = take_examples(self.examples, n, self.cfg.run.seed, self.epoch,
                                                          self.position)
        return chosen

    def _gathered(self, rollout: Rollout, scored: Scores) -> tuple[Completions | Rollout, Scores]:
        """This rank's completions and scores -> the whole generation batch's, in row order, on every rank."""
        if not self.dist.enabled:
            return rollout, scored
        parts, breakdown = scored.parts, scored.breakdown
        mine = (rollout.texts, rollout.lengths.tolist(), rollout.truncated.tolist(), scored.totals, parts, breakdown,
                scored.verdicts)
        every = self.dist.gather(mine)
        rows = self.cfg.run.batch_size

        def column(i):
            return in_order([part[i] for part in every], self.owners, rows)

        parts = {name: in_order([part[4][name] for part in every], self.owners, rows) for name in parts}
        breakdown = column(5) if breakdown is not None else None
        done = Completions(column(0), torch.tensor(column(1)), torch.tensor(column(2), dtype=torch.bool))
        return done, Scores(column(3), parts, breakdown, column(6))

    def generate_batch(self, examples: Sequence[dict], stream: int | str
                       ) -> tuple[GRPOBatch, Completions | Rollout, Scores]:
        """Sample, score and assemble one generation batch for `examples` (each repeated G times); row i
        samples from the stream derive_seed(run.seed, stream, i). Returns this rank's rows as a batch and
        the whole batch's completions and scores."""
        cfg, g = self.cfg, self.cfg.num_generations
        rows = [e for e in examples for _ in range(g)]
        mine = [rows[i] for i in self.mine]
        started, was_training = time.perf_counter(), self.model.training
        self.model.eval()
        rollout = generate(self.model, self.tokenizer, [e["prompt"] for e in mine], cfg.generation,
                           row_seeds=[derive_seed(cfg.run.seed, stream, i) for i in self.mine])
        self.model.train(was_training)
        gen_time = time.perf_counter() - started
        done, scores = self._gathered(rollout, self.scorer(mine, rollout.texts))
        rewards = torch.tensor([math.nan if t is None else t for t in scores.totals], device=self.device)  # (B,)
        mask = rollout.completion_mask
        if cfg.mask_truncated_completions:
            mask = mask & ~rollout.truncated[:, None]
        metrics = generation_metrics(scores, done, g)
        metrics.update(gen_time=gen_time, gen_tokens_per_s=int(done.lengths.sum()) / max(gen_time, 1e-9))
        kept = self.dist.sum(int(mask.sum()))  # DAPO normalises by the whole generation batch's tokens
        batch = GRPOBatch(  # torch.cat / clone: generation made inference tensors, autograd needs plain ones
            input_ids=torch.cat([rollout.prompt_ids, rollout.completion_ids], 1),  # (B, P + C)
            attention_mask=torch.cat([rollout.prompt_mask, rollout.completion_mask], 1),
            completion_ids=rollout.completion_ids.clone(), completion_mask=mask.clone(),
            advantages=group_advantages(rewards, g, cfg.scale_rewards)[self.mine], old_logps=None, ref_logps=None,
            token_normaliser=max(kept, 1) / (cfg.optim.grad_accum * self.dist.world_size), metrics=metrics)
        temperature = cfg.generation.temperature
        shared = shared_prompt_groups(cfg)
        old = _batch_logps(self.model, batch, temperature, self.micro, shared) if cfg.num_iterations > 1 else None
        ref = None
        if self.reference is not None:
            with adapters_off(self.reference):  # a LoRA policy is its own reference, adapters bypassed
                ref = _batch_logps(self.reference, batch, temperature, self.micro, shared)
        batch = dataclasses.replace(batch, old_logps=old, ref_logps=ref)
        return batch, done, scores

    def next_batch(self) -> GRPOBatch:
        if self.batch is None or self.cursor >= self.uses:
            examples = self._next_examples(self.cfg.prompts_per_step)
            self.batch, rollout, scores = self.generate_batch(examples, self.generations)
            self.generations, self.cursor = self.generations + 1, 0
            step = (self.generations - 1) * self.cfg.num_iterations + 1  # first optimizer step using it
            if self.ledger is not None:
                rows = [e for e in examples for _ in range(self.cfg.num_generations)]
                self.ledger.append(ledger_records(step, self.cfg.num_generations, rows, rollout, scores))
        fresh = self.cursor < self.cfg.optim.grad_accum
        start = (self.cursor % self.cfg.optim.grad_accum) * self.micro
        self.cursor += 1
        batch = self.batch.rows(start, start + self.micro)
        if not fresh:  # the generation's own cost belongs to the step that made it
            batch = dataclasses.replace(batch, metrics={**batch.metrics, "gen_time": 0.0})
        return batch

    def state_dict(self) -> dict:
        """The data position; the generation batch in use is saved whole (gathered from every rank, so
        its token normaliser is stored for one process) and only while it still has uses left in a
        multi-process run. Collective in a multi-process run: every rank calls it."""
        batch = None if self.batch is None else {f.name: getattr(self.batch, f.name) for f in fields(self.batch)}
        if self.dist.enabled:
            on_cpu = batch and {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            batch = _whole_batch(self.dist.gather(on_cpu), self.owners) if self.cursor < self.uses else None
        if batch is not None:
            batch = {**batch, "token_normaliser": batch["token_normaliser"] * self.dist.world_size}
        return {"epoch": self.epoch, "position": self.position, "generations": self.generations,
                "cursor": self.cursor, "batch": batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.generations, self.cursor = state["generations"], state["cursor"]
        batch = state["batch"]
        if batch is not None:
            rows = torch.tensor(self.mine)
            batch = {k: v[rows].to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            batch["token_normaliser"] = batch["token_normaliser"] / self.dist.world_size
        self.batch = None if batch is None else GRPOBatch(**batch)


def _whole_batch(parts: list[dict | None], owners: list[list[int]]) -> dict | None:
    """Every rank's GRPOBatch fields -> one batch of all rows in row order; prompts re-left-padded and
    completions re-right-padded to the widest rank's (padding is masked, so the values are unchanged)."""
    if parts[0] is None:
        return None
    prompt = max(p["input_ids"].shape[1] - p["completion_ids"].shape[1] for p in parts)
    completion = max(p["completion_ids"].shape[1] for p in parts)
    padded = []
    for part in parts:
        c = part["completion_ids"].shape[1]
        left, right = prompt - (part["input_ids"].shape[1] - c), completion - c
        fix = {}
        for name, value in part.items():
            if not isinstance(value, torch.Tensor) or value.dim() < 2:
                fix[name] = value.cpu() if isinstance(value, torch.Tensor) else value
            elif name in ("input_ids", "attention_mask"):
                fix[name] = torch.nn.functional.pad(value.cpu(), (left, right))
            else:
                fix[name] = torch.nn.functional.pad(value.cpu(), (0, right))
        padded.append(fix)
    order = torch.tensor([i for owned in owners for i in owned]).argsort()
    out = {}
    for name, value in padded[0].items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            out[name] = torch.cat([p[name] for p in padded])[order]
        else:
            out[name] = value
    return out

