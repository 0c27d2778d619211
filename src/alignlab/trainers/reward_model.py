"""`alignlab train-rm` and the seed's `train_rm(...)`: a Bradley-Terry reward model.

Pairs come from preference files (our JSONL, TRL's conversational form, HH-RLHF), a Python
list, or the built-in dummy study-plan pairs (compliant vs non-compliant plans: a signal a
tiny model can learn). They are tokenized once; each step draws a batch from a seeded
shuffle whose state is the data position. Held-out evaluation reports accuracy with a 95%
Wilson interval, mean margin and reward statistics, and keeps `checkpoints/best`.

Under torchrun each rank scores its slice of every batch (the loss is a mean over pairs, so DDP's
average is the one-process gradient); evaluation runs on every rank, rank 0 writes `best`.

Left out: `checkpoints/best` under FSDP (use `final`). The pre-RL audit is `eval/reward_audit.py` (`alignlab audit-rm`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

from alignlab.algorithms.bradley_terry import pairwise_stats, reward_model_loss
from alignlab.algorithms.common import wilson_interval
from alignlab.config import RewardModelConfig, load_config
from alignlab.data.batches import PreferenceCollator, ShuffledBatches, TokenizedPair
from alignlab.data.preferences import read_preferences
from alignlab.data.sources import BadRows, source_file
from alignlab.data.tokenizer_load import tokenizer_for_new_model
from alignlab.errors import UserError
from alignlab.model.checkpoint import atomic_dir, resolve_source
from alignlab.model.heads import RewardModel, restore_lora_reward_model, reward_model_from, save_reward_model
from alignlab.model.hf import set_gradient_checkpointing
from alignlab.model.lora import add_lora
from alignlab.rewards.learned import score_ids
from alignlab.runs import Run, print_nothing
from alignlab.runtime import parse_dtype, resolve_runtime, seed_everything
from alignlab.tasks.study_plan.synthetic import preference_pairs
from alignlab.trainers.lifecycle import RunOptions, run_training
from alignlab.trainers.loop import TrainSpec


def load_pairs(cfg, pairs=None, bad_rows: BadRows | None = None):
    """(train pairs, eval pairs, data files) from `pairs` (a list), cfg.data, or dummy pairs; `cfg` is
    any config with data, eval_data, on_bad_row, dummy_pairs, lang, eval_fraction and run.seed (train-rm's,
    DPO's). Malformed rows of the files go to `bad_rows` (a fresh BadRows(cfg.on_bad_row) if None)."""
    bad_rows = bad_rows if bad_rows is not None else BadRows(cfg.on_bad_row)
    if pairs is None and cfg.data:
        pairs = [p for spec in cfg.data for p in read_preferences(spec, bad_rows=bad_rows)]
    elif pairs is None:
        pairs = read_preferences(preference_pairs(cfg.dummy_pairs, seed=cfg.run.seed, lang=cfg.lang))
    else:
        pairs = read_preferences(pairs)
    if cfg.eval_data:
        eval_pairs = [p for spec in cfg.eval_data for p in read_preferences(spec, bad_rows=bad_rows)]
    else:
        n_eval = int(len(pairs) * cfg.eval_fraction)
        pairs, eval_pairs = pairs[: len(pairs) - n_eval], pairs[len(pairs) - n_eval:]
    if not pairs:
        raise UserError("no training pairs left after holding out the evaluation split", key="data")
    files = [source_file(spec) for spec in (*cfg.data, *cfg.eval_data)]
    return pairs, eval_pairs, files


def build_reward_model(cfg: RewardModelConfig, pairs, runtime, resume_from: Path | None):
    """(reward model, tokenizer): from model.path, or a new native GPT with a tokenizer of its own."""
    if cfg.model.path:
        seed_everything(cfg.run.seed)  # the new scalar head's start: the same in every run of this config
        model, tokenizer = reward_model_from(cfg.model.path, pooling=cfg.pooling, engine=cfg.model.engine,
                                             dtype=parse_dtype(cfg.model.dtype), device=runtime.device,
                                             trust_remote_code=cfg.model.trust_remote_code)
        if cfg.lora.enabled:  # adapters on the backbone; the scalar head stays fully trainable
            add_lora(model.model, cfg.lora, cfg.model.path, resolve_source(cfg.model.path), seed=cfg.run.seed)
        return model, tokenizer
    if cfg.lora.enabled:
        raise UserError("LoRA adapts a pretrained backbone: set model.path (a new model trains all its weights)",
                        key="lora.r")
    texts = (t for p in pairs for t in (p.prompt_text, p.chosen, p.rejected))
    tokenizer = tokenizer_for_new_model(cfg.tokenizer, texts, resume_from)
    seed_everything(cfg.run.seed)
    arch = dataclasses.replace(cfg.model.arch, vocab_size=tokenizer.vocab_size)
    model = RewardModel.new(arch)
    if cfg.pooling not in ("auto", "last"):
        model.pooling = cfg.pooling
    return model.to(runtime.device), tokenizer


def evaluate_pairs(model: RewardModel, items: list[TokenizedPair], pad_id: int, batch_size: int) -> dict:
    """Held-out accuracy (+ 95% Wilson interval), mean margin, reward mean/std of each side."""
    chosen = torch.tensor(score_ids(model, [i.chosen_ids for i in items], pad_id, batch_size))
    rejected = torch.tensor(score_ids(model, [i.rejected_ids for i in items], pad_id, batch_size))
    stats = pairwise_stats(chosen, rejected)
    low, high = wilson_interval(int((chosen > rejected).sum()), len(items))
    return {"accuracy": stats.accuracy, "accuracy_low": low, "accuracy_high": high, "margin": stats.margin,
            "chosen_mean": stats.chosen_mean, "chosen_std": chosen.std().item() if len(items) > 1 else 0.0,
            "rejected_mean": stats.rejected_mean,
            "rejected_std": rejected.std().item() if len(items) > 1 else 0.0, "pairs": len(items)}


def make_loss(model, cfg: RewardModelConfig):
    """compute_loss(batch) -> (Bradley-Terry loss, accuracy / margin / tokens) for the loop."""

    def compute_loss(batch):
        rewards = model(batch.input_ids, batch.attention_mask)  # (2B,)
        chosen, rejected = rewards.chunk(2)
        loss = reward_model_loss(chosen, rejected, batch.margin, cfg.center_rewards_coefficient)
        stats = pairwise_stats(chosen, rejected)
        return loss, {"accuracy": stats.accuracy, "margin": stats.margin,
                      "tokens": int(batch.attention_mask.sum())}

    return compute_loss


def train_reward_model(cfg: RewardModelConfig, *, pairs=None, resume: bool = False, overwrite: bool = False,
                       quiet: bool = False, allow_changes: bool = False) -> Path:
    """Train and return the run directory (`checkpoints/final`, and `checkpoints/best` by accuracy)."""
    bad_rows = BadRows(cfg.on_bad_row)  # rows skipped under on_bad_row=skip: printed and in the manifest
    train_pairs, eval_pairs, files = load_pairs(cfg, pairs, bad_rows)
    runtime = resolve_runtime(cfg.run.device, cfg.run.precision)
    part = runtime.dist.shard(cfg.micro_batch_size)
    previous = Run(Path(cfg.run.out_dir)).latest_checkpoint(warn=print_nothing) if resume else None
    model, tokenizer = build_reward_model(cfg, train_pairs, runtime, previous)
    set_gradient_checkpointing(model, cfg.model.gradient_checkpointing)
    collator = PreferenceCollator(tokenizer, cfg.max_length)
    train_items = [collator.tokenize(p) for p in train_pairs]
    eval_items = [collator.tokenize(p) for p in eval_pairs]
    options = RunOptions(resume=resume, overwrite=overwrite, quiet=quiet, allow_changes=allow_changes)

    def describe(run: Run) -> str:
        return (f"train-rm: {sum(p.numel() for p in model.parameters())} parameters, {len(train_items)} "
                f"train / {len(eval_items)} held-out pairs, {tokenizer.kind} tokenizer (vocab "
                f"{tokenizer.vocab_size}), truncated prompts {collator.stats()['prompt_truncated_frac']:.1%}, "
                f"{runtime.device} {runtime.precision} -> {run.root}")

    def build(run: Run) -> TrainSpec:  # `best` and the final report need the run
        evaluate = make_evaluate(model, tokenizer, eval_items, cfg, run, runtime.dist.is_main) if eval_items else None
        close = make_close(model, tokenizer, eval_items, eval_pairs, evaluate, cfg, run) if evaluate else None
        source = ShuffledBatches(train_items, collator.collate, cfg.micro_batch_size, cfg.run.seed, runtime.device,
                                 part)
        return TrainSpec(model, source,
                         make_loss(model, cfg), lambda d: save_reward_model(model, tokenizer, d), evaluate=evaluate,
                         restore_model=(lambda d: restore_lora_reward_model(model, d)) if cfg.lora.enabled else None,
                         baseline=False,  # its evaluation keeps the best checkpoint: the untrained model never is one
                         close=close, on_resume=evaluate.resume if evaluate else None)

    return run_training(cfg, runtime, options, build=build, describe=describe, data_files=files,
                        skipped_rows=bad_rows)


def make_evaluate(model, tokenizer, items: list[TokenizedPair], cfg: RewardModelConfig, run: Run, writer: bool):
    """Held-out evaluation (`evaluate_pairs`) that keeps the most accurate model in `checkpoints/best`
    (written by the `writer` process, rank 0; not under FSDP, which holds no whole model there)."""
    best = {"accuracy": -1.0}

    def evaluate() -> dict:
        metrics = evaluate_pairs(model, items, tokenizer.pad_id, cfg.eval_batch_size)
        improved = metrics["accuracy"] > best["accuracy"]
        if improved:
            best["accuracy"] = metrics["accuracy"]
        if improved and writer and not cfg.run.fsdp:
            with atomic_dir(run.checkpoint_path(None).with_name("best")) as tmp:
                save_reward_model(model, tokenizer, tmp)
        return metrics

    def resume(step: int) -> None:  # the best so far of a resumed run: `best` is replaced only by a better model
        best["accuracy"] = max((r["eval/accuracy"] for r in _logged(run.root / "metrics.jsonl")
                                if r.get("step", 0) <= step and isinstance(r.get("eval/accuracy"), float)),
                               default=-1.0)

    evaluate.resume = resume
    return evaluate


def _logged(path) -> list[dict]:
    """The readable records of a metrics.jsonl (a line a killed writer left half-written is skipped)."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else ():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            records += [record] if isinstance(record, dict) else []
    return records


def make_close(model, tokenizer, items: list[TokenizedPair], pairs, evaluate, cfg: RewardModelConfig, run: Run):
    """The closing summary: the final held-out figures as final/* (the last step's evaluation, or a new
    one when it had none) and the seed's Good / Bad / Margin printout."""

    def close(last: dict) -> None:
        evaluated = {k.removeprefix("eval/"): v for k, v in last.items() if k.startswith("eval/")}
        final = evaluated or evaluate()  # the last step may have evaluated already
        report = seed_style_report(model, tokenizer, items, pairs, final)
        run.log(cfg.run.steps, {f"final/{k}": v for k, v in final.items()})
        run.print(report)

    return close


def seed_style_report(model, tokenizer, items, pairs, metrics: dict, shown: int = 3) -> str:
    """The seed's quick-test printout: Good / Bad / Margin per pair, then the accuracy."""
    lines = []
    for n, item in enumerate(items[:shown], start=1):
        good, bad = score_ids(model, [item.chosen_ids, item.rejected_ids], tokenizer.pad_id)
        mark = "ok" if good > bad else "x "
        lines.append(f"Test {n}: {mark} Good: {good:.4f} | Bad: {bad:.4f} | Margin: {good - bad:+.4f}"
                     f"   ({pairs[n - 1].prompt_text[:40]!r})")
    lines.append(f"Accuracy: {metrics['accuracy']:.1%} ({round(metrics['accuracy'] * metrics['pairs'])}/"
                 f"{metrics['pairs']}), 95% CI [{metrics['accuracy_low']:.1%}, {metrics['accuracy_high']:.1%}],"
                 f" mean margin {metrics['margin']:+.4f}")
    return "\n".join(lines)


def train_rm(pairs=20, steps: int = 20, batch_size: int = 4, block_size: int = 128, n_layer: int = 2,
             n_head: int = 2, n_embd: int = 64, lr: float = 1e-4, device: str = "cpu",
             out_dir: str = "runs/rm", overrides=(), quiet: bool = False) -> Path:
    """The seed's one-call API. `pairs`: a count of dummy pairs, a preference file, or a list of
    pairs (dicts or PreferencePair). Returns the final checkpoint, loadable by `load_reward_model`.
    Further config keys go in `overrides` as "key=value" strings."""
    settings = [f"steps={steps}", f"run.batch_size={batch_size}", f"max_length={block_size}",
                f"model.arch.num_hidden_layers={n_layer}", f"model.arch.num_attention_heads={n_head}",
                f"model.arch.num_key_value_heads={n_head}", f"model.arch.hidden_size={n_embd}",
                f"model.arch.intermediate_size={3 * n_embd}", f"optim.lr={lr}", f"run.device={device}",
                f"run.out_dir={out_dir}", f"run.eval_every={max(steps // 4, 1)}", "run.save_every=0"]
    if isinstance(pairs, int):
        settings.append(f"dummy_pairs={pairs}")
        pairs = None
    elif isinstance(pairs, (str, Path)):
        settings.append(f"data={pairs}")
        pairs = None
    cfg = load_config(RewardModelConfig, None, [*settings, *overrides])
    return train_reward_model(cfg, pairs=pairs, overwrite=True, quiet=quiet) / "checkpoints" / "final"
