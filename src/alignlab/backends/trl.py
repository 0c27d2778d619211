"""`backend=trl`: the same GRPO recipe through TRL's GRPOTrainer, with alignlab's rewards, held-out
evaluation, metrics.jsonl, rollout ledger and run directory, so engines compare on one model.

What is alignlab's on both backends: the policy load (a transformers model: an alignlab checkpoint
is one), the reward (`Scorer`: rules, reward model or both, called through `call_reward`), the
optimizer and schedule (the same AdamW parameter groups and `lr_at` schedule, handed to the Trainer
as `optimizers=`), the held-out evaluation every `run.eval_every` steps (alignlab's sampler on the
policy being trained), the metric names in metrics.jsonl, the ledger and `checkpoints/final`.
What is TRL's: prompt order and batching, generation (`model.generate`), the loss and its
aggregation, the training loop and its checkpoints (`trl/checkpoint-N`, which `--resume` uses).

Recipe keys map one to one (num_generations, num_iterations, epsilon, epsilon_high, beta, loss_type,
the loss-type knobs of `GRPOConfig.loss_knobs` (importance_sampling_level, delta, sapo_*, vespo_*; passed
only when not at their default, which is TRL's, so an older TRL runs recipes that leave them alone),
scale_rewards, mask_truncated_completions, max_new_tokens -> max_completion_length, temperature,
top_p, top_k, grad_clip -> max_grad_norm, grad_accum, batch_size -> generation batch, steps, seed,
save_every, keep_checkpoints, log_every, precision). What TRL cannot do is refused by
`check_supported` with a UserError naming the key, never silently changed.

Left out: vLLM generation, TRL's own eval loop (alignlab's evaluation replaces it), bit-identical
resume (TRL restores its checkpoint; its RNG handling is its own), multi-process TRL.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch

from alignlab.config import GRPOConfig
from alignlab.errors import UserError
from alignlab.model.checkpoint import atomic_dir, save_model
from alignlab.rewards.base import completion_text, prompt_text
from alignlab.runs import Run
from alignlab.trainers.ledger import LEDGER, Ledger, ledger_records
from alignlab.trainers.loop import build_optimizer, lr_at
from alignlab.trainers.rl_data import Completions, Scorer

# TRL log key -> alignlab metric name (the rest are kept as trl/<key>).
METRICS = {"loss": "loss", "grad_norm": "grad_norm", "learning_rate": "lr", "reward": "reward_mean",
           "reward_std": "reward_std", "frac_reward_zero_std": "zero_spread_fraction",
           "completions/mean_length": "completion_length_mean", "completions/max_length": "completion_length_max",
           "completions/clipped_ratio": "truncation_rate", "kl": "kl", "entropy": "entropy",
           "clip_ratio/region_mean": "clip_fraction", "cispo_clip_ratio": "clip_fraction",
           "vespo/phi_seq_mean": "vespo_phi_mean"}


def check_supported(cfg: GRPOConfig) -> None:
    """Raise a UserError naming every setting TRL's GRPOTrainer cannot honour, or a missing TRL."""
    problems = []
    if cfg.model.engine == "native":
        problems.append("model.engine: backend=trl trains a transformers model; use auto or hf")
    if cfg.generation.stop_strings:
        problems.append("generation.stop_strings: TRL's generation stops at EOS only")
    if cfg.lora.enabled:
        problems.append("lora: alignlab's adapters are not passed to TRL; use backend=alignlab")
    if cfg.model.trust_remote_code:
        problems.append("model.trust_remote_code: not passed to TRL by alignlab; use backend=alignlab")
    if problems:
        raise UserError("backend=trl cannot honour this recipe: " + "; ".join(problems), key="backend")
    try:
        import datasets  # noqa: F401
        import trl
    except ImportError as err:
        raise UserError(f"backend=trl needs TRL: pip install 'alignlab[trl]' ({err})", key="backend") from None
    missing = [k for k in _loss_keys(cfg) if k not in {f.name for f in dataclasses.fields(trl.GRPOConfig)}]
    if missing:
        raise UserError(f"TRL {trl.__version__} has no {', '.join(missing)}; pip install 'trl>=1.16' or use "
                        f"backend=alignlab", key=missing[0])


def _loss_keys(cfg: GRPOConfig) -> dict:
    """The loss-type knobs that differ from their defaults (TRL's defaults too)."""
    defaults = GRPOConfig().loss_knobs
    return {k: v for k, v in cfg.loss_knobs.items() if v != defaults[k]}


def _trl_args(cfg: GRPOConfig, out: Path, quiet: bool):
    from trl import GRPOConfig as TRLConfig

    precision = cfg.run.precision
    device = cfg.run.device
    return TRLConfig(
        output_dir=str(out), max_steps=cfg.run.steps, seed=cfg.run.seed, data_seed=cfg.run.seed,
        per_device_train_batch_size=cfg.run.batch_size // cfg.optim.grad_accum,
        gradient_accumulation_steps=cfg.optim.grad_accum, generation_batch_size=cfg.run.batch_size,
        num_generations=cfg.num_generations, num_iterations=cfg.num_iterations, epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high or cfg.epsilon, beta=cfg.beta, loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards, mask_truncated_completions=cfg.mask_truncated_completions,
        max_completion_length=cfg.generation.max_new_tokens, temperature=cfg.generation.temperature,
        top_p=cfg.generation.top_p, top_k=cfg.generation.top_k, max_grad_norm=cfg.optim.grad_clip,
        logging_steps=max(cfg.run.log_every, 1), save_strategy="steps" if cfg.run.save_every else "no",
        save_steps=cfg.run.save_every or 500, save_total_limit=cfg.run.keep_checkpoints, report_to="none",
        use_cpu=device == "cpu", bf16=precision == "bf16", fp16=precision == "fp16",
        gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=quiet or not cfg.run.progress,
        shuffle_dataset=True, **_loss_keys(cfg))


def _schedule(optimizer: torch.optim.Optimizer, cfg: GRPOConfig):
    """alignlab's schedule (`lr_at`) as a LambdaLR: TRL then steps the same learning rates."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, cfg.optim, cfg.run.steps) / cfg.optim.lr)


class LedgerReward:
    """The configured reward as TRL calls it, also writing the rollout ledger and the batch's pass rate."""

    def __init__(self, scorer: Scorer, ledger: Ledger, group_size: int, stop_ids=()):
        self.scorer, self.ledger, self.group_size = scorer, ledger, group_size
        self.stop_ids = set(stop_ids)  # a completion not ending in one of them was cut by the token limit
        self.__name__ = scorer.reward.__name__
        self.step, self.pending = 0, {}

    def __call__(self, prompts, completions, **kwargs) -> list[float | None]:
        texts_p = [prompt_text(p) for p in prompts]
        texts_c = [completion_text(c) for c in completions]
        examples = [{"prompt": p, **{c: kwargs[c][i] for c in self.scorer.task.columns}}
                    for i, p in enumerate(texts_p)]
        scores = self.scorer(examples, texts_c)
        n = len(scores.verdicts)
        self.pending = {"pass_rate": sum(v.passed for v in scores.verdicts) / n,
                        "degenerate_rate": sum(v.degenerate for v in scores.verdicts) / n}
        ids = kwargs.get("completion_ids") or [[] for _ in texts_c]  # TRL passes each completion's token ids
        done = Completions(texts_c, torch.tensor([len(row) for row in ids]),
                           torch.tensor([bool(row) and row[-1] not in self.stop_ids for row in ids]))
        self.ledger.append(ledger_records(self.step + 1, self.group_size, examples, done, scores))
        return scores.totals


def _callback(run: Run, reward: LedgerReward, evaluate, eval_every: int):
    from transformers import TrainerCallback

    class Bridge(TrainerCallback):
        """TRL's logs -> metrics.jsonl under alignlab's names; held-out evaluation on alignlab's cadence."""

        def on_step_begin(self, args, state, control, **kwargs):
            reward.step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            metrics = {METRICS.get(k, f"trl/{k}"): v for k, v in logs.items()
                       if isinstance(v, int | float) and math.isfinite(v)}
            run.log(state.global_step, {**metrics, **reward.pending})

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if evaluate is not None and eval_every and state.global_step % eval_every == 0:
                run.log(state.global_step, {f"eval/{k}": v for k, v in evaluate().items()})

    return Bridge()


def grpo_trl(cfg: GRPOConfig, model, tokenizer, train: list[dict], scorer: Scorer, run: Run, evaluate, *,
             resume: bool = False, quiet: bool = False) -> Path:
    """Train `model` with TRL's GRPOTrainer inside alignlab's run directory; the policy ends in
    <run>/checkpoints/final. `evaluate` (alignlab's held-out evaluation) may be None. The recipe has
    passed `check_supported` (backends/grpo.py calls it before anything is loaded)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    reward = LedgerReward(scorer, Ledger(run.root / LEDGER), cfg.num_generations, tokenizer.stop_ids)
    if evaluate is not None and not resume and cfg.run.eval_every:
        run.log(0, {f"eval/{k}": v for k, v in evaluate().items()})
    optimizer = build_optimizer(model, cfg.optim)
    columns = {"prompt": [[{"role": "user", "content": e["prompt"]}] for e in train],
               **scorer.task.row_columns(train)}  # TRL hands extra columns to rewards as keyword lists
    dataset = Dataset.from_dict(columns)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=_trl_args(cfg, run.root / "trl", quiet),
                          train_dataset=dataset, processing_class=tokenizer.hf,
                          optimizers=(optimizer, _schedule(optimizer, cfg)))
    trainer.remove_callback(PrinterCallback)  # it prints every logged dict; metrics.jsonl has them
    trainer.add_callback(_callback(run, reward, evaluate, cfg.run.eval_every))
    checkpoint = resume and any((run.root / "trl").glob("checkpoint-*"))
    if resume:
        run.print("resuming TRL's newest checkpoint" if checkpoint else "no TRL checkpoint: starting from step 0")
    trainer.train(resume_from_checkpoint=True if checkpoint else None)
    with atomic_dir(run.checkpoint_path(None)) as tmp:
        save_model(trainer.model, tokenizer, tmp)
        (tmp / "state.json").write_text(f'{{"step": {trainer.state.global_step}, "backend": "trl"}}\n')
    run.finish()
    return run.root
