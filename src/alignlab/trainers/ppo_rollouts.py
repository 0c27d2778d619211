"""PPO's data side: rollouts of one completion per prompt, scored, turned into advantages, served as
shuffled micro-batches for `num_ppo_epochs` x `num_mini_batches` optimizer steps.

`PPOSource` is the `BatchSource` of the PPO trainer (`ppo.py` has the whole step in its docstring).
A rollout makes, with no gradient: the completions (row i of rollout n sampled from its own stream
`derive_seed(run.seed, n, i)`), the scores (`Scorer`, minus `missing_eos_penalty` for a cut-off
completion), the rollout policy's and the reference's log-probs, the critic's values, the
KL-penalised per-token rewards, GAE advantages (whitened over the rollout) and returns. Every
completion goes to the rollout ledger with the optimizer step it first feeds.

Its state (prompt position, the rollout in use, the cursor and mini-batch order in it, kl_coef and
the early-stop reading) is saved with each checkpoint, so a resumed run continues the same stream.

Under torchrun rank r samples rows r, r + world, ... of each rollout (row seeds: the one-process
completions); the completions are gathered and every rank computes the rest of the rollout (scores,
log-probs, values, advantages: forward passes only, repeated) and trains on its contiguous slice of
each micro-batch; the early stop is agreed by all ranks and rank 0 alone writes the ledger. The
rollout is world-size independent, so a checkpoint resumes at any world size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import torch
from torch import nn

from alignlab.algorithms.common import masked_mean
from alignlab.algorithms.ppo import adaptive_kl_coef, explained_variance, gae, kl_penalized_rewards, whiten
from alignlab.config import PPOConfig
from alignlab.distributed import Distributed
from alignlab.generation.engine import Rollout, generate, rollout_from_ids
from alignlab.generation.sampling import derive_seed
from alignlab.model.heads import ValueModel
from alignlab.model.lora import adapters_off
from alignlab.runtime import make_generator
from alignlab.trainers.ledger import Ledger, ledger_records
from alignlab.trainers.logps import policy_logps
from alignlab.trainers.rl_data import Scorer, generation_metrics, take_examples


class PolicyAndValue(nn.Module):
    """The policy and its critic as one module, so one optimizer and one gradient clip cover both."""

    def __init__(self, policy: nn.Module, value: ValueModel):
        super().__init__()
        self.policy, self.value = policy, value


@dataclass(frozen=True)
class PPOBatch:
    """Rows of one rollout.

    input_ids        (B, P + C) long: left-padded prompt, then right-padded completion
    attention_mask   (B, P + C) bool
    completion_ids   (B, C) long
    completion_mask  (B, C) bool: the completion's tokens, its stop token included
    old_logps        (B, C) the rollout policy's log-probs
    old_values       (B, C) the critic's values at rollout time
    advantages       (B, C) GAE, whitened over the rollout
    returns          (B, C) advantages + old values: the critic's targets
    metrics          the rollout's metrics, logged with every step that uses it
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    old_logps: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    metrics: dict

    def rows(self, index: torch.Tensor) -> PPOBatch:
        return PPOBatch(**{f.name: getattr(self, f.name)[index] if f.name != "metrics" else self.metrics
                           for f in fields(self)})


class PPOSource:
    """The PPO `BatchSource`: rollouts, each served as shuffled micro-batches for its updates."""

    def __init__(self, cfg: PPOConfig, model: PolicyAndValue, tokenizer, examples: list[dict], scorer: Scorer,
                 device, ledger: Ledger | None, reference, dist: Distributed | None = None):
        self.cfg, self.model, self.tokenizer, self.examples = cfg, model, tokenizer, examples
        self.scorer, self.device, self.ledger, self.reference = scorer, device, ledger, reference
        self.dist = dist or Distributed()
        self.part = self.dist.shard(cfg.mini_batch_size // cfg.optim.grad_accum)  # this rank's rows of a micro-batch
        self.micro = cfg.mini_batch_size // cfg.optim.grad_accum
        self.shuffler = make_generator(derive_seed(cfg.run.seed, "ppo mini-batch order"))
        self.epoch, self.position, self.rollouts, self.cursor, self.early_stops, self.served = 0, 0, 0, 0, 0, 0
        self.kl_coef, self.order, self.batch = cfg.kl_coef, None, None
        self.kl_sum, self.kl_tokens = 0.0, 0  # the current mini-batch's approx KL, summed over its tokens

    def observe(self, approx_kl: float, tokens: int) -> None:
        """A micro-batch's approx KL to the rollout policy (a mean over its `tokens`), for the early stop."""
        self.kl_sum += approx_kl * tokens
        self.kl_tokens += tokens

    def _mini_batch_kl(self) -> float:
        """The last mini-batch's approx KL over all its tokens, on every rank (collective)."""
        return self.dist.sum(self.kl_sum) / max(self.dist.sum(self.kl_tokens), 1.0)

    def _next_examples(self, n: int) -> list[dict]:
        chosen, self.epoch, self.position = take_examples(self.examples, n, self.cfg.run.seed, self.epoch,
                                                          self.position)
        return chosen

    def _forward(self, fn, batch_ids, batch_mask, n) -> torch.Tensor:
        """fn(ids, mask) -> (rows, n) over the rollout, `micro` rows at a time, no grad."""
        with torch.no_grad():
            return torch.cat([fn(batch_ids[i:i + self.micro], batch_mask[i:i + self.micro])
                              for i in range(0, batch_ids.shape[0], self.micro)])

    def _sample(self, policy, examples: list[dict]) -> Rollout:
        """One completion per example, row i from the stream derive_seed(run.seed, rollout, i). Under
        torchrun rank r samples rows r, r + world, ... and every rank gets the whole rollout back."""
        seeds = [derive_seed(self.cfg.run.seed, self.rollouts, i) for i in range(len(examples))]
        mine = self.dist.dealt(len(examples))
        part = generate(policy, self.tokenizer, [examples[i]["prompt"] for i in mine], self.cfg.generation,
                        row_seeds=[seeds[i] for i in mine])
        if not self.dist.enabled:
            return part
        ids = [row[:n].tolist() for row, n in zip(part.completion_ids, part.lengths.tolist(), strict=True)]
        rows = self.dist.gather_dealt(list(zip(ids, part.truncated.tolist(), strict=True)), len(examples))
        return rollout_from_ids(self.tokenizer, [e["prompt"] for e in examples], [ids for ids, _ in rows],
                                [cut for _, cut in rows], device=self.device)

    def make_rollout(self) -> PPOBatch:
        cfg, policy, value = self.cfg, self.model.policy, self.model.value
        examples = self._next_examples(cfg.run.batch_size)
        started = time.perf_counter()
        self.model.eval()
        rollout = self._sample(policy, examples)
        scored_batch = self.scorer(examples, rollout.texts)
        totals = scored_batch.totals
        # an abstaining reward (None) is never scored 0: its completion gets no loss tokens at all
        scored = torch.tensor([t is not None for t in totals], device=self.device)  # (B,)
        scores = torch.tensor([0.0 if t is None else t for t in totals], device=self.device)  # (B,)
        scores = scores - cfg.missing_eos_penalty * rollout.truncated.float()
        ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)  # (B, P + C)
        attention = torch.cat([rollout.prompt_mask, rollout.completion_mask], 1)
        mask, completion = rollout.completion_mask.clone(), rollout.completion_ids.clone()  # (B, C) each
        n, temperature = completion.shape[1], cfg.generation.temperature

        def logps_of(model):
            return lambda i, m: policy_logps(model, i, m, i[:, -n:], temperature)[0]

        logps = self._forward(logps_of(policy), ids, attention, n)  # (B, C)
        ref = logps
        if self.reference is not None:
            with adapters_off(self.reference):  # a LoRA policy is its own reference, adapters bypassed
                ref = self._forward(logps_of(self.reference), ids, attention, n)
        values = self._forward(lambda i, m: value.completion_values(i, m, n), ids, attention, n) * mask
        self.model.train()
        rewards, kl = kl_penalized_rewards(scores, logps, ref, mask, self.kl_coef)  # (B, C) each
        mask = mask & scored[:, None]  # no advantage, return or loss token for an abstained completion
        if cfg.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        metrics = generation_metrics(scored_batch, rollout, 1)
        metrics.pop("zero_spread_fraction")  # one completion per prompt: no groups
        seq_kl = kl.sum(-1).mean().item()
        metrics.update(score_mean=scores[scored].mean().item() if scored.any() else float("nan"), kl=seq_kl,
                       kl_coef=self.kl_coef, abstained=int((~scored).sum()),
                       non_score_reward=(-self.kl_coef * kl).sum(-1).mean().item(),
                       value_mean=masked_mean(values, mask).item(),
                       explained_variance=explained_variance(values, returns, mask),
                       rollout_time=time.perf_counter() - started, rollouts=self.rollouts + 1,
                       early_stops=self.early_stops)
        if self.ledger is not None:
            step = self.served // cfg.optim.grad_accum + 1  # the optimizer step this rollout first feeds
            self.ledger.append(ledger_records(step, 1, examples, rollout, scored_batch))
        if cfg.adaptive_kl_target > 0:
            self.kl_coef = adaptive_kl_coef(self.kl_coef, seq_kl, cfg.adaptive_kl_target, cfg.adaptive_kl_horizon,
                                            cfg.run.batch_size)
        return PPOBatch(ids, attention, completion, mask, logps, values, whiten(advantages, mask), returns, metrics)

    def next_batch(self) -> PPOBatch:
        cfg, per_update = self.cfg, self.cfg.optim.grad_accum
        at_boundary = self.cursor % per_update == 0
        stop = (at_boundary and self.batch is not None and cfg.early_stop_approx_kl > 0  # the same on every rank
                and self._mini_batch_kl() > cfg.early_stop_approx_kl)
        if self.batch is None or self.cursor >= cfg.updates_per_rollout * per_update or stop:
            self.early_stops += int(stop)
            self.batch, self.cursor = self.make_rollout(), 0
            self.rollouts += 1
        if at_boundary:
            self.kl_sum, self.kl_tokens = 0.0, 0
        if self.cursor % (cfg.num_mini_batches * per_update) == 0:  # a new pass: a new shuffle
            self.order = torch.randperm(cfg.run.batch_size, generator=self.shuffler)
        within = self.cursor % (cfg.num_mini_batches * per_update)
        self.cursor += 1
        self.served += 1
        rows = self.order[within * self.micro:(within + 1) * self.micro][self.part]
        return self.batch.rows(rows.to(self.device))

    def state_dict(self) -> dict:
        batch = None if self.batch is None else {f.name: getattr(self.batch, f.name) for f in fields(self.batch)
                                                 if f.name != "metrics"}
        return {"epoch": self.epoch, "position": self.position, "rollouts": self.rollouts, "cursor": self.cursor,
                "served": self.served,
                "early_stops": self.early_stops, "kl_coef": self.kl_coef, "kl_sum": self.kl_sum,
                "kl_tokens": self.kl_tokens,
                "order": self.order, "batch": batch, "metrics": None if self.batch is None else self.batch.metrics,
                "shuffler": self.shuffler.get_state()}

    def load_state_dict(self, state: dict) -> None:
        for key in ("epoch", "position", "rollouts", "cursor", "served", "early_stops", "kl_coef", "kl_sum",
                    "kl_tokens", "order"):
            setattr(self, key, state[key])
        self.batch = None if state["batch"] is None else PPOBatch(**state["batch"], metrics=state["metrics"])
        self.shuffler.set_state(state["shuffler"])
