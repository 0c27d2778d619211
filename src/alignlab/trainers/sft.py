"""`alignlab sft`: supervised fine-tuning with the loss on response tokens only.

Examples are chat conversations (`{prompt, response}` or `{messages}` records, or synthetic
study-plan completions with a chosen compliance rate, which is how the demo builds a weak
base policy). Each is rendered with the tokenizer's chat template; `Tokenizer.render_chat`
marks the assistant tokens, and only those count in the loss. Works on the native GPT and on
any transformers causal LM (`model.path`, `model.engine=hf`).

Under torchrun each rank takes its slice of every micro-batch; the loss stays a mean over the
whole micro-batch's response tokens (the count is summed over ranks), so N processes compute the
one-process gradient.

Left out: packing several examples into one row, and pass-rate evaluation during training
(evaluation lives in `eval/`, above trainers; run `alignlab eval` on the checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from alignlab.algorithms.sft import next_token_loss
from alignlab.config import SFTConfig
from alignlab.data.batches import LMBatch, ShuffledBatches, right_pad
from alignlab.data.conversations import read_conversations
from alignlab.data.sources import BadRows, source_file
from alignlab.data.tokenizer import Tokenizer
from alignlab.data.tokenizer_load import tokenizer_for_new_model
from alignlab.errors import UserError
from alignlab.model.checkpoint import load_trainable, save_model
from alignlab.model.gpt import GPT
from alignlab.model.hf import causal_lm_logits, set_gradient_checkpointing
from alignlab.runs import Run, print_nothing
from alignlab.runtime import resolve_runtime, seed_everything
from alignlab.tasks.study_plan.prompts import train_prompts
from alignlab.tasks.study_plan.synthetic import synthetic_completions
from alignlab.trainers.lifecycle import RunOptions, parameter_count, run_training
from alignlab.trainers.loop import TrainSpec


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """One tokenized conversation: ids and a loss mask (True on assistant tokens), same length."""

    ids: list[int]
    loss_mask: list[bool]


def load_conversations(cfg: SFTConfig, bad_rows: BadRows | None = None) -> tuple[list[list[dict]], list[str]]:
    """(conversations, data files) from cfg.data, or synthetic study-plan completions; malformed rows
    of the files go to `bad_rows` (a fresh BadRows(cfg.on_bad_row) if None)."""
    bad_rows = bad_rows if bad_rows is not None else BadRows(cfg.on_bad_row)
    if cfg.data:
        return ([c for spec in cfg.data for c in read_conversations(spec, bad_rows)],
                [source_file(s) for s in cfg.data])
    records = synthetic_completions(train_prompts(cfg.lang), cfg.synthetic_per_prompt, cfg.compliance_rate,
                                    cfg.run.seed)
    return read_conversations([{"prompt": r["prompt"], "response": r["completion"]} for r in records]), []


def tokenize_example(tokenizer: Tokenizer, messages: list[dict], max_length: int) -> tuple[SFTExample, bool]:
    """(example, truncated): the conversation cut from the left to max_length tokens."""
    ids, mask = tokenizer.render_chat(messages)
    truncated = len(ids) > max_length
    return SFTExample(ids[-max_length:], mask[-max_length:]), truncated


def collate(examples: list[SFTExample], pad_id: int) -> LMBatch:
    """Right-padded next-token batch; labels count only on assistant tokens of real positions."""
    ids, real = right_pad([e.ids for e in examples], pad_id)  # (B, T)
    loss, _ = right_pad([[int(m) for m in e.loss_mask] for e in examples], 0)
    return LMBatch(input_ids=ids[:, :-1], labels=ids[:, 1:], loss_mask=loss[:, 1:].bool() & real[:, 1:])


def build_policy(cfg: SFTConfig, conversations, runtime, resume_from: Path | None):
    """(model, tokenizer): loaded from model.path, or a new native GPT with its own tokenizer."""
    if cfg.model.path:
        return load_trainable(cfg.model, cfg.lora, runtime.device, seed=cfg.run.seed)
    if cfg.lora.enabled:
        raise UserError("LoRA adapts a pretrained model: set model.path (a new model trains all its weights)",
                        key="lora.r")
    texts = (m["content"] for c in conversations for m in c)
    tokenizer = tokenizer_for_new_model(cfg.tokenizer, texts, resume_from)
    seed_everything(cfg.run.seed)
    model = GPT(dataclasses.replace(cfg.model.arch, vocab_size=tokenizer.vocab_size))
    return model.to(runtime.device), tokenizer


def sft(cfg: SFTConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
        allow_changes: bool = False) -> Path:
    """Fine-tune and return the run directory; the policy ends in <run>/checkpoints/final."""
    bad_rows = BadRows(cfg.on_bad_row)  # rows skipped under on_bad_row=skip: printed and in the manifest
    conversations, files = load_conversations(cfg, bad_rows)
    runtime = resolve_runtime(cfg.run.device, cfg.run.precision)
    part = runtime.dist.shard(cfg.micro_batch_size)
    previous = Run(Path(cfg.run.out_dir)).latest_checkpoint(warn=print_nothing) if resume else None
    model, tokenizer = build_policy(cfg, conversations, runtime, previous)
    set_gradient_checkpointing(model, cfg.model.gradient_checkpointing)
    tokenized = [tokenize_example(tokenizer, c, cfg.max_length) for c in conversations]
    examples = [example for example, _ in tokenized]
    n_eval = int(len(examples) * cfg.eval_fraction)
    train, held_out = examples[: len(examples) - n_eval], examples[len(examples) - n_eval:]
    if not train:
        raise UserError("no training examples left after holding out the evaluation split", key="data")
    options = RunOptions(resume=resume, overwrite=overwrite, quiet=quiet, allow_changes=allow_changes)

    def describe(run: Run) -> str:
        return (f"sft: {parameter_count(model)}, {len(train)} train / "
                f"{len(held_out)} held-out examples, {sum(t for _, t in tokenized)} truncated, "
                f"{tokenizer.kind} tokenizer (vocab {tokenizer.vocab_size}), {runtime.device} -> {run.root}")

    def compute_loss(batch: LMBatch):
        logits = causal_lm_logits(model, batch.input_ids)  # (B, T, V)
        tokens = int(batch.loss_mask.sum())
        loss = next_token_loss(logits, batch.labels, batch.loss_mask)
        if runtime.dist.enabled:  # a token mean over the whole micro-batch, not over this rank's shard
            loss = loss * runtime.dist.mean_weight(tokens)
        return loss, {"tokens": tokens}

    def evaluate() -> dict:
        batch = collate(held_out[:64], tokenizer.pad_id).to(runtime.device)
        model.eval()
        with torch.no_grad(), runtime.autocast():
            loss = next_token_loss(causal_lm_logits(model, batch.input_ids), batch.labels, batch.loss_mask)
        return {"loss": loss.item()}

    source = ShuffledBatches(train, functools.partial(collate, pad_id=tokenizer.pad_id), cfg.micro_batch_size,
                             cfg.run.seed, runtime.device, part)
    spec = TrainSpec(model, source, compute_loss, lambda d: save_model(model, tokenizer, d),
                     evaluate=evaluate if held_out else None)
    return run_training(cfg, runtime, options, build=lambda run: spec, describe=describe, data_files=files,
                        skipped_rows=bad_rows)
