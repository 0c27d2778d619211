"""`alignlab dpo`: Direct Preference Optimization (and IPO, hinge) of a policy on preference pairs.

Pairs come in the reward model's formats (our JSONL, TRL's conversational form, HH-RLHF) or, with
no data, as synthetic study-plan pairs (a compliant plan against a non-compliant one for the same
train prompt). Each pair is tokenized once as prompt (chat template) + reply + end of turn, the
reply's first token recorded. A step: B pairs -> one forward over the 2B sequences -> summed
reply log-probs -> `algorithms/dpo.py` against the frozen reference's.

The reference is the policy as loaded. With `precompute_ref` (default) its log-probs for every
pair are computed once before step 1 and cached in the run directory
(`reference_logps.safetensors`, reused on resume), so no second model stays in memory; otherwise
a frozen copy scores each batch. The cache is keyed by SHA-256s of the tokenized pairs and of the
reference's weights, and by max_length (`reference_key`): one made for anything else is recomputed,
with a line saying why (a count that matches is no evidence the pairs are the same).

Held-out pairs every `run.eval_every` steps: implicit-reward accuracy (95% Wilson interval), margin, the loss;
train metrics: loss, accuracy, margin, chosen and rejected rewards and log-probs.

Under torchrun each rank takes its slice of every batch of pairs (the loss is a mean over pairs);
every rank computes the reference log-probs, rank 0 caches them.

Left out: sampling-based evaluation during training (run `alignlab eval` on a checkpoint),
reference-model syncing (TR-DPO).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from array import array
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from alignlab.algorithms.common import wilson_interval
from alignlab.algorithms.dpo import dpo_loss, sequence_logps
from alignlab.config import DPOConfig
from alignlab.data.batches import PreferenceCollator, ShuffledBatches, right_pad
from alignlab.data.sources import BadRows
from alignlab.errors import UserError
from alignlab.model.checkpoint import load_trainable, save_model
from alignlab.model.hf import causal_lm_logits
from alignlab.model.lora import adapters_off, has_lora
from alignlab.runs import Run
from alignlab.runtime import resolve_runtime
from alignlab.trainers.lifecycle import RunOptions, run_training, trainable
from alignlab.trainers.loop import TrainSpec
from alignlab.trainers.reward_model import load_pairs

REFERENCE = "reference_logps.safetensors"


@dataclass(frozen=True)
class DPOItem:
    """One pair as token ids; `*_start` is the index of the first reply token; ref_* are the
    reference's summed reply log-probs once computed."""

    chosen_ids: list[int]
    chosen_start: int
    rejected_ids: list[int]
    rejected_start: int
    ref_chosen: float | None = None
    ref_rejected: float | None = None


@dataclass(frozen=True)
class DPOBatch:
    """B pairs, chosen rows [0, B) then rejected rows [B, 2B).

    input_ids   (2B, T) long, right-padded
    attention_mask (2B, T) bool
    reply_mask  (2B, T) bool: True on reply tokens (the end-of-turn token included)
    ref_logps   (2B,) float, or None when the reference scores the batch on the fly
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    reply_mask: torch.Tensor
    ref_logps: torch.Tensor | None

    def to(self, device) -> DPOBatch:
        return DPOBatch(*(t.to(device) if t is not None else None for t in dataclasses.astuple(self)))


def collate(items: list[DPOItem], pad_id: int) -> DPOBatch:
    seqs = [i.chosen_ids for i in items] + [i.rejected_ids for i in items]
    starts = torch.tensor([i.chosen_start for i in items] + [i.rejected_start for i in items])  # (2B,)
    ids, mask = right_pad(seqs, pad_id)
    reply = mask & (torch.arange(ids.shape[1])[None, :] >= starts[:, None])  # (2B, T)
    have_ref = all(i.ref_chosen is not None for i in items)
    ref = torch.tensor([i.ref_chosen for i in items] + [i.ref_rejected for i in items]) if have_ref else None
    return DPOBatch(ids, mask, reply, ref)


def pair_logps(model, batch: DPOBatch) -> torch.Tensor:
    """(2B,) summed reply log-probs of a batch under `model`."""
    logits = causal_lm_logits(model, batch.input_ids, batch.attention_mask)  # (2B, T, V)
    return sequence_logps(logits, batch.input_ids, batch.reply_mask)


KEY_MEANING = {"data_sha256": "other pairs", "reference_sha256": "other reference weights",
               "max_length": "another max_length"}


def reference_key(items: list[DPOItem], model, max_length: int) -> dict[str, str]:
    """What cached reference log-probs depend on: SHA-256s of the tokenized pairs (ids and reply starts)
    and of the reference's weights (every state_dict tensor's name, dtype, shape and bytes), and max_length."""
    data = hashlib.sha256()
    for item in items:
        for ids, start in ((item.chosen_ids, item.chosen_start), (item.rejected_ids, item.rejected_start)):
            data.update(array("q", [start, len(ids), *ids]).tobytes())  # lengths frame the ids unambiguously
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        weights.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        weights.update(flat.view(torch.uint8).numpy())  # raw bytes: bf16 has no numpy dtype of its own
    return {"data_sha256": data.hexdigest(), "reference_sha256": weights.hexdigest(), "max_length": str(max_length)}


def _read_cache(cache: Path, key: dict[str, str], n: int) -> tuple[list[float], list[float]] | str:
    """The cached (chosen, rejected) log-probs when the cache was made under `key`, else why not."""
    try:
        with safe_open(str(cache), "pt") as handle:
            saved = handle.metadata() or {}
            chosen, rejected = handle.get_tensor("chosen"), handle.get_tensor("rejected")
    except (SafetensorError, OSError) as err:
        return f"unreadable ({err})"
    changed = [meaning for name, meaning in KEY_MEANING.items() if saved.get(name) != key[name]]
    if changed:
        return "made for " + " and ".join(changed) if saved else "made without a key (an older alignlab)"
    if not chosen.shape[0] == rejected.shape[0] == n:
        return f"holding {chosen.shape[0]} pairs, not {n}"
    return chosen.tolist(), rejected.tolist()


def with_reference(items: list[DPOItem], model, pad_id: int, batch_size: int, device, cache: Path | None,
                   write: bool = True, key: dict[str, str] | None = None) -> tuple[list[DPOItem], str | None]:
    """(the items with the reference's log-probs, a note for a cache that was not reused, else None):
    read from `cache` when it was made under `key` (`reference_key`), else computed (no grad) and
    written there with the key (when `write`: rank 0 of a multi-process run)."""
    note, key = None, key or {}
    if cache is not None and cache.is_file():
        cached = _read_cache(cache, key, len(items)) if key else "not checked (no key given)"
        if not isinstance(cached, str):
            return [dataclasses.replace(i, ref_chosen=c, ref_rejected=r)
                    for i, c, r in zip(items, *cached, strict=True)], None
        note = f"reference log-probs: {cache.name} was {cached}; recomputing them"
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            logps = pair_logps(model, collate(items[start:start + batch_size], pad_id).to(device)).float().cpu()
            c, r = logps.chunk(2)
            chosen += c.tolist()
            rejected += r.tolist()
    model.train(was_training)
    if cache is not None and write:
        tmp = cache.with_name(cache.name + ".tmp")
        save_file({"chosen": torch.tensor(chosen), "rejected": torch.tensor(rejected)}, str(tmp), metadata=key)
        tmp.replace(cache)
    return [dataclasses.replace(i, ref_chosen=c, ref_rejected=r) for i, c, r in zip(items, chosen, rejected,
                                                                                     strict=True)], note


def make_loss(model, reference, cfg: DPOConfig):
    def compute_loss(batch: DPOBatch):
        logps = pair_logps(model, batch)  # (2B,)
        if batch.ref_logps is not None:
            ref = batch.ref_logps.to(logps.dtype)
        else:
            with torch.no_grad(), adapters_off(reference):  # a LoRA policy is its own reference
                ref = pair_logps(reference, batch)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        result = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=cfg.beta, loss_type=cfg.loss_type,
                          label_smoothing=cfg.label_smoothing, lengths=batch.reply_mask[:, 1:].sum(-1))
        return result.loss, {"accuracy": result.accuracy, "margin": result.margin,
                             "rewards/chosen": result.chosen_rewards.mean().item(),
                             "rewards/rejected": result.rejected_rewards.mean().item(),
                             "logps/chosen": chosen.mean().item(), "logps/rejected": rejected.mean().item(),
                             "tokens": int(batch.attention_mask.sum())}

    return compute_loss


def make_evaluate(compute_loss, model, items: list[DPOItem], pad_id: int, cfg: DPOConfig, device):
    def evaluate() -> dict:
        was_training = model.training
        model.eval()
        losses, right, margins = [], 0, []
        with torch.no_grad():
            for start in range(0, len(items), cfg.eval_batch_size):
                part = items[start:start + cfg.eval_batch_size]
                loss, m = compute_loss(collate(part, pad_id).to(device))
                losses.append(loss.item() * len(part))
                right += round(m["accuracy"] * len(part))
                margins.append(m["margin"] * len(part))
        model.train(was_training)
        low, high = wilson_interval(right, len(items))
        return {"loss": sum(losses) / len(items), "accuracy": right / len(items), "accuracy_low": low,
                "accuracy_high": high, "margin": sum(margins) / len(items)}

    return evaluate


def dpo(cfg: DPOConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
        allow_changes: bool = False) -> Path:
    """Train with DPO and return the run directory (the policy ends in <run>/checkpoints/final)."""
    if not cfg.model.path:
        raise UserError("DPO needs a policy to start from: set model.path (e.g. an `alignlab sft` run's "
                        "checkpoints/final, or a transformers model directory)", key="model.path")
    bad_rows = BadRows(cfg.on_bad_row)  # rows skipped under on_bad_row=skip: printed and in the manifest
    train_pairs, held_out_pairs, files = load_pairs(cfg, None, bad_rows)  # the reward model's data and split
    runtime = resolve_runtime(cfg.run.device, cfg.run.precision)
    part = runtime.dist.shard(cfg.micro_batch_size)
    model, tokenizer = load_trainable(cfg.model, cfg.lora, runtime.device, seed=cfg.run.seed)
    collator = PreferenceCollator(tokenizer, cfg.max_length)

    def tokenize(pair) -> DPOItem:
        return DPOItem(*collator.reply_sequence(pair.messages, pair.chosen),
                       *collator.reply_sequence(pair.messages, pair.rejected))

    train, held_out = [tokenize(p) for p in train_pairs], [tokenize(p) for p in held_out_pairs]
    options = RunOptions(resume=resume, overwrite=overwrite, quiet=quiet, allow_changes=allow_changes)

    def describe(run: Run) -> str:
        return (f"dpo ({cfg.loss_type}, beta {cfg.beta}): {trainable(model)} parameters trained, "
                f"{len(train)} train / {len(held_out)} held-out pairs, reference "
                f"{'precomputed' if cfg.precompute_ref else 'on the fly'}, {runtime.device} -> {run.root}")

    def build(run: Run) -> TrainSpec:  # the reference log-probs are cached in the run
        return make_spec(cfg, model, tokenizer, train, held_out, runtime, part, run)

    return run_training(cfg, runtime, options, build=build, describe=describe, data_files=files,
                        dtype=next(model.parameters()).dtype, skipped_rows=bad_rows)


def make_spec(cfg: DPOConfig, model, tokenizer, train: list[DPOItem], held_out: list[DPOItem], runtime,
              part: slice, run: Run) -> TrainSpec:
    """The loop's spec: reference log-probs (cached in the run, or a frozen copy), loss, held-out evaluation;
    `part` is this process's slice of every batch."""
    reference, pad_id = None, tokenizer.pad_id
    if cfg.precompute_ref:
        train, note = with_reference(train, model, pad_id, cfg.eval_batch_size, runtime.device, run.root / REFERENCE,
                                     write=runtime.dist.is_main, key=reference_key(train, model, cfg.max_length))
        if note is not None:
            run.print(note)
        held_out, _ = with_reference(held_out, model, pad_id, cfg.eval_batch_size, runtime.device, None)
    else:
        reference = model if has_lora(model) else copy.deepcopy(model).eval().requires_grad_(False)
    compute_loss = make_loss(model, reference, cfg)
    evaluate = make_evaluate(compute_loss, model, held_out, pad_id, cfg, runtime.device) if held_out else None
    source = ShuffledBatches(train, lambda items: collate(items, pad_id), cfg.micro_batch_size, cfg.run.seed,
                             runtime.device, part)
    return TrainSpec(model, source, compute_loss, lambda d: save_model(model, tokenizer, d), evaluate=evaluate)
