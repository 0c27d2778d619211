"""`alignlab ppo`: PPO with a learned critic (InstructGPT's RLHF loop) against a reward model, rules, or both.

A rollout: run.batch_size train prompts -> one completion each from the current policy -> a score
per completion (`reward`: a trained reward model, the task's rules, a user's function, weighted;
minus `missing_eos_penalty` when cut off; a completion every reward abstains on (`None`) gets no
loss token, never a score of 0) -> in one no-grad pass the policy's log-probs, the frozen
reference's and the critic's values -> per-token rewards (-kl_coef * k1 KL on every token, the score
on the last real one) -> GAE advantages (whitened over the rollout) and returns -> `num_ppo_epochs`
passes, each over the rollout shuffled into `num_mini_batches` mini-batches; each mini-batch is one
optimizer step (over `grad_accum` micro-batches) of the clipped policy loss + vf_coef * the clipped
value loss. The maths is `algorithms/ppo.py`, the rollouts `ppo_rollouts.py`; the optimizer step,
checkpoints and resume are the shared `loop.py` (one AdamW over policy and critic, as TRL's PPOTrainer).

With `early_stop_approx_kl`, a mini-batch whose approx KL to the rollout policy exceeds it ends
that rollout's updates: the next step samples a new rollout. With `adaptive_kl_target`, kl_coef
follows the controller of Ziegler et al. after every rollout. With kl_coef = 0 no reference model
exists.

The critic (`model/heads.py` ValueModel) starts from the reward model (`value_init=reward_model`,
which must share the policy's tokenizer: values are read per token) or from the policy's body.
A checkpoint is the policy's files (loadable by `alignlab eval` / `generate`) plus `value.safetensors`
and the rollout source's state, so a resumed run continues the same stream. Every completion goes to
the rollout ledger (`rollouts.jsonl.gz`) as in GRPO, and held-out evaluation is GRPO's
(`trainers/heldout.py`).

Under torchrun, rank r samples rollout rows r, r + world, ... and every rank gets the whole rollout
back (then scores it whole); ranks split the updates (`ppo_rollouts.py`).

Left out: several completions per prompt (RLOO-style baselines), a separate reward-model tokenizer for
the critic.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from safetensors.torch import load_file, save_file

from alignlab.algorithms.common import masked_mean
from alignlab.algorithms.ppo import policy_loss, value_loss
from alignlab.config import PPOConfig
from alignlab.data.tokenizer import PROBE_TEXT
from alignlab.distributed import Distributed
from alignlab.errors import UserError
from alignlab.generation.sampling import derive_seed
from alignlab.model.checkpoint import load_trainable, save_model
from alignlab.model.heads import ValueModel, load_reward_model
from alignlab.model.lora import add_lora, has_lora
from alignlab.runs import Run
from alignlab.runtime import resolve_runtime
from alignlab.tasks.registry import get_task
from alignlab.trainers.heldout import make_evaluate
from alignlab.trainers.ledger import LEDGER, Ledger
from alignlab.trainers.lifecycle import RunOptions, run_training, trainable
from alignlab.trainers.logps import policy_logps
from alignlab.trainers.loop import TrainSpec, restore_weights
from alignlab.trainers.ppo_rollouts import PolicyAndValue, PPOBatch, PPOSource
from alignlab.trainers.rl_data import Scorer, rl_inputs, rl_step_metrics

VALUE = "value.safetensors"


def make_loss(model: PolicyAndValue, source: PPOSource, cfg: PPOConfig, dist: Distributed | None = None):
    """compute_loss(batch) -> (policy loss + vf_coef * value loss, metrics). Both losses are token means;
    under torchrun each rank's mean is weighted by its share of the tokens (`Distributed.mean_weight`),
    so DDP's average of the ranks' gradients is the one-process gradient, and so are the logged means."""
    dist = dist or Distributed()

    def compute_loss(batch: PPOBatch):
        n, mask = batch.completion_ids.shape[1], batch.completion_mask
        logps, entropy = policy_logps(model.policy, batch.input_ids, batch.attention_mask, batch.completion_ids,
                                      cfg.generation.temperature, entropy=True)  # (B, C) each
        values = model.value.completion_values(batch.input_ids, batch.attention_mask, n)  # (B, C)
        pl = policy_loss(logps, batch.old_logps, batch.advantages, mask, cfg.cliprange)
        vl = value_loss(values, batch.old_values, batch.returns, mask, cfg.cliprange_value)
        tokens = int(mask.sum())
        source.observe(pl.approx_kl, tokens)
        w = dist.mean_weight(tokens)  # 1 in one process
        return (pl.loss + cfg.vf_coef * vl.loss) * w, {
            **batch.metrics, "policy_loss": pl.loss.item() * w, "value_loss": vl.loss.item() * w,
            "clip_fraction": pl.clip_fraction * w, "value_clip_fraction": vl.clip_fraction * w,
            "approx_kl": pl.approx_kl * w, "entropy": masked_mean(entropy, mask).item() * w, "tokens": tokens}

    return compute_loss


def make_value(cfg: PPOConfig, policy, tokenizer, device) -> ValueModel:
    """The critic: a copy of the reward model (same tokenizer required) or of the policy's body."""
    init = cfg.value_init if cfg.value_init != "auto" else ("reward_model" if cfg.reward.model else "policy")
    if init == "policy":
        return ValueModel.from_policy(policy)  # with LoRA: the body's copy keeps its (own) adapters
    if not cfg.reward.model:
        raise UserError("value_init=reward_model needs reward.model (a train-rm checkpoint)", key="value_init")
    rm, rm_tokenizer = load_reward_model(cfg.reward.model, device=device)
    if (rm_tokenizer.vocab_size != tokenizer.vocab_size
            or rm_tokenizer.encode(PROBE_TEXT) != tokenizer.encode(PROBE_TEXT)):
        raise UserError(f"the reward model {cfg.reward.model} does not share the policy's tokenizer, so its values "
                        f"cannot be read per policy token: train it from the policy (train-rm model.path=<policy>) "
                        f"or set value_init=policy", key="value_init")
    value = ValueModel.from_reward_model(rm, scale=cfg.reward.model_weight).to(device)
    if cfg.lora.enabled:  # a frozen copy of the reward model's body with adapters, and a trainable head
        add_lora(value.model, cfg.lora, cfg.reward.model, seed=derive_seed(cfg.run.seed, "ppo critic lora"))
    return value


def save_checkpoint(model: PolicyAndValue, tokenizer, directory: Path) -> None:
    """The policy's own files (what `eval` and `generate` load) + the critic's trained weights (with
    LoRA: its adapters and head) in value.safetensors."""
    save_model(model.policy, tokenizer, directory)
    save_file({k: v.detach().contiguous() for k, v in model.value.named_parameters() if v.requires_grad},
              str(directory / VALUE))


def restore_checkpoint(model: PolicyAndValue, directory: Path) -> None:
    """Read `save_checkpoint`'s files back into the policy and critic in place."""
    restore_weights(model.policy, directory)
    state = load_file(str(directory / VALUE), device=str(next(model.value.parameters()).device))
    wanted = {k for k, v in model.value.named_parameters() if v.requires_grad}
    if set(state) != wanted:
        raise UserError(f"the saved critic does not fit this run's critic (keys differ: "
                        f"{sorted(set(state) ^ wanted)[:3]})", file=str(directory / VALUE))
    model.value.load_state_dict(state, strict=False)


def ppo(cfg: PPOConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
        allow_changes: bool = False) -> Path:
    """Train with PPO and return the run directory (the policy ends in <run>/checkpoints/final)."""
    if not cfg.model.path:
        raise UserError("PPO needs a policy to start from: set model.path (e.g. an `alignlab sft` run's "
                        "checkpoints/final, or a transformers model directory)", key="model.path")
    task, runtime = get_task(cfg.task), resolve_runtime(cfg.run.device, cfg.run.precision)
    train = task.train_examples(cfg.data, cfg.lang)[: cfg.prompts or None]
    held_out = task.held_out_examples(cfg.eval_data, cfg.lang)[: cfg.eval_prompts or None]
    policy, tokenizer = load_trainable(cfg.model, cfg.lora, runtime.device, seed=cfg.run.seed)
    scorer = Scorer(task, cfg.reward, runtime.device)
    model = PolicyAndValue(policy, make_value(cfg, policy, tokenizer, runtime.device))
    reference = None  # with LoRA the reference is the policy with its adapters off: no second copy
    if cfg.kl_coef > 0:
        reference = policy if has_lora(policy) else copy.deepcopy(policy).eval().requires_grad_(False)
    options = RunOptions(resume=resume, overwrite=overwrite, quiet=quiet, allow_changes=allow_changes)

    def describe(run: Run) -> str:
        return (f"ppo: {trainable(policy)} policy + {trainable(model.value)} critic parameters trained, "
                f"{len(train)} train / {len(held_out)} held-out prompts, rollouts of {cfg.run.batch_size} x "
                f"{cfg.num_ppo_epochs} epochs x {cfg.num_mini_batches} mini-batches, reward "
                f"{', '.join(scorer.reward.rewards)}, kl_coef {cfg.kl_coef}, {runtime.device} -> {run.root}")

    def build(run: Run) -> TrainSpec:  # the rollout ledger lives in the run
        ledger = Ledger(run.root / LEDGER) if runtime.dist.is_main else None
        source = PPOSource(cfg, model, tokenizer, train, scorer, runtime.device, ledger, reference, runtime.dist)
        evaluate = (make_evaluate(policy, tokenizer, cfg, held_out, scorer, runtime.device, runtime.dist)
                    if held_out else None)
        return TrainSpec(model, source, make_loss(model, source, cfg, runtime.dist),
                         lambda d: save_checkpoint(model, tokenizer, d), evaluate=evaluate, status=ppo_status,
                         restore_model=lambda d: restore_checkpoint(model, d), step_metrics=rl_step_metrics,
                         on_resume=ledger.keep_until if ledger is not None else None)

    return run_training(cfg, runtime, options, build=build, describe=describe,
                        data_files=rl_inputs(cfg, task), dtype=next(policy.parameters()).dtype)


def ppo_status(metrics: dict) -> str:
    """The progress line of a PPO step: score, batch and held-out pass rate, KL, critic fit."""
    parts = [f"score {metrics.get('score_mean', math.nan):+.3f}", f"pass {metrics.get('pass_rate', 0):.0%}"]
    if "eval/pass_rate" in metrics:
        parts.append(f"held-out {metrics['eval/pass_rate']:.0%}")
    parts += [f"kl {metrics.get('kl', 0):.3f}", f"ev {metrics.get('explained_variance', math.nan):.2f}"]
    return "  ".join(parts)

