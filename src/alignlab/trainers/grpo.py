"""`alignlab grpo`: Group Relative Policy Optimization of a policy against rule and learned rewards.

A step: batch_size / G train prompts -> G completions each from the current policy -> rewards
(the task's rule reward in `reward.mode`, a reward model, or their weighted sum) -> group-relative
advantages -> the clipped objective of `algorithms/grpo.py`, aggregated by `loss_type`, with the
k3 KL to the frozen initial policy when `beta` > 0 (no reference model exists otherwise). Each
generation batch serves `num_iterations` optimizer steps; after the first, the ratio is taken
against the log-probs saved at generation time. The data side (sampling, scoring, the rollout
ledger) is `grpo_rollouts.py`; the checks before step 1 are `preflight.py`; the optimizer step,
checkpoints and resume are the shared `loop.py`.

Every `run.eval_every` steps the policy samples `eval_samples` completions for each held-out
prompt, judged by the task's check: `eval/pass_rate` with its 95% Wilson bounds, degeneration
and the training reward. That held-out pass rate, not the training reward, is what says
whether the policy learned the task or the reward's loopholes.

`prepare` builds what every engine shares (examples, policy, scorer, preflight, held-out
evaluation) before the run directory exists; `train_native` then trains with alignlab's engine
through the shared run lifecycle (`lifecycle.py`). `backends/grpo.py` is the entry point that picks
the engine (`backend=trl`: TRL's GRPOTrainer on the same setup, in a run opened by `open_grpo_run`).

Under torchrun each rank samples, scores and trains on whole groups of its own (grpo_rollouts.py says
which rows); held-out evaluation splits its rows over the ranks, each row sampled from its own
seeded stream, so its numbers depend neither on the batch size nor on the number of processes.

With `lora.r > 0` the policy trains adapters and, when beta > 0, is its own reference with them off
(`model/lora.py`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.algorithms.common import masked_mean
from alignlab.algorithms.grpo import BATCH_TOKEN_TYPES, grpo_loss
from alignlab.config import GRPOConfig
from alignlab.distributed import split_rows
from alignlab.errors import UserError
from alignlab.model.checkpoint import load_trainable, save_model
from alignlab.model.lora import has_lora
from alignlab.runs import Run
from alignlab.runtime import resolve_runtime
from alignlab.tasks.registry import get_task
from alignlab.trainers.grpo_rollouts import GRPOBatch, RolloutSource, shared_prompt_groups
from alignlab.trainers.heldout import make_evaluate
from alignlab.trainers.ledger import LEDGER, Ledger
from alignlab.trainers.lifecycle import RunOptions, open_run, parameter_count, run_training
from alignlab.trainers.logps import policy_logps
from alignlab.trainers.loop import TrainSpec
from alignlab.trainers.preflight import preflight
from alignlab.trainers.rl_data import Scorer, rl_inputs, rl_step_metrics


def make_loss(model, cfg: GRPOConfig):
    """compute_loss(batch) -> (loss, metrics) for the loop: clipped objective, entropy and KL readings."""

    shared = shared_prompt_groups(cfg)

    def compute_loss(batch: GRPOBatch):
        logps, entropy = policy_logps(model, batch.input_ids, batch.attention_mask, batch.completion_ids,
                                      cfg.generation.temperature, entropy=True, group_size=shared)  # (B, C) each
        old = batch.old_logps if batch.old_logps is not None else logps.detach()
        mask = batch.completion_mask
        result = grpo_loss(logps, old, batch.advantages, mask, epsilon=cfg.epsilon,
                           epsilon_high=cfg.epsilon_high or None, beta=cfg.beta, ref_logps=batch.ref_logps,
                           loss_type=cfg.loss_type, max_completion_length=cfg.generation.max_new_tokens,
                           **cfg.loss_knobs)
        loss = result.loss
        kept = int(mask.sum())
        # dapo, cispo, vespo: token mean over the whole generation batch, not this micro-batch (as TRL).
        # The other types are local to the micro-batch (bnpo's token mean included); the loop divides by grad_accum.
        if cfg.loss_type in BATCH_TOKEN_TYPES:
            loss = loss * (max(kept, 1) / batch.token_normaliser)
        metrics = {**batch.metrics, "clip_fraction": result.clip_fraction, "ratio_mean": result.ratio_mean,
                   "entropy": masked_mean(entropy, mask).item() if kept else 0.0, "tokens": kept, **result.extra}
        if result.kl_mean is not None:
            metrics["kl"] = result.kl_mean
        return loss, metrics

    return compute_loss


def load_policy(cfg: GRPOConfig, device):
    """(policy, tokenizer, frozen reference or None) from model.path."""
    if not cfg.model.path:
        raise UserError("GRPO needs a policy to start from: set model.path to an alignlab checkpoint, "
                        "a transformers model directory or a hub id (e.g. an `alignlab sft` run's "
                        "checkpoints/final)", key="model.path")
    engine = "hf" if cfg.backend == "trl" else cfg.model.engine  # TRL trains a transformers model
    model, tokenizer = load_trainable(cfg.model, cfg.lora, device, engine=engine, seed=cfg.run.seed)
    reference = None
    # The initial policy, frozen; with beta = 0 no second copy exists, and TRL keeps its own. With LoRA
    # the policy is its own reference with the adapters off (`grpo_rollouts.py`): no second copy either.
    if cfg.beta > 0 and cfg.backend == "alignlab":
        reference = model if has_lora(model) else copy.deepcopy(model).eval().requires_grad_(False)
    return model, tokenizer, reference


@dataclass(frozen=True)
class GRPOSetup:
    """Everything a GRPO run needs before its first step and its run directory, whichever engine then trains."""

    model: Any
    tokenizer: Any
    reference: Any
    scorer: Scorer
    train: list[dict]
    held_out: list[dict]
    evaluate: Any
    runtime: Any


def prepare(cfg: GRPOConfig, options: RunOptions, *, preflight_only: bool = False) -> GRPOSetup | None:
    """Examples, policy (+ reference), scorer, the preflight and the held-out evaluation, before any run
    directory exists; None after a preflight-only call (no run directory is made)."""
    task = get_task(cfg.task)
    runtime = resolve_runtime(cfg.run.device, cfg.run.precision)
    train = task.train_examples(cfg.data, cfg.lang)[: cfg.prompts or None]
    held_out = task.held_out_examples(cfg.eval_data, cfg.lang)[: cfg.eval_prompts or None]
    if len(train) < 1:
        raise UserError("no train examples", key="prompts")
    # each rank's share of every micro-batch must be whole groups: refuse before anything is loaded or written
    split_rows(cfg.run.batch_size, cfg.optim.grad_accum, runtime.dist,
               cfg.num_generations if runtime.dist.enabled else 1)
    model, tokenizer, reference = load_policy(cfg, runtime.device)
    scorer = Scorer(task, cfg.reward, runtime.device)
    if preflight_only or (cfg.preflight and not options.resume):
        pilot = RolloutSource(cfg, model, tokenizer, train, scorer, runtime.device, None, reference, runtime.dist)
        pilot_examples = (train * cfg.prompts_per_step)[: cfg.prompts_per_step]
        with runtime.autocast():
            report = preflight(pilot, make_loss(model, cfg), model, pilot_examples, cfg.run.seed)
        if not options.quiet and runtime.dist.is_main:
            print(report.format(cfg.run.steps), flush=True)
        if preflight_only:
            return None
    evaluate = (make_evaluate(model, tokenizer, cfg, held_out, scorer, runtime.device, runtime.dist)
                if held_out else None)
    return GRPOSetup(model, tokenizer, reference, scorer, train, held_out, evaluate, runtime)


def _run_fields(cfg: GRPOConfig, setup: GRPOSetup) -> dict:
    """How a GRPO run opens, whichever engine trains: its summary line, data files and dtype."""
    model, scorer = setup.model, setup.scorer

    def describe(run: Run) -> str:
        return (f"grpo ({cfg.backend}): {parameter_count(model)}, "
                f"{len(setup.train)} train / {len(setup.held_out)} held-out prompts, {cfg.prompts_per_step} prompts x "
                f"{cfg.num_generations} completions per step, reward {scorer.reward.__name__}"
                f"({', '.join(scorer.reward.rewards)}; mode {cfg.reward.mode}), beta {cfg.beta}, "
                f"{setup.runtime.device} -> {run.root}")

    return {"describe": describe, "data_files": rl_inputs(cfg, scorer.task),
            "dtype": next(model.parameters()).dtype}


def open_grpo_run(cfg: GRPOConfig, setup: GRPOSetup, options: RunOptions) -> Run:
    """The run directory alone (created or resumed, locked, summary printed), for an engine that trains
    without alignlab's loop: `backend=trl` (backends/trl.py), which saves `final` and finishes the run itself."""
    return open_run(cfg, setup.runtime, options, **_run_fields(cfg, setup))


def train_native(cfg: GRPOConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                 preflight_only: bool = False, allow_changes: bool = False) -> Path | None:
    """Train with alignlab's GRPO engine and return the run directory (the policy ends in
    <run>/checkpoints/final). With `preflight_only`, print the preflight checks and return None.
    `alignlab.grpo` (backends/grpo.py) is the entry point that also honours backend=trl."""
    if cfg.backend != "alignlab":
        raise UserError(f"trainers.grpo.train_native is alignlab's engine; run backend={cfg.backend} through "
                        f"alignlab.grpo or `alignlab grpo`", key="backend")
    options = RunOptions(resume=resume, overwrite=overwrite, quiet=quiet, allow_changes=allow_changes)
    setup = prepare(cfg, options, preflight_only=preflight_only)
    if setup is None:
        return None
    model, runtime = setup.model, setup.runtime

    def build(run: Run) -> TrainSpec:  # the rollout ledger lives in the run
        ledger = Ledger(run.root / LEDGER) if runtime.dist.is_main else None  # rank 0 writes the whole batch's
        source = RolloutSource(cfg, model, setup.tokenizer, setup.train, setup.scorer, runtime.device, ledger,
                               setup.reference, runtime.dist)
        return TrainSpec(model, source, make_loss(model, cfg), lambda d: save_model(model, setup.tokenizer, d),
                         evaluate=setup.evaluate, status=grpo_status, step_metrics=rl_step_metrics,
                         on_resume=ledger.keep_until if ledger is not None else None)

    return run_training(cfg, runtime, options, build=build, **_run_fields(cfg, setup))


def grpo_status(metrics: dict) -> str:
    """The progress line of a GRPO step: reward, batch and held-out pass rate, length, KL."""
    parts = [f"reward {metrics.get('reward_mean', float('nan')):+.3f}", f"pass {metrics.get('pass_rate', 0):.0%}"]
    if "eval/pass_rate" in metrics:
        parts.append(f"held-out {metrics['eval/pass_rate']:.0%}")
    parts.append(f"len {metrics.get('completion_length_mean', 0):.0f}")
    if "kl" in metrics:
        parts.append(f"kl {metrics['kl']:.4f}")
    return "  ".join(parts)

